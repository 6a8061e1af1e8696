"""`kubectl tunerag logs ftj|vidx NAME`: the log of the pod of the resource's current Job. A sharded
VectorIndex run (an Indexed Job, then its finalize Job) shows each shard's current pod and the
finalize pod, every line prefixed with its step, as `kubectl logs --prefix` does over a selector."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

from tunerag_operator.cli.cluster import CliError, Cluster
from tunerag_operator.render.workload import COMPLETION_INDEX, Owner, finalize_name

Obj = dict[str, Any]
# Accepted spellings of the two kinds that run Jobs, as kubectl accepts kind names.
PLURALS = {
    **dict.fromkeys(("ftj", "finetunejob", "finetunejobs"), ("finetunejobs", "finetunejob")),
    **dict.fromkeys(("vidx", "vectorindex", "vectorindexes"), ("vectorindexes", "vectorindex")),
}


def newest(pods: list[Obj]) -> Obj:
    """A retried Job's (or shard's) last attempt. Timestamps have whole seconds: between attempts
    created in the same second, the one that has not failed is the later."""
    return max(pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""),
                                    (p.get("status") or {}).get("phase") != "Failed", p["metadata"]["name"]))


def _index(pod: Obj) -> int | None:
    meta = pod["metadata"]
    value = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(COMPLETION_INDEX)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def current_pods(cluster: Cluster, kind: str, name: str) -> list[tuple[str, str]]:
    """(label, pod) to show: the newest pod of the resource's status.jobName, labelled ""; for a
    sharded run, the newest pod of each shard ("shard N", in order) and of the finalize Job
    ("finalize", once it exists). A shard without a pod yet is reported on stderr."""
    plural, singular = PLURALS[kind]
    obj = cluster.get(plural, name)
    status = obj.get("status") or {}
    job = status.get("jobName")
    if not job:
        raise CliError(f"error: {singular}.tunerag.dev/{name} has no Job yet (phase: {status.get('phase') or 'no status yet'})")
    pods = cluster.job_pods(job)
    if not pods:
        raise CliError(f"error: Job {job} of {singular}.tunerag.dev/{name} has no pods (yet, or any more)")
    shards: dict[int, list[Obj]] = {}
    for pod in pods:
        if (index := _index(pod)) is not None:
            shards.setdefault(index, []).append(pod)
    if not shards:
        return [("", str(newest(pods)["metadata"]["name"]))]
    count = int((((cluster.job(job) or {}).get("spec") or {}).get("completions")) or 0)
    shown: list[tuple[str, str]] = []
    for index in range(max(count, max(shards) + 1)):
        if index in shards:
            shown.append((f"shard {index}", str(newest(shards[index])["metadata"]["name"])))
        else:
            print(f"shard {index}: no pod yet", file=sys.stderr)
    meta = obj["metadata"]
    owner = Owner(obj["kind"], name, meta["namespace"], meta["uid"], meta["generation"])
    if finalize := cluster.job_pods(finalize_name(owner, job)):
        shown.append(("finalize", str(newest(finalize)["metadata"]["name"])))
    return shown


def _lines(label: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The stream's whole lines, each prefixed `[label] ` (a last line without a newline gets one)."""
    prefix, rest = f"[{label}] ".encode(), b""
    for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        yield from (prefix + line + b"\n" for line in lines)
    if rest:
        yield prefix + rest + b"\n"


def _follow(cluster: Cluster, shown: list[tuple[str, str]], container: str | None, tail: int | None, out: BinaryIO) -> int:
    """All streams at once, lines interleaved as they come: one reader thread per pod; this thread
    writes (so lines stay whole) until every stream has ended."""
    items: queue.Queue[bytes | str | None] = queue.Queue()  # a line, an error, or a stream's end

    def read(label: str, pod: str) -> None:
        try:
            for line in _lines(label, cluster.log(pod, container, True, tail)):
                items.put(line)
            items.put(None)
        except Exception as exc:  # reported by the writing thread, which goes on with the others
            items.put(f"{label}: {exc}")

    for label, pod in shown:
        threading.Thread(target=read, args=(label, pod), name=f"log {pod}", daemon=True).start()
    failed, running = False, len(shown)
    while running:
        item = items.get()
        if isinstance(item, bytes):
            out.write(item)
            out.flush()
            continue
        running -= 1
        if item is not None:
            print(item, file=sys.stderr)
            failed = True
    return 1 if failed else 0


def run(cluster: Cluster, kind: str, name: str, follow: bool, tail: int | None, container: str | None) -> int:
    shown = current_pods(cluster, kind, name)
    out = sys.stdout.buffer
    try:
        if shown[0][0] == "":  # one pod: its log as it is
            for chunk in cluster.log(shown[0][1], container, follow, tail):
                out.write(chunk)
                out.flush()
            return 0
        if follow:
            return _follow(cluster, shown, container, tail, out)
        failed = False
        for label, pod in shown:  # one after another: shards in order, then finalize
            try:
                out.writelines(_lines(label, cluster.log(pod, container, False, tail)))
            except CliError as exc:
                print(f"{label}: {exc}", file=sys.stderr)
                failed = True
            out.flush()
        return 1 if failed else 0
    except KeyboardInterrupt:
        return 130
