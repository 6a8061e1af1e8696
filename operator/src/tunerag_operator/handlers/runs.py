"""Starting workload runs and following them: the glue between a resource and its Job.

`start` creates the run's ConfigMap and Job (idempotent by name). Job events, and a timer for
progress while a run is active, feed each kind's observer, which turns the run's state into the
owner's status. Everything is recomputed from the Job and its Pods, so a missed event or an
operator restart converges to the same status.

The owner's own events feed the observer too (`follow`): a Job that ended before the owner
recorded it (the operator died between creating the Job and writing status.jobName, and the Job
ended while it was down) has had all its events by the time the run is recorded, so only the
owner's next event can bring it to the observer. One observer call at a time per owner, so the two
paths never record the same run twice.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any

import kopf

from tunerag_operator import kubeapi, runstate
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import Kind
from tunerag_operator.render.workload import MANAGED_BY, WorkloadRun, config_map, job, run_name
from tunerag_operator.runstate import RunState

Observer = Callable[[str, str, str, RunState], None]
OBSERVERS: dict[str, Observer] = {}


# Observer calls of one owner are serialised on one of these (a fixed set: memory does not grow
# with the objects seen).
_LOCKS = [threading.Lock() for _ in range(64)]


def _dispatch(kind: str, namespace: str, owner: str, job_name: str, state: RunState) -> None:
    observer = OBSERVERS.get(kind)
    if observer is None:
        return
    with _LOCKS[zlib.crc32(f"{kind}/{namespace}/{owner}".encode()) % len(_LOCKS)]:
        observer(namespace, owner, job_name, state)


def finished(job: dict[str, Any]) -> bool:
    """Whether the Job has ended: Complete or Failed."""
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def follow(kind: Kind, recorded: Callable[[kopf.Status], bool]) -> None:
    """Registers a handler on `kind`'s events that, while `recorded(status)` says a run is under
    way (and status.jobName names it), hands the run to the observer once its Job has ended."""

    def under_way(status: kopf.Status, **_: Any) -> bool:
        return bool(status.get("jobName")) and recorded(status)

    @kopf.on.event(GROUP, VERSION, kind.plural, id="follow-run", when=under_way)
    def follow_run(body: kopf.Body, type: str | None, **_: Any) -> None:
        if type == "DELETED":
            return
        namespace, name, job_name = str(body.meta["namespace"]), str(body.meta["name"]), str(body.status["jobName"])
        found = kubeapi.get_job(namespace, job_name)
        if found is None or not finished(found):
            return  # running (its own events will come), or gone
        _dispatch(kind.kind, namespace, name, job_name, runstate.interpret(found, kubeapi.job_pods(namespace, job_name)))


def observe(kind: str) -> Callable[[Observer], Observer]:
    """Registers `fn(namespace, owner_name, job_name, state)` for the runs of `kind`."""

    def register(fn: Observer) -> Observer:
        OBSERVERS[kind] = fn
        return fn

    return register


def start(run: WorkloadRun) -> str:
    """Creates the run's ConfigMap and Job unless they exist; returns the Job's name."""
    kubeapi.create_if_absent(config_map(run))
    kubeapi.create_if_absent(job(run))
    return run_name(run.owner, run.suffix)


def prune(namespace: str, owner_kind: str, owner_name: str, keep: int) -> None:
    """Deletes the owner's finished run Jobs beyond the newest `keep` (periodic runs must not pile up)."""
    selector = f"{GROUP}/owner-kind={owner_kind},{GROUP}/owner-name={owner_name}"
    ended = [j for j in kubeapi.list_jobs(namespace, selector) if finished(j)]
    ended.sort(key=lambda j: j["metadata"].get("creationTimestamp") or "", reverse=True)
    for old in ended[keep:]:
        kubeapi.delete_job(namespace, old["metadata"]["name"])


def state(namespace: str, job_name: str) -> RunState | None:
    """The run's state now, or None when its Job does not exist."""
    found = kubeapi.get_job(namespace, job_name)
    return None if found is None else runstate.interpret(found, kubeapi.job_pods(namespace, job_name))


def progress(namespace: str, job_name: str) -> dict[str, Any] | None:
    """The latest progress record of the run's active pod, read from its log."""
    pods = [p for p in kubeapi.job_pods(namespace, job_name) if (p.get("status") or {}).get("phase") == "Running"]
    if not pods:
        return None
    newest = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    return runstate.parse_progress(kubeapi.pod_log_tail(namespace, newest["metadata"]["name"]))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED_BY)
def on_job_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    if type == "DELETED":
        return
    labels = body.metadata.labels
    kind = labels.get(f"{GROUP}/owner-kind", "")
    if kind not in OBSERVERS:
        return
    namespace, name = body.metadata.namespace, body.metadata.name
    assert namespace is not None and name is not None
    state = runstate.interpret(dict(body), kubeapi.job_pods(namespace, name))
    _dispatch(kind, namespace, labels[f"{GROUP}/owner-name"], name, state)
