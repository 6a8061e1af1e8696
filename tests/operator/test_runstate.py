"""Reading a workload run's state from its Job and Pods."""

from __future__ import annotations

import json
from typing import Any

from tunerag_operator.runstate import interpret, parse_progress


def _job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j"}, "status": status}


def _pod(created: str, exit_code: int, message: str, finished: str) -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": created},
        "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": exit_code, "message": message, "finishedAt": finished}}}]},
    }


def test_succeeded_with_result() -> None:
    job = _job(conditions=[{"type": "Complete", "status": "True"}], succeeded=1, completionTime="t2")
    state = interpret(job, [_pod("t0", 0, json.dumps({"ok": True, "chunks": 7}), "t1")])
    assert state.phase == "Succeeded" and state.result == {"ok": True, "chunks": 7}


def test_user_error_is_reported_with_the_workloads_reason() -> None:
    job = _job(conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "..."}], failed=1)
    msg = json.dumps({"ok": False, "reason": "InsufficientData", "message": "3 rows kept, 8 needed"})
    state = interpret(job, [_pod("t0", 2, msg, "t1")])
    assert (state.phase, state.reason, state.message) == ("Failed", "InsufficientData", "3 rows kept, 8 needed")


def test_crash_uses_the_newest_pods_log_fallback() -> None:
    job = _job(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit"}], failed=2)
    pods = [_pod("t0", 1, "old crash", "t1"), _pod("t2", 137, "Traceback: OOM", "t3")]
    state = interpret(job, pods)
    assert state.reason == "BackoffLimitExceeded" and "Traceback: OOM" in state.message and state.failed_pods == 2


def test_running_and_pending() -> None:
    assert interpret(_job(active=1), []).phase == "Running"
    assert interpret(_job(), []).phase == "Pending"


def test_progress_is_the_last_record() -> None:
    log = 'x\nTUNERAG_PROGRESS {"step": 1}\nnoise\nTUNERAG_PROGRESS {"step": 2, "loss": 0.5}\nTUNERAG_PROGRESS {broken\n'
    assert parse_progress(log) == {"step": 2, "loss": 0.5}
    assert parse_progress("nothing") is None


def test_a_retried_attempt_says_why_it_failed() -> None:
    lost = json.dumps({"ok": False, "reason": "DatabaseConnectionLost", "message": "terminating connection", "retryable": True})
    state = interpret(_job(active=1, failed=1), [_pod("t0", 3, lost, "t1")])
    assert (state.phase, state.reason) == ("Running", "DatabaseConnectionLost")
    assert state.message == "Retrying (1 attempt failed, the Job retries with back-off): terminating connection"
    assert interpret(_job(failed=2), [_pod("t0", 3, lost, "t1"), _pod("t2", 3, lost, "t3")]).message.startswith("Retrying (2 attempts")
    # a user error decided by the podFailurePolicy, before the Failed condition: not a retry
    msg = json.dumps({"ok": False, "reason": "InsufficientData", "message": "3 rows kept"})
    failing = _job(failed=1, conditions=[{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"}])
    assert (interpret(failing, [_pod("t0", 2, msg, "t1")]).phase, interpret(failing, [_pod("t0", 2, msg, "t1")]).reason) == ("Failed", "InsufficientData")
