"""What a workload run's Job and Pods say: phase, the workload's JSON result, progress.

Pure functions over the API objects (plain dicts), so they are unit-tested without a cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

PROGRESS_PREFIX = "TUNERAG_PROGRESS "
Phase = Literal["Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class RunState:
    phase: Phase
    reason: str
    message: str
    result: dict[str, Any] | None = None
    start_time: str | None = None
    completion_time: str | None = None
    failed_pods: int = 0


def _condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond  # type: ignore[no-any-return]
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term  # type: ignore[no-any-return]
    return None


def last_result(pods: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The newest terminated pod's result (its termination message parsed as JSON) and, when it
    is not JSON (a crash with FallbackToLogsOnError), the raw message."""
    done = [(p, t) for p in pods if (t := _terminated(p))]
    if not done:
        return None, ""
    _, term = max(done, key=lambda pt: (pt[1].get("finishedAt") or "", pt[0]["metadata"].get("creationTimestamp") or ""))
    message = (term.get("message") or "").strip()
    try:
        parsed = json.loads(message)
    except json.JSONDecodeError:
        return None, message or f"container exited with code {term.get('exitCode')}"
    return (parsed if isinstance(parsed, dict) else None), message


def interpret(job: dict[str, Any], pods: list[dict[str, Any]]) -> RunState:
    status = job.get("status") or {}
    result, raw = last_result(pods)

    def state(phase: Phase, reason: str, message: str) -> RunState:
        return RunState(phase, reason, message, result, status.get("startTime"), status.get("completionTime"),
                        int(status.get("failed") or 0))

    if _condition(job, "Complete"):
        return state("Succeeded", "Completed", "The workload finished.")
    if failed := _condition(job, "Failed") or _condition(job, "FailureTarget"):
        # FailureTarget: the Job controller decided the Job fails and is ending its pods.
        if result and result.get("ok") is False:
            return state("Failed", str(result.get("reason") or "WorkloadFailed"), str(result.get("message") or ""))
        detail = f" Last output: {raw[-1500:]}" if raw else ""
        return state("Failed", failed.get("reason") or "JobFailed", f"{failed.get('message') or 'The Job failed.'}{detail}")
    phase: Phase = "Running" if int(status.get("active") or 0) > 0 else "Pending"
    failed_before = int(status.get("failed") or 0)
    if failed_before and result and result.get("ok") is False:
        # An attempt failed and the Job goes on (a transient failure, exit code 3): say why.
        attempts = f"{failed_before} attempt{'s' if failed_before > 1 else ''} failed"
        return state(phase, str(result.get("reason") or "WorkloadFailed"),
                     f"Retrying ({attempts}, the Job retries with back-off): {result.get('message') or ''}")
    if phase == "Running":
        return state("Running", "Running", "The workload is running.")
    return state("Pending", "JobPending", "Waiting for the workload pod to start.")


def parse_progress(log_tail: str) -> dict[str, Any] | None:
    """The last progress record in a log tail, or None."""
    for line in reversed(log_tail.splitlines()):
        if line.startswith(PROGRESS_PREFIX):
            try:
                value = json.loads(line[len(PROGRESS_PREFIX):])
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None
