"""What KServe reports about an InferenceService, reduced to what a rollout needs.

Only traffic and readiness are read, never `status.observedGeneration` (KServe does not bump it
for every change, and it is not the InferenceService's `metadata.generation`'s mirror): a step is
done when the candidate's *effective* traffic is the weight asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunerag_operator import durations


@dataclass(frozen=True)
class Observed:
    exists: bool
    ready: bool  # the service as a whole answers
    latest_ready: bool  # the newest predictor spec is the one serving (LatestDeploymentReady)
    candidate_weight: int | None  # effective % on the candidate; None when no canary is visible
    candidate_failure: str | None  # why the candidate failed to load, if it did
    failure_time: str | None
    url: str | None


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _true(status: dict[str, Any], type_: str) -> bool:
    c = _condition(status, type_)
    return bool(c and c.get("status") == "True")


def _failure(model_status: dict[str, Any] | None) -> tuple[str | None, str | None]:
    ms = model_status or {}
    info = ms.get("lastFailureInfo") or {}
    blocked = ms.get("transitionStatus") == "BlockedByFailedLoad" or (ms.get("states") or {}).get("activeModelState") == "FailedToLoad"
    if not blocked:
        return None, None
    return f"{info.get('reason', 'ModelLoadFailed')}: {info.get('message', '')}".strip(), info.get("time")


def observe(isvc: dict[str, Any] | None, mode: str) -> Observed:
    if isvc is None:
        return Observed(False, False, False, None, None, None, None)
    status = isvc.get("status") or {}
    ready = _true(status, "Ready")
    latest_ready = _condition(status, "LatestDeploymentReady") is None or _true(status, "LatestDeploymentReady")
    url = (status.get("address") or {}).get("url") or status.get("url")
    if mode == "Knative":
        traffic = ((status.get("components") or {}).get("predictor") or {}).get("traffic") or []
        latest = [t for t in traffic if t.get("latestRevision")]
        weight = int(latest[0].get("percent") or 0) if latest else 0
        failure, at = _failure(status.get("modelStatus"))
        return Observed(True, ready, latest_ready, weight, failure, at, url)
    canaries = status.get("canaryStatuses") or []
    if not canaries:
        return Observed(True, ready, latest_ready, None, None, None, url)
    first = canaries[0]
    failure, at = _failure(first.get("modelStatus"))
    weight = int(first.get("trafficPercent") or 0) if first.get("ready") else 0
    return Observed(True, ready, latest_ready, weight, failure, at, url)


def failed_since(obs: Observed, started: str | None) -> str | None:
    """The candidate's load failure, if it happened in this rollout (a failure reported before it
    started belongs to an earlier candidate whose status KServe has not rewritten yet)."""
    if obs.candidate_failure is None:
        return None
    if started and obs.failure_time:
        try:
            if durations.parse_time(obs.failure_time) < durations.parse_time(started):
                return None
        except ValueError:
            pass
    return obs.candidate_failure
