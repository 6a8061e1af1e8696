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

from tunerag_operator import metrics
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import Kind
from tunerag_operator.conditions import Conditions, get_condition, set_condition
from tunerag_operator.references import Problem

Reconciler = Callable[[Any, str], list[Problem]]
DEFAULT_RETRY_DELAY = 15.0


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        path = "spec." + ".".join(str(p) for p in err["loc"])
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
    kind: Kind, check: Reconciler, initial_phase: str, body: kopf.Body, patch: kopf.Patch, retry_delay: float
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
            raise kopf.TemporaryError(message, delay=retry_delay)
        conds = set_condition(conds, "Accepted", "True", "Accepted", "The spec is valid and every reference resolves.", generation)
        if get_condition(conds, "Ready") is None or get_condition(conds, "Ready")["reason"] != "Ready":  # type: ignore[index]
            conds = set_condition(conds, "Ready", "False", "Waiting", f"{kind.kind} accepted; waiting for its pipeline.", generation)
    finally:
        patch.status["conditions"] = conds
        patch.status["phase"] = phase
        patch.status["observedGeneration"] = generation
        _post_if_changed(body, before, conds, "Accepted")
        metrics.RECONCILES.labels(kind.kind, "error" if phase == "Failed" else "ok").inc()
        metrics.RECONCILE_SECONDS.labels(kind.kind).observe(time.perf_counter() - started)


def register(kind: Kind, check: Reconciler, initial_phase: str) -> None:
    """Registers the level-triggered reconcile of `kind` for creation, spec changes and operator
    restarts (resume). Retries on temporary problems forever, with back-off."""

    def handler(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        config = memo.get("config")
        reconcile(kind, check, initial_phase, body, patch, getattr(config, "retry_delay", DEFAULT_RETRY_DELAY))

    for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
        on(GROUP, VERSION, kind.plural, id="reconcile", retries=None, backoff=DEFAULT_RETRY_DELAY)(handler)
