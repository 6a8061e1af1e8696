"""Events about objects the current handler was not invoked for (a Job's owner, say)."""

from __future__ import annotations

from typing import Any, cast

import kopf

from tunerag_operator.conditions import printable


def _body(obj: dict[str, Any]) -> kopf.Body:
    return cast(kopf.Body, {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": obj["metadata"]})


def info(obj: dict[str, Any], reason: str, message: str) -> None:
    kopf.info(_body(obj), reason=reason, message=printable(message)[:1024])


def warn(obj: dict[str, Any], reason: str, message: str) -> None:
    kopf.warn(_body(obj), reason=reason, message=printable(message)[:1024])
