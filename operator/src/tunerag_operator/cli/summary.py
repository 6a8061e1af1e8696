"""One summary per resource for `kubectl tunerag status`: the cells of its row, and the same
figures as data for `-o json|yaml`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunerag_operator.cli.text import NONE, duration, number

Obj = dict[str, Any]
TERMINAL = {"Succeeded", "Rejected", "Failed"}
# AdapterVersion metrics worth a place in the table, in this order (the rest are in -o json).
KEY_METRICS = ("exactMatch", "validationLoss", "retentionRegression")


@dataclass(frozen=True)
class Summary:
    kind: str
    namespace: str
    name: str
    phase: str
    progress: str
    details: str
    ready: Obj | None
    data: Obj

    def as_dict(self) -> Obj:
        ready = {k: self.ready.get(k) for k in ("status", "reason", "message")} if self.ready else None
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "phase": self.phase or None,
                **self.data, "ready": ready}


def condition(obj: Obj, type_: str) -> Obj | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c.get("type") == type_), None)


def canary_steps(obj: Obj) -> list[Obj]:
    return list(((obj.get("spec", {}).get("strategy") or {}).get("canary") or {}).get("steps") or [])


def step_progress(step: int, total: int) -> str:
    """`step 2/6` (currentStep is 0-based); past the last step, as when waiting for a manual promote,
    `6/6 steps done`."""
    if total and step >= total:
        return f"{total}/{total} steps done"
    return f"step {step + 1}/{total}" if total else f"step {step + 1}"


def _join(parts: list[str]) -> str:
    return ", ".join(p for p in parts if p) or NONE


def _finetunejob(status: Obj, obj: Obj) -> tuple[str, str, Obj]:
    p = status.get("progress") or {}
    step, total, eta = p.get("step"), p.get("totalSteps"), p.get("etaSeconds")
    progress = ""
    if total:
        progress = f"{step or 0}/{total} steps ({100 * (step or 0) // total}%)"
        if eta is not None and status.get("phase") not in TERMINAL:
            progress += f", ETA {duration(eta)}"
    loss, adapter = p.get("loss"), status.get("adapterVersion")
    details = _join([f"loss {number(loss)}" if loss is not None else "", f"adapter {adapter}" if adapter else ""])
    data = {"progress": {"step": step, "totalSteps": total, "etaSeconds": eta} if p else None,
            "loss": loss, "adapterVersion": adapter}
    return progress or NONE, details, data


def _adapterversion(status: Obj, obj: Obj) -> tuple[str, str, Obj]:
    spec = obj.get("spec", {})
    served: list[str] = status.get("servedBy") or []
    metrics: dict[str, float] = spec.get("metrics") or {}
    shown = [f"{m}={number(metrics[m])}" for m in KEY_METRICS if m in metrics]
    details = " ".join([f"{spec.get('family')} v{spec.get('version')}", *shown])
    data = {"family": spec.get("family"), "version": spec.get("version"), "servedBy": served, "metrics": metrics}
    return (f"served by {','.join(served)}" if served else NONE), details, data


def _vectorindex(status: Obj, obj: Obj) -> tuple[str, str, Obj]:
    docs, chunks = status.get("documents"), status.get("chunks")
    progress = f"{docs or 0} documents, {chunks or 0} chunks" if docs is not None or chunks is not None else NONE
    table, model = status.get("tableVersion"), status.get("embeddingModel")
    details = _join([f"table {table}" if table else "", f"model {model}" if model else ""])
    data = {"documents": docs, "chunks": chunks, "tableVersion": table, "embeddingModel": model,
            "lastIndexedTime": status.get("lastIndexedTime")}
    return progress, details, data


def _rolloutpolicy(status: Obj, obj: Obj) -> tuple[str, str, Obj]:
    step, weight = status.get("currentStep"), status.get("canaryWeight")
    total = len(canary_steps(obj))
    parts = []
    if step is not None:  # shown 1-based; currentStep is the step's index
        parts.append(step_progress(step, total))
    if weight is not None:
        parts.append(f"weight {weight}%")
    stable, candidate = status.get("stable"), status.get("candidate")
    details = f"{stable or NONE} -> {candidate}" if candidate else (stable or NONE)
    data = {"stable": stable, "candidate": candidate, "currentStep": step, "steps": total or None,
            "canaryWeight": weight, "failedChecks": status.get("failedChecks")}
    return _join(parts), details, data


def _finetuneschedule(status: Obj, obj: Obj) -> tuple[str, str, Obj]:
    active: Obj = status.get("active") or {}
    history: list[Obj] = status.get("history") or []
    threshold, samples = obj.get("spec", {}).get("minNewSamples"), status.get("newSamples")
    if active:
        progress = f"run {active.get('run')}: {'training' if active.get('stage') == 'Training' else 'building dataset'}"
    elif threshold is not None:
        progress = f"{samples or 0}/{threshold} new samples"
    else:
        progress = NONE
    last = history[-1] if history else None
    details = _join([
        f"last {last['run']} {last['outcome']}" + (f" ({last['adapterVersion']})" if last.get("adapterVersion") else "")
        if last else "",
        f"next {status['nextScheduleTime']}" if status.get("nextScheduleTime") and not active else "",
    ])
    data = {"runs": status.get("runs"), "newSamples": samples, "active": active.get("run"),
            "nextScheduleTime": status.get("nextScheduleTime"), "lastRun": last}
    return progress, details, data


SUMMARIZERS: dict[str, Callable[[Obj, Obj], tuple[str, str, Obj]]] = {
    "FineTuneJob": _finetunejob,
    "AdapterVersion": _adapterversion,
    "VectorIndex": _vectorindex,
    "RolloutPolicy": _rolloutpolicy,
    "FineTuneSchedule": _finetuneschedule,
}


def summarize(obj: Obj) -> Summary:
    status = obj.get("status") or {}
    progress, details, data = SUMMARIZERS[obj["kind"]](status, obj)
    meta = obj["metadata"]
    return Summary(obj["kind"], meta.get("namespace", ""), meta["name"], status.get("phase") or "",
                   progress, details, condition(obj, "Ready"), data)
