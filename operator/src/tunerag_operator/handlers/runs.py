"""Starting workload runs and following them: the glue between a resource and its Job.

`start` creates the run's ConfigMap and Job (idempotent by name). Job events, and a timer for
progress while a run is active, feed each kind's observer, which turns the run's state into the
owner's status. Everything is recomputed from the Job and its Pods, so a missed event or an
operator restart converges to the same status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from tunerag_operator import kubeapi, runstate
from tunerag_operator.api.common import GROUP
from tunerag_operator.render.workload import MANAGED_BY, WorkloadRun, config_map, job, run_name
from tunerag_operator.runstate import RunState

Observer = Callable[[str, str, str, RunState], None]
OBSERVERS: dict[str, Observer] = {}


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
    finished = [j for j in kubeapi.list_jobs(namespace, selector) if (j.get("status") or {}).get("completionTime")
                or any(c.get("type") == "Failed" and c.get("status") == "True" for c in (j.get("status") or {}).get("conditions") or [])]
    finished.sort(key=lambda j: j["metadata"].get("creationTimestamp") or "", reverse=True)
    for old in finished[keep:]:
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
    observer = OBSERVERS.get(labels.get(f"{GROUP}/owner-kind", ""))
    if observer is None:
        return
    namespace, name = body.metadata.namespace, body.metadata.name
    assert namespace is not None and name is not None
    state = runstate.interpret(dict(body), kubeapi.job_pods(namespace, name))
    observer(namespace, labels[f"{GROUP}/owner-name"], name, state)
