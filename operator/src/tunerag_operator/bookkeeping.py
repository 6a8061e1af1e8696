"""Where kopf keeps its own bookkeeping: under `status.kopf`, never in the user's annotations.

kopf remembers the last spec it handled (its diff base) and the progress of handlers that retry.
Kept in annotations (kopf's default, and this operator's before), the diff base copied every
annotation of the object: a resource whose own annotations were near the API server's limit
(256 KiB in all: `kubectl apply`'s last-applied-configuration, GitOps tools' own) was pushed over
it, every patch was refused with 422, and the resource never got a status. Here:

- the diff base is the spec and labels (annotations drive no reconcile here, so they are not part
  of it), in `status.kopf.lastHandledConfiguration`;
- handler progress and kopf's touch marker are in `status.kopf.progress` and `status.kopf.dummy`;
- an object last handled by an older operator (annotations) is read once from its annotation and
  the annotation is removed on the next write, so an upgrade neither re-runs a finished handler
  nor leaves the old copy eating the user's budget.

Every kind's status schema has a `kopf` object that keeps unknown fields (api.common.StatusBase).
"""

from __future__ import annotations

import json
from typing import Any, cast

import kopf

from tunerag_operator.api.common import GROUP

DIFFBASE_FIELD = "status.kopf.lastHandledConfiguration"
PROGRESS_FIELD = "status.kopf.progress"
TOUCH_FIELD = "status.kopf.dummy"
# What kopf's annotation storages wrote under the operator's prefix before.
LEGACY_DIFFBASE = f"{GROUP}/last-handled-configuration"
LEGACY_MARKS = (f"{GROUP}/touch-dummy", f"{GROUP}/kopf-managed")


def _annotations(body: kopf.Body) -> dict[str, str]:
    return dict(body.get("metadata", {}).get("annotations") or {})


def _drop_legacy(body: kopf.Body, patch: kopf.Patch, keys: tuple[str, ...]) -> None:
    present = _annotations(body)
    for key in keys:
        if key in present:
            patch.setdefault("metadata", {}).setdefault("annotations", {})[key] = None


class SpecDiffBase(kopf.StatusDiffBaseStorage):
    """The diff base in status, without annotations; falls back to the legacy annotation."""

    def __init__(self) -> None:
        super().__init__(field=DIFFBASE_FIELD, ignored_fields=["metadata.annotations"])

    def fetch(self, *, body: kopf.Body) -> Any:
        essence = super().fetch(body=body)
        if essence is not None:
            return essence
        encoded = _annotations(body).get(LEGACY_DIFFBASE)
        if encoded is None:
            return None
        legacy = cast(dict[str, Any], json.loads(encoded))
        metadata = legacy.get("metadata") or {}
        metadata.pop("annotations", None)
        if not metadata:
            legacy.pop("metadata", None)
        return legacy

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        super().store(body=body, patch=patch, essence=essence)
        _drop_legacy(body, patch, (LEGACY_DIFFBASE, *LEGACY_MARKS))


class StatusProgress(kopf.StatusProgressStorage):
    """Handler progress in status; a legacy progress annotation of the same handler is removed
    when its progress is purged."""

    def __init__(self) -> None:
        super().__init__(field=PROGRESS_FIELD, touch_field=TOUCH_FIELD)

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        super().purge(key=key, body=body, patch=patch)
        _drop_legacy(body, patch, (f"{GROUP}/{key}",))


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.progress_storage = StatusProgress()
    settings.persistence.diffbase_storage = SpecDiffBase()
