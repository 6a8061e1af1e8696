"""`promote`, `abort`, `pause` and `resume` on a RolloutPolicy.

Promote, abort and resume are annotations that name the candidate they are meant for (resume also
the step), so one left over from an earlier rollout never acts on a later candidate; pause is
`spec.paused`. All are JSON merge patches of the RolloutPolicy."""

from __future__ import annotations

from typing import Any

from tunerag_operator.api.rolloutpolicy import ABORT_ANNOTATION, PROMOTE_ANNOTATION, RESUME_ANNOTATION
from tunerag_operator.cli.cluster import CliError, Cluster

Obj = dict[str, Any]
PLURAL = "rolloutpolicies"


def _ref(name: str) -> str:
    return f"rolloutpolicy.tunerag.dev/{name}"


def _candidate(obj: Obj, verb: str) -> str:
    status = obj.get("status") or {}
    candidate: str | None = status.get("candidate")
    if not candidate:
        phase = status.get("phase") or "no status yet"
        raise CliError(f"error: {_ref(obj['metadata']['name'])} has no candidate to {verb} (phase: {phase}); "
                       "a rollout starts when a new AdapterVersion of its family is Validated")
    return candidate


def promote(cluster: Cluster, name: str) -> str:
    candidate = _candidate(cluster.get(PLURAL, name), "promote")
    cluster.merge_patch(PLURAL, name, {"metadata": {"annotations": {PROMOTE_ANNOTATION: candidate}}})
    return f"{_ref(name)} promote of {candidate} requested\n"


def abort(cluster: Cluster, name: str) -> str:
    candidate = _candidate(cluster.get(PLURAL, name), "abort")
    cluster.merge_patch(PLURAL, name, {"metadata": {"annotations": {ABORT_ANNOTATION: candidate}}})
    return f"{_ref(name)} abort of {candidate} requested\n"


def pause(cluster: Cluster, name: str) -> str:
    cluster.merge_patch(PLURAL, name, {"spec": {"paused": True}})
    return f"{_ref(name)} paused\n"


def resume(cluster: Cluster, name: str) -> str:
    """Unpauses, and lets the current candidate go on past an untimed pause step it waits at."""
    status = cluster.get(PLURAL, name).get("status") or {}
    patch: Obj = {"spec": {"paused": False}}
    candidate, step = status.get("candidate"), status.get("currentStep")
    done = f"{_ref(name)} resumed"
    if candidate and step is not None:
        patch["metadata"] = {"annotations": {RESUME_ANNOTATION: f"{candidate}/{step}"}}
        done += f" ({candidate} at step {step + 1})"
    cluster.merge_patch(PLURAL, name, patch)
    return done + "\n"
