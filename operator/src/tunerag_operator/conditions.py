"""Status conditions in the Kubernetes API convention; the one place that builds them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]
Conditions = list[dict[str, Any]]


def printable(text: str) -> str:
    """`text` with control and format characters (terminal escapes, bidi overrides, NUL) written
    as escapes: condition and Event messages quote file names and workload output, and kubectl
    prints them to a terminal as they are. Newlines are kept."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\n" else ch.encode("unicode_escape").decode("ascii") for ch in text)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    status: Status,
    reason: str,
    message: str,
    generation: int | None,
) -> Conditions:
    """Returns `conditions` with `type_` set. lastTransitionTime moves only when status changes,
    so re-running a reconcile with the same outcome writes nothing new."""
    out: Conditions = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != status
        out.append({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": printable(message),
            "lastTransitionTime": now() if changed else cond.get("lastTransitionTime", now()),
            "observedGeneration": generation,
        })
    if not found:
        out.append({
            "type": type_, "status": status, "reason": reason, "message": printable(message),
            "lastTransitionTime": now(), "observedGeneration": generation,
        })
    return out


def get_condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
