"""VectorIndex reconcile: check references, run the indexing Job per generation, report it."""

from __future__ import annotations

from typing import Any

import kopf

from tunerag_operator import events, kubeapi, references
from tunerag_operator.api.kinds import VECTORINDEX
from tunerag_operator.api.vectorindex import VectorIndexSpec
from tunerag_operator.conditions import now, set_condition
from tunerag_operator.config import OperatorConfig
from tunerag_operator.handlers import runs
from tunerag_operator.handlers.base import register
from tunerag_operator.references import Problem
from tunerag_operator.render.workload import Owner, WorkloadRun, run_name
from tunerag_operator.runstate import RunState


def check(spec: VectorIndexSpec, namespace: str) -> list[Problem]:
    ref = spec.store.connection_secret
    problems = references.secret_key(namespace, ref.name, ref.key, "spec.store.connectionSecret")
    if spec.source.config_map is not None:
        problems += references.configmap(namespace, spec.source.config_map.name, "spec.source.configMap")
    if spec.source.uri is not None:
        problems += references.uri(namespace, spec.source.uri, "spec.source.uri")
    return problems


def workload_run(spec: VectorIndexSpec, owner: Owner, image: str) -> WorkloadRun:
    claims = (spec.source.uri.removeprefix("pvc://").split("/", 1)[0],) if spec.source.uri and spec.source.uri.startswith("pvc://") else ()
    ref = spec.store.connection_secret
    return WorkloadRun(
        owner=owner, component="index", module="tunerag_workloads.index",
        spec=spec.model_dump(mode="json", exclude_none=True), image=spec.resources.image or image,
        resources=spec.resources, claims=claims,
        env=({"name": "TUNERAG_DB_URI", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}},),
        source_config_map=spec.source.config_map.name if spec.source.config_map else None,
    )


def start_run(spec: VectorIndexSpec, body: kopf.Body, config: OperatorConfig) -> dict[str, Any]:
    owner = Owner(VECTORINDEX.kind, body.meta["name"], body.meta["namespace"], body.meta["uid"], body.meta["generation"])
    current = body.status.get("jobName")
    if current == run_name(owner):
        return {}
    if current:  # at most one run per index: a newer generation replaces an unfinished older run
        old = kubeapi.get_job(owner.namespace, current)
        if old and not (old.get("status") or {}).get("completionTime"):
            kubeapi.delete_job(owner.namespace, current)
    job_name = runs.start(workload_run(spec, owner, config.workloads_image))
    return {"jobName": job_name, "phase": "Indexing"}


@runs.observe(VECTORINDEX.kind)
def observe_run(namespace: str, name: str, job_name: str, state: RunState) -> None:
    obj = kubeapi.get_custom(namespace, VECTORINDEX.plural, name)
    if obj is None or (obj.get("status") or {}).get("jobName") != job_name:
        return  # a stale run of an older generation
    status = obj.get("status") or {}
    generation = obj["metadata"]["generation"]
    conds = status.get("conditions") or []
    update: dict[str, Any] = {}
    if state.phase == "Succeeded" and state.result:
        r = state.result
        update = {
            "phase": "Ready",
            "documents": r.get("documents"), "chunks": r.get("chunks"),
            "lastRun": {k: int(r.get(k) or 0) for k in ("added", "updated", "deleted", "unchanged", "skipped")},
            "embeddingModel": r.get("embeddingModel"), "dimension": r.get("dimension"),
            "sourceDigest": r.get("sourceDigest"), "tableVersion": r.get("tableVersion"),
            "lastIndexedTime": state.completion_time or now(),
        }
        message = f"Indexed {r.get('documents')} documents into {r.get('chunks')} chunks ({r.get('tableVersion')})."
        if r.get("skipped"):
            files = ", ".join(f"{f.get('path')}: {f.get('reason')}" for f in r.get("skippedFiles") or [])
            message += f" Skipped {r['skipped']} unreadable files: {files}"
        conds = set_condition(conds, "Ready", "True", "Ready", message, generation)
    elif state.phase == "Failed":
        update = {"phase": "Failed"}
        conds = set_condition(conds, "Ready", "False", state.reason, state.message, generation)
    elif state.phase == "Running":
        update = {"phase": "Indexing"}
    if not update or (status.get("phase") == update["phase"] and conds == status.get("conditions")):
        return
    kubeapi.patch_status(namespace, VECTORINDEX.plural, name, {**update, "conditions": conds})
    if update["phase"] == "Ready":
        events.info(obj, "Indexed", conds[-1]["message"] if conds else "")
    elif update["phase"] == "Failed":
        events.warn(obj, state.reason, state.message)


register(VECTORINDEX, check, initial_phase="Pending", act=start_run)
