"""Timers that survive a refused status write.

kopf applies the patch a timer leaves in `patch` after the handler returns, outside any error
handling: when the API server refuses it (a 422 from the status schema, a 400 for a NaN), the
exception ends that object's timer task, which kopf then marks as stopped for good (kopf 1.45,
`daemons._timer` / `_runner`). Nothing is logged at the object, and the resource silently stops
moving: this is how A/B tests used to stall after their first pass.

`owns_status` makes a timer write its status itself, merge-patching the status subresource
inside a try: a refusal is logged with the API server's message and shown on the object as
`Ready=False`, reason `StatusRejected` (a bug to report), and the timer goes on at its next tick.

It also writes only what changes: timers run every few seconds on every object, and a pass that
leaves the status as it is must not write (an idle operator makes no writes; 1,000 policies
re-writing an unchanged status each tick are 200 etcd writes a second for nothing).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from tunerag_operator import kubeapi
from tunerag_operator.api.kinds import Kind
from tunerag_operator.conditions import now, set_condition

log = logging.getLogger(__name__)
Handler = Callable[..., Any]


def finite(value: Any) -> Any:
    """`value` with NaN and infinities (which JSON cannot carry) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def write_status(kind: Kind, body: kopf.Body, status: dict[str, Any]) -> None:
    """Merge-patches `status` onto the object; never raises. A refusal is logged and shown as
    Ready=False/StatusRejected; an object gone meanwhile is left alone."""
    namespace, name = body.meta["namespace"], body.meta["name"]
    try:
        kubeapi.patch_status(namespace, kind.plural, name, finite(status))
        return
    except ApiException as exc:
        if exc.status == 404:
            return
        detail = kubeapi.api_message(exc)
    except (ValueError, TypeError) as exc:  # not serialisable: a bug on our side
        detail = str(exc)
    log.error("%s %s/%s: the API server refused the status write: %s; status: %s", kind.kind, namespace, name, detail,
              json.dumps(status, default=str)[:2000])
    message = (f"The operator's status write was refused: {detail}. The {kind.kind} is not moving; this is a "
               "bug in the operator: please report it with the operator's log.")
    conds = set_condition([dict(c) for c in body.status.get("conditions") or []], "Ready", "False", "StatusRejected",
                          message, body.meta.get("generation"))
    try:
        kubeapi.patch_status(namespace, kind.plural, name, {"conditions": conds})
    except ApiException as exc:
        log.error("%s %s/%s: could not report the refused status write either: %s", kind.kind, namespace, name, kubeapi.api_message(exc))


LAST_WRITTEN = "tunerag_status_written"  # per-object memo: the status fields this timer last wrote


def changes(status: dict[str, Any], *views: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `status` that differ from any of `views` (what the object is known to hold:
    the body kopf passed, and what this timer last wrote, in case the watch has not delivered that
    write yet). Equal fields are no-ops of a merge patch."""
    return {k: v for k, v in status.items() if any(view.get(k) != v for view in views)}


def owns_status(kind: Kind, *, stamp: str | None = None) -> Callable[[Handler], Handler]:
    """Decorates a sync kopf timer: what it leaves in `patch.status` is written by `write_status`
    rather than by kopf (other parts of the patch, if any, are still kopf's), and only the fields
    that change; nothing when none does. `stamp` names a status field set to the time of each
    write that changes something."""

    def decorate(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def timer(*args: Any, body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> Any:
            try:
                return fn(*args, body=body, patch=patch, **kwargs)
            finally:
                status = patch.pop("status", None)
                memo = kwargs.get("memo")
                written: dict[str, Any] = (memo.get(LAST_WRITTEN) if memo is not None else None) or {}
                changed = changes(finite(dict(status or {})), body.status, written)
                if changed:
                    if stamp:
                        changed[stamp] = now()
                    write_status(kind, body, changed)
                    if memo is not None:
                        memo[LAST_WRITTEN] = {**written, **changed}

        return timer

    return decorate

