"""`kubectl tunerag logs ftj|vidx NAME`: the log of the pod of the resource's current Job."""

from __future__ import annotations

import sys
from typing import Any

from tunerag_operator.cli.cluster import CliError, Cluster

Obj = dict[str, Any]
# Accepted spellings of the two kinds that run Jobs, as kubectl accepts kind names.
PLURALS = {
    **dict.fromkeys(("ftj", "finetunejob", "finetunejobs"), ("finetunejobs", "finetunejob")),
    **dict.fromkeys(("vidx", "vectorindex", "vectorindexes"), ("vectorindexes", "vectorindex")),
}


def current_pod(cluster: Cluster, kind: str, name: str) -> str:
    """The newest pod of the resource's status.jobName: a retried Job's last attempt."""
    plural, singular = PLURALS[kind]
    status = cluster.get(plural, name).get("status") or {}
    job = status.get("jobName")
    if not job:
        raise CliError(f"error: {singular}.tunerag.dev/{name} has no Job yet (phase: {status.get('phase') or 'no status yet'})")
    pods = cluster.job_pods(job)
    if not pods:
        raise CliError(f"error: Job {job} of {singular}.tunerag.dev/{name} has no pods (yet, or any more)")
    # Timestamps have whole seconds: between attempts created in the same second, the one that
    # has not failed is the later.
    newest: Obj = max(pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""),
                                           (p.get("status") or {}).get("phase") != "Failed", p["metadata"]["name"]))
    return str(newest["metadata"]["name"])


def run(cluster: Cluster, kind: str, name: str, follow: bool, tail: int | None, container: str | None) -> int:
    pod = current_pod(cluster, kind, name)
    out = sys.stdout.buffer
    try:
        for chunk in cluster.log(pod, container, follow, tail):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        return 130
    return 0
