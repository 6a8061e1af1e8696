"""The finalize step of a sharded indexing run (`spec.parallelism` > 1).

    python -m tunerag_workloads.index.finalize spec.json     # under the workload contract

The operator starts it once every shard of the run's Indexed Job has succeeded, with the shards'
results in the request (`shards`). Under the index's exclusive lock (no shard of any run writes
meanwhile) it builds the ANN and full-text indexes of the version the shards wrote, switches that
version live if it was a rebuild, drops retired and abandoned versions, counts the version and
sums the shards' counts: its result is the run's result, shaped as a parallelism-1 run's.

Idempotent: run again (a retried pod, an operator that started it after a crash), it finds the
indexes built and the version live, and returns the same counts. It does not load the model.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg

from tunerag_workloads.contract import WorkloadError, report_progress, run

from .pipeline import MAX_SKIPPED_REPORTED, fit_result
from .spec import parse_spec
from .store import Store, connect, sanitize

COUNTS = ("added", "updated", "deleted", "unchanged", "skipped")


def _check_shards(shards: Any, parallelism: int) -> str:
    """The table version all shards wrote; refuses a set of results that is not one per shard."""
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise WorkloadError("InvalidSpec", "the request has no list of shard results")
    indexes = sorted(s.get("shard", -1) for s in shards)
    if indexes != list(range(parallelism)):
        raise WorkloadError("ShardResultsIncomplete", f"expected one result per shard 0..{parallelism - 1}, got shards {indexes}")
    tables = {s.get("tableVersion") for s in shards}
    if len(tables) != 1 or not all(isinstance(t, str) and t for t in tables):
        raise WorkloadError("ShardsDisagree", f"the shards wrote different table versions ({sorted(map(str, tables))}); run the index again")
    return str(tables.pop())


def finalize_index(spec_in: dict[str, Any], *, db_uri: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    spec = parse_spec(spec_in)
    table = _check_shards(shards, spec.parallelism)
    try:
        conn = connect(db_uri)
        try:
            store = Store(conn, spec.store.schema_, spec.store.table)
            store.prepare()
            store.lock()
            version = store.version_named(table)
            if version is None or version.state == "retired":
                raise WorkloadError("VersionGone", f"the version {table} that the shards wrote is gone or retired "
                                                   "(another run replaced it); run the index again")
            report_progress(stage="finalize", tableVersion=table)
            store.ensure_indexes(version, spec.store.distance, spec.store.index.model_dump(by_alias=True))
            rebuilt = version.state == "building"
            previous = store.live() if rebuilt else None
            if rebuilt:
                store.switch(version)
            store.drop_retired()
            store.drop_abandoned(version)
            documents, chunks, digest = store.counts(version)
        finally:
            conn.close()
    except psycopg.OperationalError as exc:
        raise WorkloadError("DatabaseConnectionLost", "the database connection failed during the finalize step: "
                            + sanitize(str(exc), db_uri)[:500], retryable=True) from None

    ordered = sorted(shards, key=lambda s: int(s["shard"]))
    skipped_files = [f for s in ordered for f in s.get("skippedFiles") or []][:MAX_SKIPPED_REPORTED]
    result: dict[str, Any] = {
        "documents": documents,
        "chunks": chunks,
        **{k: sum(int(s.get(k) or 0) for s in ordered) for k in COUNTS},
        "skippedFiles": skipped_files,
        "embeddingModel": spec.embedding.model[-200:],
        "dimension": ordered[0].get("dimension"),
        "sourceDigest": digest,
        "tableVersion": version.table,
        "rebuilt": rebuilt,
        "previousVersion": previous.table if previous else None,
        "embeddedChunks": sum(int(s.get("embeddedChunks") or 0) for s in ordered),
        "embedSeconds": round(sum(float(s.get("embedSeconds") or 0) for s in ordered), 3),
        "shards": len(ordered),
        "shardSeconds": max(float(s.get("seconds") or 0) for s in ordered),
        "seconds": round(time.monotonic() - started, 3),
    }
    report_progress(stage="done", documents=documents, chunks=chunks)
    return fit_result(result)


def finalize_main(request: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(request.get("spec"), dict):
        raise WorkloadError("InvalidSpec", "the request has no spec object")
    shards: Any = request.get("shards")
    return finalize_index(request["spec"], db_uri=os.environ.get("TUNERAG_DB_URI", ""), shards=shards)


if __name__ == "__main__":
    run(finalize_main)
