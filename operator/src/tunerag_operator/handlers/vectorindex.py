"""VectorIndex reconcile: check references, run the indexing Job per generation, report it."""

from __future__ import annotations

import dataclasses
from typing import Any

import kopf
from pydantic import ValidationError

from tunerag_operator import durations, events, kubeapi, metrics, references, runstate
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import VECTORINDEX
from tunerag_operator.api.vectorindex import VectorIndexSpec
from tunerag_operator.conditions import now, set_condition
from tunerag_operator.config import OperatorConfig
from tunerag_operator.handlers import runs
from tunerag_operator.handlers.base import describe_validation_error, register
from tunerag_operator.handlers.timers import owns_status
from tunerag_operator.references import Problem
from tunerag_operator.render.workload import (
    COMPLETION_INDEX,
    Owner,
    WorkloadRun,
    finalize_name,
    finalize_suffix,
    run_name,
)
from tunerag_operator.runstate import RunState


def check(spec: VectorIndexSpec, namespace: str) -> list[Problem]:
    ref = spec.store.connection_secret
    problems = references.secret_key(namespace, ref.name, ref.key, "spec.store.connectionSecret")
    if spec.source.config_map is not None:
        problems += references.configmap(namespace, spec.source.config_map.name, "spec.source.configMap")
    if spec.source.uri is not None:
        problems += references.uri(namespace, spec.source.uri, "spec.source.uri")
    if spec.source.credentials_secret:
        problems += references.secret(namespace, spec.source.credentials_secret, "spec.source.credentialsSecret")
    return problems


INDEX_STEP = f"{GROUP}/index-step"  # label of a sharded run's Jobs: shards | finalize


def _db_env(spec: VectorIndexSpec) -> tuple[dict[str, Any], ...]:
    ref = spec.store.connection_secret
    return ({"name": "TUNERAG_DB_URI", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}},)


def workload_run(
    spec: VectorIndexSpec, owner: Owner, image: str, *, drop_attempt: int | None = None, refresh: int | None = None
) -> WorkloadRun:
    """The run's Job; with spec.parallelism N > 1 an Indexed Job of N shards (JOB_COMPLETION_INDEX),
    followed by the finalize Job (`finalize_run`) once all shards have succeeded."""
    drop = drop_attempt is not None
    suffix = f"drop{drop_attempt}" if drop else f"g{owner.generation}-r{refresh}" if refresh else ""
    claims = references.claims_of(spec.source.uri)
    sharded = not drop and spec.parallelism > 1
    return WorkloadRun(
        owner=owner, component="index", module="tunerag_workloads.index.drop" if drop else "tunerag_workloads.index",
        suffix=suffix, backoff_limit=0 if drop else 3,
        spec=spec.model_dump(mode="json", exclude_none=True), image=spec.resources.image or image,
        resources=spec.resources, claims=claims, env=_db_env(spec),
        env_from_secret=None if drop else spec.source.credentials_secret,
        source_config_map=spec.source.config_map.name if spec.source.config_map else None,
        completions=spec.parallelism if sharded else None,
        labels={INDEX_STEP: "shards"} if sharded else {},
    )


def finalize_run(spec: VectorIndexSpec, owner: Owner, image: str, shard_job: str, shards: list[dict[str, Any]]) -> WorkloadRun:
    """The finalize step of a sharded run: indexes, switch, cleanup, counts (no model, no source,
    no GPU); the shards' results travel in its ConfigMap."""
    return WorkloadRun(
        owner=owner, component="index", module="tunerag_workloads.index.finalize",
        suffix=finalize_suffix(owner.name, shard_job), backoff_limit=3,
        spec=spec.model_dump(mode="json", exclude_none=True), image=image,
        resources=spec.resources.model_copy(update={"gpus": 0}), env=_db_env(spec),
        request={"shards": shards}, labels={INDEX_STEP: "finalize"},
    )


def shard_results(pods: list[dict[str, Any]], shards: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Each shard's result (the newest succeeded pod of its index) and the shards without one."""
    results, missing = [], []
    for index in range(shards):
        done = [p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"
                and ((p.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX) == str(index)]
        result, _ = runstate.last_result(done)
        if result and result.get("ok") and result.get("shard") == index:
            results.append({k: v for k, v in result.items() if k != "ok"})
        else:
            missing.append(index)
    return results, missing


def _start_finalize(obj: dict[str, Any], job: dict[str, Any]) -> None:
    """All shards succeeded: start the run's finalize Job (idempotent by name), unless the run is
    already recorded as finished or belongs to an older generation (a newer run replaces it)."""
    status = obj.get("status") or {}
    if status.get("phase") in ("Ready", "Failed"):
        return  # recorded: never finalize a run twice
    job_name = job["metadata"]["name"]
    if (job["metadata"].get("labels") or {}).get(f"{GROUP}/generation") != str(obj["metadata"]["generation"]):
        return
    meta = obj["metadata"]
    owner = Owner(VECTORINDEX.kind, meta["name"], meta["namespace"], meta["uid"], meta["generation"])
    spec = VectorIndexSpec.model_validate(obj["spec"])
    results, missing = shard_results(kubeapi.job_pods(owner.namespace, job_name), int(job["spec"].get("completions") or 0))
    if missing:
        message = f"The shard Job {job_name} succeeded but shards {missing} left no result (their pods are gone); the next run indexes again."
        conds = set_condition(status.get("conditions") or [], "Ready", "False", "ShardResultMissing", message, meta["generation"])
        kubeapi.patch_status(owner.namespace, VECTORINDEX.plural, owner.name, {"phase": "Failed", "conditions": conds})
        events.warn(obj, "ShardResultMissing", message)
        return
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    runs.start(finalize_run(spec, owner, image, job_name, results))


def start_run(spec: VectorIndexSpec, body: kopf.Body, config: OperatorConfig) -> dict[str, Any]:
    owner = Owner(VECTORINDEX.kind, body.meta["name"], body.meta["namespace"], body.meta["uid"], body.meta["generation"])
    current = body.status.get("jobName")
    refresh = run_name(owner, f"g{owner.generation}-r{int(body.status.get('refreshes') or 0)}")
    if current in (run_name(owner), refresh):
        return {}  # this generation's run (or its latest refresh) was started already
    if current:  # at most one run per index: a newer generation replaces an unfinished older run
        for old_name in (current, finalize_name(owner, current)):  # (its shards, or its finalize step)
            old = kubeapi.get_job(owner.namespace, old_name)
            if old and not (old.get("status") or {}).get("completionTime"):
                kubeapi.delete_job(owner.namespace, old_name)
    job_name = runs.start(workload_run(spec, owner, config.workloads_image))
    return {"jobName": job_name, "phase": "Indexing", "refreshes": 0}


@runs.observe(VECTORINDEX.kind)
def observe_run(namespace: str, name: str, job_name: str, state: RunState) -> None:
    obj = kubeapi.get_custom(namespace, VECTORINDEX.plural, name)
    current = str((obj or {}).get("status", {}).get("jobName") or "")
    if obj is None or not current:
        return
    meta = obj["metadata"]
    finalize = finalize_name(Owner(VECTORINDEX.kind, name, namespace, meta["uid"], meta["generation"]), current)
    if job_name not in (current, finalize):
        return  # a stale run of an older generation
    if job_name == current and state.phase == "Succeeded":
        job = kubeapi.get_job(namespace, job_name) or {}
        if ((job.get("metadata") or {}).get("labels") or {}).get(INDEX_STEP) == "shards":
            _start_finalize(obj, job)  # the shards of a sharded run are done; the run is not
            return
    if job_name == finalize:  # the run's outcome; it started when its shards did
        shard_job = kubeapi.get_job(namespace, current) or {}
        state = dataclasses.replace(state, start_time=(shard_job.get("status") or {}).get("startTime") or state.start_time)
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
    elif state.phase == "Running" or state.failed_pods:
        update = {"phase": "Indexing"}
        if state.failed_pods and state.reason not in ("Running", "JobPending"):  # an attempt failed; the Job retries
            conds = set_condition(conds, "Ready", "False", state.reason, state.message, generation)
    if not update or (status.get("phase") == update["phase"] and conds == status.get("conditions")):
        return
    kubeapi.patch_status(namespace, VECTORINDEX.plural, name, {**update, "conditions": conds})
    if update["phase"] == "Ready":
        events.info(obj, "Indexed", conds[-1]["message"] if conds else "")
    elif update["phase"] == "Failed" or conds != status.get("conditions"):
        events.warn(obj, state.reason, state.message)
    if update["phase"] in ("Ready", "Failed") and status.get("phase") not in ("Ready", "Failed"):
        # This write recorded the run as finished (a later call for the same run, or one after an
        # operator restart, finds it so): the one place a run is counted.
        _count_run(namespace, name, job_name, state, update.get("lastRun"))


def _timestamp(text: Any) -> float | None:
    return durations.parse_time(text).timestamp() if isinstance(text, str) and text else None


def _count_run(namespace: str, name: str, job_name: str, state: RunState, changes: dict[str, int] | None) -> None:
    ended = state.completion_time
    if state.phase == "Failed":  # a failed Job has no completionTime: its Failed condition says when
        job = kubeapi.get_job(namespace, job_name) or {}
        failed = [c for c in (job.get("status") or {}).get("conditions") or []
                  if c.get("type") == "Failed" and c.get("status") == "True"]
        ended = failed[0].get("lastTransitionTime") if failed else now()
    start, end = _timestamp(state.start_time), _timestamp(ended)
    seconds = end - start if start is not None and end is not None else None
    metrics.count_index_run(namespace, name, "Succeeded" if state.phase == "Succeeded" else "Failed", seconds, changes)


def export_metrics(namespace: str, name: str, body: kopf.Body) -> None:
    """tunerag_index_* gauges from the object (on every watch event)."""
    status = body.status
    interval = (body.spec.get("refresh") or {}).get("interval")
    try:
        refresh_seconds = durations.seconds(interval) if isinstance(interval, str) else None
    except ValueError:
        refresh_seconds = None
    metrics.set_index_status(namespace, name, documents=status.get("documents"), chunks=status.get("chunks"),
                             last_success=_timestamp(status.get("lastIndexedTime")),
                             refresh_interval=refresh_seconds or None)


DROP_ATTEMPTS = 3
KEEP_RUNS = 3


def _refresh_due(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return bool((spec.get("refresh") or {}).get("interval")) and status.get("phase") in ("Ready", "Failed")


@kopf.timer(GROUP, VERSION, VECTORINDEX.plural, interval=5, when=_refresh_due)
@owns_status(VECTORINDEX)
def refresh(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    """spec.refresh.interval: re-run the (incremental) indexing when the interval has passed since
    the last run ended. Only a Ready or Failed index is refreshed, so runs never overlap; old run
    Jobs are pruned to the newest KEEP_RUNS."""
    try:
        spec = VectorIndexSpec.model_validate(dict(body.spec))
    except ValidationError:
        return  # stored before a rule refused it: the reconcile reports InvalidSpec; nothing runs
    assert spec.refresh.interval is not None
    status = body.status
    ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    ended = status.get("lastIndexedTime") if status.get("phase") == "Ready" else ready.get("lastTransitionTime")
    if ended and durations.since(str(ended)) < durations.seconds(spec.refresh.interval):
        return
    config = memo.get("config") or OperatorConfig.defaults()
    owner = Owner(VECTORINDEX.kind, body.meta["name"], body.meta["namespace"], body.meta["uid"], body.meta["generation"])
    sequence = int(status.get("refreshes") or 0) + 1
    run = workload_run(spec, owner, config.workloads_image, refresh=sequence)
    patch.status["jobName"] = runs.start(run)
    patch.status["refreshes"] = sequence
    patch.status["phase"] = "Indexing"
    runs.prune(owner.namespace, owner.kind, owner.name, KEEP_RUNS * (2 if spec.parallelism > 1 else 1))  # shards + finalize


def _deletes_tables(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("store") or {}).get("deletionPolicy") == "Delete")


@kopf.on.delete(GROUP, VERSION, VECTORINDEX.plural, id="drop-tables", when=_deletes_tables, retries=None)
def drop_tables(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    """deletionPolicy: Delete. A Job drops the index's tables; the finalizer goes once it succeeded.
    A database that stays unreachable does not hold the VectorIndex forever: after DROP_ATTEMPTS
    failed Jobs (`<name>-drop<n>`, counted from the Jobs themselves, so an operator restart
    neither repeats nor skips one) the VectorIndex is released and a Warning names what was left.
    A spec the models refuse (stored before a rule was added, e.g. a pg_* schema) runs no Job."""
    try:
        spec = VectorIndexSpec.model_validate(dict(body.spec))
    except ValidationError as exc:
        store = body.spec.get("store") or {}
        kopf.warn(body, reason="TablesLeftBehind",
                  message=f"The spec is not valid ({describe_validation_error(exc)}), so no Job drops "
                          f"{store.get('schema', 'public')}.{store.get('table')}: the VectorIndex is deleted and its "
                          "tables are left in place: drop them by hand.")
        return
    config = memo.get("config") or OperatorConfig.defaults()
    owner = Owner(VECTORINDEX.kind, body.meta["name"], body.meta["namespace"], body.meta["uid"], body.meta["generation"])
    target = f"{spec.store.schema_}.{spec.store.table}"
    last: RunState | None = None
    for attempt in range(1, DROP_ATTEMPTS + 1):
        run = workload_run(spec, owner, config.workloads_image, drop_attempt=attempt)
        current = runs.state(owner.namespace, run_name(owner, run.suffix))
        if current is None:
            runs.start(run)
            raise kopf.TemporaryError(f"started drop attempt {attempt}", delay=2)
        if current.phase in ("Pending", "Running"):
            raise kopf.TemporaryError(f"waiting for drop attempt {attempt}", delay=2)
        if current.phase == "Succeeded":
            kopf.info(body, reason="TablesDropped", message=f"Dropped {target} and its versions (deletionPolicy: Delete).")
            return
        last = current
        if attempt < DROP_ATTEMPTS:
            patch.status["conditions"] = set_condition(
                body.status.get("conditions") or [], "Ready", "False", current.reason,
                f"Deleting: could not drop {target} ({current.message}); attempt {attempt} of {DROP_ATTEMPTS} failed.",
                owner.generation)
    assert last is not None
    kopf.warn(body, reason="TablesLeftBehind",
              message=f"Could not drop {target} after {DROP_ATTEMPTS} attempts ({last.reason}: {last.message}); "
                      f"the VectorIndex is deleted and the tables are left in place: drop them by hand.")


register(VECTORINDEX, check, initial_phase="Pending", act=start_run, export=export_metrics)
runs.follow(VECTORINDEX, lambda status: status.get("phase") == "Indexing")
