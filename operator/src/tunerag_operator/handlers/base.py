"""The reconcile loop every kind shares: parse the spec, resolve references, write the status.

A kind supplies a `Reconciler`: a function from the parsed spec and the namespace to the
Problems found. This module turns the outcome into `status.phase`, `status.observedGeneration`,
the `Accepted` and `Ready` conditions, Events (only when a condition changes, so retries do not
spam), metrics, and a retry with back-off while a reference is missing: the resource heals by
itself once the user creates what was missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import kopf
from pydantic import BaseModel, ValidationError

from tunerag_operator import kubeapi, metrics
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import ALL_KINDS, Kind
from tunerag_operator.conditions import Conditions, get_condition, set_condition
from tunerag_operator.config import OperatorConfig
from tunerag_operator.references import PROBLEM_REASONS, Problem

Reconciler = Callable[[Any, str], list[Problem]]
# Acts on an accepted spec (starts a run, for instance) and returns status fields to set; the
# optional key "ready" holds (status, reason, message) for the Ready condition.
Actor = Callable[[Any, kopf.Body, OperatorConfig], dict[str, Any]]
# Sets a kind's own gauges from the object: fn(namespace, name, body).
Exporter = Callable[[str, str, kopf.Body], None]
DEFAULT_RETRY_DELAY = 15.0


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        path = ".".join(["spec", *(str(p) for p in err["loc"])])  # loc is empty for a rule on the whole spec
        parts.append(f"{path}: {err['msg']}")
    return "; ".join(parts)


def _post_if_changed(body: kopf.Body, before: Conditions, after: Conditions, type_: str) -> None:
    old, new = get_condition(before, type_), get_condition(after, type_)
    if new is None or (old and (old["status"], old["reason"]) == (new["status"], new["reason"])):
        return
    if new["status"] == "False":
        kopf.warn(body, reason=new["reason"], message=new["message"])
    else:
        kopf.info(body, reason=new["reason"], message=new["message"])


def reconcile(
    kind: Kind, check: Reconciler, initial_phase: str, body: kopf.Body, patch: kopf.Patch, config: OperatorConfig,
    act: Actor | None = None,
) -> None:
    started = time.perf_counter()
    generation = body.meta.get("generation")
    before: Conditions = [dict(c) for c in body.status.get("conditions") or []]
    conds = before
    phase = body.status.get("phase") or initial_phase
    try:
        try:
            spec: BaseModel = kind.spec.model_validate(dict(body.spec))
        except ValidationError as exc:
            message = describe_validation_error(exc)
            conds = set_condition(conds, "Accepted", "False", "InvalidSpec", message, generation)
            conds = set_condition(conds, "Ready", "False", "InvalidSpec", message, generation)
            phase = "Failed"
            metrics.RECONCILE_ERRORS.labels(kind.kind, "InvalidSpec").inc()
            return
        problems = check(spec, body.meta["namespace"])
        if problems:
            reason = problems[0].reason
            message = " ".join(p.message for p in problems)
            conds = set_condition(conds, "Accepted", "False", reason, message, generation)
            conds = set_condition(conds, "Ready", "False", reason, message, generation)
            metrics.RECONCILE_ERRORS.labels(kind.kind, reason).inc()
            raise kopf.TemporaryError(message, delay=config.retry_delay)
        conds = set_condition(conds, "Accepted", "True", "Accepted", "The spec is valid and every reference resolves.", generation)
        ready = get_condition(conds, "Ready")
        if ready is None or ready["reason"] in ("InvalidSpec", *PROBLEM_REASONS):
            conds = set_condition(conds, "Ready", "False", "Waiting", f"{kind.kind} accepted; waiting for its pipeline.", generation)
        if act is not None:
            try:
                updates = act(spec, body, config)
            except kubeapi.Refused as exc:
                # Retrying cannot help: the spec must change (which starts a new reconcile).
                message = f"The API server refused the workload rendered from this spec; fix the spec: {exc}"
                conds = set_condition(conds, "Accepted", "False", "InvalidSpec", message, generation)
                conds = set_condition(conds, "Ready", "False", "InvalidSpec", message, generation)
                phase = "Failed"
                metrics.RECONCILE_ERRORS.labels(kind.kind, "InvalidSpec").inc()
                return
            phase = updates.pop("phase", phase)
            if ready_update := updates.pop("ready", None):
                ready_status, ready_reason, ready_message = ready_update
                conds = set_condition(conds, "Ready", ready_status, ready_reason, ready_message, generation)
            for key, value in updates.items():
                patch.status[key] = value
    finally:
        # Only the fields this reconcile changes: writing back an unchanged one from this body
        # (read before the handler ran) would undo a concurrent writer's, e.g. a Job observer that
        # records the run as finished while the reconcile resumes after an operator restart.
        for key, value in (("conditions", conds), ("phase", phase), ("observedGeneration", generation)):
            if body.status.get(key) != value:
                patch.status[key] = value
        _post_if_changed(body, before, conds, "Accepted")
        metrics.RECONCILES.labels(kind.kind, "error" if phase == "Failed" else "ok").inc()
        metrics.RECONCILE_SECONDS.labels(kind.kind).observe(time.perf_counter() - started)


# A kind's own gauges, set from each of its objects on every watch event (see `watch`).
EXPORTERS: dict[str, Exporter] = {}


def watch(kind: Kind) -> None:
    """Keeps the metrics of each resource of `kind` true from every watch event, the listing at
    operator start included, whoever wrote its status: tunerag_resource_phase from status.phase,
    and the kind's exporter (`EXPORTERS`), if any. A deleted resource's series are removed. An
    event handler adds no finalizer and stores nothing on the object."""

    def on_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        namespace, name = str(body.meta.get("namespace")), str(body.meta.get("name"))
        if type == "DELETED":
            metrics.forget(kind.kind, namespace, name)
            return
        metrics.set_phase(kind.kind, namespace, name, body.status.get("phase"))
        if (export := EXPORTERS.get(kind.kind)) is not None:
            export(namespace, name, body)

    kopf.on.event(GROUP, VERSION, kind.plural, id="metrics")(on_event)


def register(
    kind: Kind, check: Reconciler, initial_phase: str, act: Actor | None = None, export: Exporter | None = None
) -> None:
    """Registers the level-triggered reconcile of `kind` for creation, spec changes and operator
    restarts (resume). Retries on temporary problems forever, with back-off. `export` sets the
    kind's own gauges from each object (`watch`)."""

    def handler(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        config = memo.get("config") or OperatorConfig.defaults()
        reconcile(kind, check, initial_phase, body, patch, config, act)

    for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
        on(GROUP, VERSION, kind.plural, id="reconcile", retries=None, backoff=DEFAULT_RETRY_DELAY)(handler)
    if export is not None:
        EXPORTERS[kind.kind] = export


# Every kind, also those whose status a timer writes (RolloutPolicy, FineTuneSchedule).
for _kind in ALL_KINDS:
    watch(_kind)
