"""FineTuneJob reconcile: check references, run the training Job, register the AdapterVersion."""

from __future__ import annotations

import os
from typing import Any

import kopf

from tunerag_operator import durations, events, kubeapi, metrics, references, registry
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.finetunejob import FineTuneJobSpec
from tunerag_operator.api.kinds import FINETUNEJOB
from tunerag_operator.conditions import now, printable, set_condition
from tunerag_operator.config import OperatorConfig
from tunerag_operator.handlers import runs
from tunerag_operator.handlers.base import register
from tunerag_operator.handlers.timers import owns_status
from tunerag_operator.references import Problem
from tunerag_operator.render.workload import Owner, WorkloadRun, run_name
from tunerag_operator.runstate import RunState

# Condition set while the workload retries a failing artifact store; True again once published.
ARTIFACT_STORE = "ArtifactStore"
ACTIVE = ("Pending", "ValidatingData", "Training", "Evaluating", "Publishing")
# Phases whose pod may be running, so may have progress to read: a Pending run's Job has no active
# pod yet (and may never get one: no GPU free); its Job event moves the run on when one starts.
RUNNING = ACTIVE[1:]
# How often a running pod's log is read for progress (seconds).
PROGRESS_INTERVAL = float(os.environ.get("TUNERAG_PROGRESS_INTERVAL", "5"))


def _uris(spec: FineTuneJobSpec) -> list[tuple[str, str]]:
    ds = spec.dataset
    out = [("spec.baseModel.uri", spec.base_model.uri), ("spec.output.uri", spec.output.uri)]
    for name, source in (("train", ds.train), ("validation", ds.validation), ("retention", ds.retention)):
        if source is not None:
            out.append((f"spec.dataset.{name}.uri", source.uri))
    if spec.gates.baseline is not None:
        out.append(("spec.gates.baseline.uri", spec.gates.baseline.uri))
    return out


def check(spec: FineTuneJobSpec, namespace: str) -> list[Problem]:
    problems = [p for field, uri in _uris(spec) for p in references.uri(namespace, uri, field)]
    if spec.output.credentials_secret:
        problems += references.secret(namespace, spec.output.credentials_secret, "spec.output.credentialsSecret")
    return problems


def workload_run(spec: FineTuneJobSpec, owner: Owner, image: str) -> WorkloadRun:
    claims = references.claims_of(*(uri for _, uri in _uris(spec)))
    return WorkloadRun(
        owner=owner, component="finetune", module="tunerag_workloads.finetune",
        spec=spec.model_dump(mode="json", exclude_none=True), image=spec.resources.image or image,
        resources=spec.resources, claims=claims, env_from_secret=spec.output.credentials_secret,
        backoff_limit=spec.backoff_limit, active_deadline_seconds=spec.active_deadline_seconds,
    )


def start_run(spec: FineTuneJobSpec, body: kopf.Body, config: OperatorConfig) -> dict[str, Any]:
    owner = Owner(FINETUNEJOB.kind, body.meta["name"], body.meta["namespace"], body.meta["uid"], body.meta["generation"])
    if body.status.get("jobName") == run_name(owner):
        return {}
    return {"jobName": runs.start(workload_run(spec, owner, config.workloads_image)), "phase": "Pending"}


def quantized_spec(result: dict[str, Any]) -> dict[str, Any] | None:
    """The run's merged, quantized model as an AdapterVersion's spec.quantized, or None when the run
    made none (no spec.output.quantize, or a Rejected verdict: nothing to serve)."""
    q = result.get("quantized")
    if not isinstance(q, dict) or not q.get("uri") or not q.get("sha256"):
        return None
    figures = {"referenceSizeBytes": q.get("fp16SizeBytes"), "relativeLossDelta": q.get("relativeLossDelta"),
               "argmaxAgreement": q.get("argmaxAgreement"), "withinTolerance": q.get("withinTolerance")}
    return {"uri": q["uri"], "sha256": q["sha256"], "sizeBytes": q.get("sizeBytes"), "format": f"merged-{q.get('format')}",
            **{k: v for k, v in figures.items() if v is not None}}


def quantized_status(quantized: dict[str, Any]) -> dict[str, Any]:
    """What a FineTuneJob's status says of the quantized model it registered."""
    return {"uri": quantized["uri"], "format": quantized["format"], "sizeBytes": quantized["sizeBytes"],
            "sizeRatio": registry.size_ratio(quantized["sizeBytes"], quantized.get("referenceSizeBytes")),
            "withinTolerance": quantized.get("withinTolerance")}


def adapter_spec(spec: dict[str, Any], name: str, result: dict[str, Any]) -> dict[str, Any]:
    adapter = result.get("adapter") or {}
    quantized = quantized_spec(result)
    metrics = {k: float(v) for k, v in (result.get("metrics") or {}).items() if isinstance(v, int | float)}
    if quantized is not None:  # the quantized model's quality, beside the adapter's
        metrics |= {f"quantized{k[0].upper()}{k[1:]}": float(quantized[k]) for k in ("relativeLossDelta", "argmaxAgreement")
                    if isinstance(quantized.get(k), int | float)}
    return {
        "baseModel": {k: v for k, v in {"uri": spec["baseModel"]["uri"], "revision": spec["baseModel"].get("revision"),
                                        "digest": (result.get("baseModel") or {}).get("digest")}.items() if v},
        "artifact": {"uri": adapter["uri"], "sha256": adapter["sha256"], "sizeBytes": adapter.get("sizeBytes"),
                     "format": "peft-lora"},
        "lineage": {"fineTuneJob": name, "datasetDigests": result.get("datasetDigests") or {},
                    "datasets": {k: v["uri"] for k, v in spec["dataset"].items() if isinstance(v, dict) and "uri" in v},
                    "hyperParameters": {k: str(v) for k, v in (result.get("hyperParameters") or {}).items()},
                    **({"reportUri": result["reportUri"]} if result.get("reportUri") else {})},
        "metrics": metrics,
        "gates": result.get("gates") or [],
        **({"quantized": quantized} if quantized is not None else {}),
    }


@runs.observe(FINETUNEJOB.kind)
def observe_run(namespace: str, name: str, job_name: str, state: RunState) -> None:
    obj = kubeapi.get_custom(namespace, FINETUNEJOB.plural, name)
    if obj is None or (obj.get("status") or {}).get("jobName") != job_name:
        return
    status = obj.get("status") or {}
    if status.get("phase") in ("Succeeded", "Rejected", "Failed"):
        return  # a finished run is a record
    generation = obj["metadata"]["generation"]
    conds = status.get("conditions") or []
    result = state.result or {}
    update: dict[str, Any] = {"startTime": state.start_time} if state.start_time else {}
    if result.get("dataReport"):
        update["dataReport"] = result["dataReport"]
    if state.phase == "Succeeded" and result.get("ok"):
        av = registry.register(namespace, obj["spec"]["adapter"]["family"], name, obj["metadata"]["uid"],
                               adapter_spec(obj["spec"], name, result))
        failed = [g for g in result.get("gates") or [] if not g.get("passed")]
        update["progress"] = {k: v for k, v in (("step", result.get("steps")), ("totalSteps", result.get("totalSteps")),
                                                ("resumedFromStep", result.get("resumedFromStep"))) if isinstance(v, int)}
        update |= {"adapterVersion": av["metadata"]["name"], "completionTime": state.completion_time or now(),
                   "metrics": {k: float(v) for k, v in (result.get("metrics") or {}).items() if isinstance(v, int | float)}}
        if result.get("reportUri"):
            update["reportUri"] = result["reportUri"]
        if quantized := (av.get("spec") or {}).get("quantized"):
            update["quantized"] = quantized_status(quantized)
        if any(c.get("type") == ARTIFACT_STORE and c.get("status") == "False" for c in conds):
            conds = set_condition(conds, ARTIFACT_STORE, "True", "ArtifactStoreAvailable",
                                  "The artifact store answered again; the adapter was published in full.", generation)
        if failed:
            gates = "; ".join(f"{g['name']} {g['value']:.4g} vs {g['threshold']:.4g}" for g in failed)
            update["phase"] = "Rejected"
            conds = set_condition(conds, "Ready", "False", "GateFailed",
                                  f"Registered {av['metadata']['name']} as Rejected: failed gates: {gates}.", generation)
        else:
            update["phase"] = "Succeeded"
            note = ""
            if (update.get("quantized") or {}).get("withinTolerance") is False:
                note = (f" Its {update['quantized']['format']} model is outside the quality tolerance of the 16-bit merged model "
                        "(see its spec.quantized): a RolloutPolicy serving quantized models skips this version.")
            conds = set_condition(conds, "Ready", "True", "Ready", f"Registered {av['metadata']['name']}.{note}", generation)
    elif state.phase == "Failed":
        update |= {"phase": "Failed", "completionTime": state.completion_time or now()}
        conds = set_condition(conds, "Ready", "False", state.reason, state.message, generation)
    elif state.phase == "Running" and status.get("phase") == "Pending":
        update["phase"] = "ValidatingData"
    if "phase" not in update and not update.keys() - status.keys():
        return
    kubeapi.patch_status(namespace, FINETUNEJOB.plural, name, {**update, "conditions": conds})
    if update.get("phase") in ("Succeeded", "Rejected"):
        (events.info if update["phase"] == "Succeeded" else events.warn)(obj, update["phase"], conds[-1]["message"])
    elif update.get("phase") == "Failed":
        events.warn(obj, state.reason, state.message)


@kopf.timer(GROUP, VERSION, FINETUNEJOB.plural, interval=PROGRESS_INTERVAL, idle=None,
            when=lambda status, **_: status.get("phase") in RUNNING and bool(status.get("jobName")))
@owns_status(FINETUNEJOB)
def report_progress(namespace: str | None, status: kopf.Status, patch: kopf.Patch, body: kopf.Body, **_: Any) -> None:
    """Copies the running pod's latest progress record into status.progress and the phase; a
    failing artifact store (the workload retrying a write) becomes the ArtifactStore condition and a
    Warning Event, once per retry."""
    record = runs.progress(str(namespace), str(status["jobName"]))
    if not record:
        return
    if record.get("event") in ("storeRetry", "storeFailed"):
        then = (f"retry {record.get('attempt')} in {record.get('delaySeconds')}s" if record["event"] == "storeRetry"
                else f"gave up after {record.get('attempt')} attempts in this pod; the Job's retry takes over")
        message = printable(f"The artifact store failed to {record.get('what')}: {record.get('message')}; {then}.")
        conds = status.get("conditions") or []
        if not any(c.get("type") == ARTIFACT_STORE and c.get("message") == message for c in conds):
            patch.status["conditions"] = set_condition(conds, ARTIFACT_STORE, "False", "ArtifactStoreUnavailable",
                                                       message, body.meta.get("generation"))
            events.warn(dict(body), "ArtifactStoreUnavailable", message)
    patch.status["progress"] = {k: record[k] for k in ("step", "totalSteps", "loss", "tokensPerSecond", "etaSeconds")
                                if record.get(k) is not None}
    if (phase := record.get("phase")) in ACTIVE and phase != status.get("phase"):
        patch.status["phase"] = phase


def _recorded_at(body: kopf.Body) -> float:
    """The newest time the object records a change: created, started, finished, a condition moved."""
    status = body.status
    times = [body.meta.get("creationTimestamp"), status.get("startTime"), status.get("completionTime"),
             *(c.get("lastTransitionTime") for c in status.get("conditions") or [])]
    return max((durations.parse_time(t).timestamp() for t in times if isinstance(t, str)), default=0.0)


def export_metrics(namespace: str, name: str, body: kopf.Body) -> None:
    """tunerag_finetune_* from status.progress and the phase (on every watch event)."""
    metrics.set_finetune_progress(namespace, name, body.status.get("phase"), body.status.get("progress") or {},
                                  _recorded_at(body))


register(FINETUNEJOB, check, initial_phase="Pending", act=start_run, export=export_metrics)
# A run recorded after its Job ended (the operator died in between) is still Pending; once the run
# has moved on, its Job's own events follow it (and progress writes need no Job read each).
runs.follow(FINETUNEJOB, lambda status: status.get("phase") == "Pending")
