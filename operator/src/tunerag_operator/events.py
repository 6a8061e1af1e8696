"""Events about objects the current handler was not invoked for (a Job's owner, say)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, cast

import kopf

from tunerag_operator.conditions import printable


def _body(obj: dict[str, Any]) -> kopf.Body:
    return cast(kopf.Body, {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": obj["metadata"]})


def info(obj: dict[str, Any], reason: str, message: str) -> None:
    kopf.info(_body(obj), reason=reason, message=printable(message)[:1024])


def warn(obj: dict[str, Any], reason: str, message: str) -> None:
    kopf.warn(_body(obj), reason=reason, message=printable(message)[:1024])


# Statuses the API server answers a write it will not take as it is: a retry of the same write is
# refused the same way (unlike 409 Conflict, 429 or 5xx, which kopf retries and which pass).
REFUSED = (400, 403, 413, 422)
SAID_BOUND = 1024  # objects whose last refusal is remembered


class RefusedWrites(logging.Handler):
    """Says on the resource when the API server refuses kopf's write of it.

    kopf applies a handler's status and its own bookkeeping after the handler returns; when the
    API server refuses that patch (a validating admission policy, a webhook, an object over a
    size limit), kopf only logs it and retries with back-off, and the resource shows nothing.
    This handler, on kopf's per-object logger, posts a Warning Event `WriteRefused` with the API
    server's answer, once per distinct answer per object (retries of the same refusal add no
    Events), so `kubectl describe` says why the status does not move. A condition cannot carry
    it: the refused write is the status write itself."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self._said: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        ref = getattr(record, "k8s_ref", None)
        status = getattr(error, "status", None)
        if error is None or not isinstance(ref, dict) or status not in REFUSED or not ref.get("uid"):
            return
        answer = str(getattr(error, "message", None) or error)
        if self._said.get(ref["uid"]) == answer:
            return
        if len(self._said) >= SAID_BOUND:  # objects deleted since are never forgotten otherwise
            self._said.pop(next(iter(self._said)))
        self._said[ref["uid"]] = answer
        body = {"apiVersion": ref.get("apiVersion"), "kind": ref.get("kind"),
                "metadata": {k: ref.get(k) for k in ("name", "namespace", "uid")}}
        message = (f"The API server refused the operator's write of this {ref.get('kind')} ({status}); its status "
                   f"cannot change until that is fixed: {answer}")
        with contextlib.suppress(LookupError):  # outside kopf's processing (no event queue): the log says it
            kopf.warn(cast(kopf.Body, body), reason="WriteRefused", message=printable(message)[:1024])


def report_refused_writes() -> None:
    """Attaches `RefusedWrites` to kopf's per-object logger (once)."""
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(h, RefusedWrites) for h in objects.handlers):
        objects.addHandler(RefusedWrites())
