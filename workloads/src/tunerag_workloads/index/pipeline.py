"""The indexing run: list, diff, read, chunk, embed, write; build indexes; switch versions.

With `spec.parallelism` N > 1 the operator runs N shards (an Indexed Job: $JOB_COMPLETION_INDEX
is the shard) and then one finalize step (`tunerag_workloads.index.finalize`). A shard takes the
documents whose path hashes to it (`shard_of`), writes, deletes and counts only those, and stops
before the indexes; the finalize step builds the indexes, switches a rebuilt version live, drops
retired versions and sums the shards' counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from tunerag_workloads.contract import WorkloadError, report_progress

from . import embed
from .chunking import TokenCounter, chunk_document
from .sources import SkipFile, extract_text, iter_hashes, list_source, read_bytes
from .spec import IndexSpec, fingerprint, parse_spec
from .store import Store, Version, WriteItem, connect, sanitize

MAX_SKIPPED_REPORTED = 10
PAUSE_ENV = "TUNERAG_INDEX_TEST_PAUSE_AFTER_BATCHES"  # tests only: stop (sleep) after N committed batches
PAUSE_SECONDS_ENV = "TUNERAG_INDEX_TEST_PAUSE_SECONDS"  # tests only: for that long (default an hour)


class _Skipped:
    def __init__(self) -> None:
        self.count = 0
        self.files: list[dict[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        self.count += 1
        if len(self.files) < MAX_SKIPPED_REPORTED:
            self.files.append({"path": path[-200:], "reason": reason[:160]})


class _Writer(threading.Thread):
    """Writes embedded batches while the next batch is embedded (torch and libpq both release
    the GIL); one transaction per batch."""

    def __init__(self, store: Store, version: Version, on_batch: Callable[[int], None] | None, total_docs: int) -> None:
        super().__init__(name="tunerag-index-writer", daemon=True)
        self.store, self.version, self.on_batch, self.total_docs = store, version, on_batch, total_docs
        self.queue: queue.Queue[list[WriteItem] | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.batches = self.documents = self.rows = 0
        self.pause_after = int(os.environ.get(PAUSE_ENV, "0") or 0)

    def run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain
            try:
                self.rows += self.store.write_batch(self.version, batch)
                self.batches += 1
                self.documents += len(batch)
                report_progress(stage="write", done=self.documents, total=self.total_docs, chunks=self.rows, batches=self.batches)
                if self.on_batch:
                    self.on_batch(self.batches)
                if self.pause_after and self.batches >= self.pause_after:
                    report_progress(stage="paused", batches=self.batches)
                    time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, "3600")))
            except BaseException as exc:
                self.error = exc

    def put(self, batch: list[WriteItem]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(batch)

    def finish(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def changes(indexed: dict[str, str], current: dict[str, str], kept: set[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """What an incremental run does with each document, sorted by path: (added, updated,
    unchanged, deleted). `indexed` and `current` map paths to content hashes (the table's, the
    readable source files'); `kept` are indexed documents unreadable now, left as they are."""
    added = sorted(p for p in current if p not in indexed)
    updated = sorted(p for p in current if p in indexed and indexed[p] != current[p])
    unchanged = sorted(p for p in current if p in indexed and indexed[p] == current[p])
    deleted = sorted(p for p in indexed if p not in current and p not in kept)
    return added, updated, unchanged, deleted


def shard_of(path: str, shards: int) -> int:
    """The shard of a document: a stable hash of its path (the same in every run and process)."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") % shards


def run_index(
    spec: dict[str, Any] | IndexSpec,
    *,
    db_uri: str,
    source_dir: str | None = None,
    model: Any = None,
    on_batch: Callable[[int], None] | None = None,
    shard: int | None = None,
) -> dict[str, Any]:
    """Brings the index up to date with the source; returns the run's result (see index_main).

    With `shard` (0 <= shard < spec.parallelism, required when parallelism > 1) only that shard's
    documents are written, and the result holds the shard's counts for the finalize step."""
    try:
        return _run(spec, db_uri, source_dir, model, on_batch, shard)
    except psycopg.OperationalError as exc:
        # Connected once, then lost (a restart, a failover): every committed batch is kept, so a
        # new attempt of the pod continues where this one stopped.
        raise WorkloadError("DatabaseConnectionLost", "the database connection failed during the run: "
                            + sanitize(str(exc), db_uri)[:500], retryable=True) from None


def _run(spec_in: dict[str, Any] | IndexSpec, db_uri: str, source_dir: str | None, model: Any,
         on_batch: Callable[[int], None] | None, shard: int | None) -> dict[str, Any]:
    started = time.monotonic()
    spec = spec_in if isinstance(spec_in, IndexSpec) else parse_spec(spec_in)
    sharded = spec.parallelism > 1
    if sharded and (shard is None or not 0 <= shard < spec.parallelism):
        raise WorkloadError("InvalidShard", f"spec.parallelism is {spec.parallelism}: a run needs its shard in 0..{spec.parallelism - 1} "
                                            f"($JOB_COMPLETION_INDEX of an Indexed Job), got {shard!r}")
    fs, files = list_source(spec.source, source_dir)
    if sharded:
        files = [f for f in files if shard_of(f.path, spec.parallelism) == shard]
    report_progress(stage="list", files=len(files), **({"shard": shard} if sharded else {}))

    if model is None:
        model = embed.load_model(spec.embedding.model, spec.embedding.device)
    dim = embed.dimension(model)
    size = min(spec.chunking.size, embed.max_tokens(model))
    overlap = min(spec.chunking.overlap, size - 1)
    counter = TokenCounter(model.tokenizer)
    fp = fingerprint(spec, spec.embedding.model, dim, size)
    settings = {
        "model": spec.embedding.model, "dimension": dim, "normalize": spec.embedding.normalize,
        "chunking": {"strategy": spec.chunking.strategy, "size": size, "overlap": overlap},
        "distance": spec.store.distance, "index": spec.store.index.model_dump(by_alias=True),
    }

    conn = connect(db_uri)
    try:
        store = Store(conn, spec.store.schema_, spec.store.table)
        store.prepare()
        store.lock(shared=sharded)
        if not sharded:
            store.drop_retired()  # a previous run that died between switch and cleanup
        version, previous = store.target(fp, settings, dim, drop_stale=not sharded)
        store.check_dimension(version.table, dim, spec.embedding.model)
        indexed = store.documents(version)
        if sharded:  # this shard's documents only: the others belong to the other shards
            indexed = {p: h for p, h in indexed.items() if shard_of(p, spec.parallelism) == shard}

        skipped = _Skipped()
        current: dict[str, str] = {}
        formats: dict[str, str] = {}
        kept_unreadable: set[str] = set()
        for i, (file, content_hash, reason) in enumerate(iter_hashes(fs, files), 1):
            if reason is not None:
                skipped.add(file.path, reason)
                if file.format is not None and file.path in indexed:
                    kept_unreadable.add(file.path)  # unreadable now: keep what was indexed
            else:
                assert content_hash is not None and file.format is not None
                current[file.path] = content_hash
                formats[file.path] = file.format
            if i % 500 == 0:
                report_progress(stage="scan", done=i, total=len(files))

        added, updated, unchanged, deleted = changes(indexed, current, kept_unreadable)
        store.delete_documents(version, deleted)

        by_path = {f.path: f for f in files}
        to_embed = [by_path[p] for p in sorted(added + updated)]
        batch_chunks = int(os.environ.get("TUNERAG_INDEX_BATCH_CHUNKS", "0") or 0) or max(256, 4 * spec.embedding.batch_size)
        writer = _Writer(store, version, on_batch, len(to_embed))
        writer.start()
        failed: set[str] = set()
        pending: list[tuple[str, str, str, list[Any]]] = []
        pending_chunks = 0
        embed_seconds = 0.0

        def flush() -> None:
            nonlocal pending, pending_chunks, embed_seconds
            if not pending:
                return
            texts = [c.content for _, _, _, chunks in pending for c in chunks]
            t = time.monotonic()
            vectors = embed.encode(model, texts, spec.embedding.batch_size, spec.embedding.normalize)
            embed_seconds += time.monotonic() - t
            items, offset = [], 0
            for path, content_hash, fmt, chunks in pending:
                rows = [(c.chunk_index, c.content,
                         {"document": path, "chunkIndex": c.chunk_index, "headingPath": c.heading_path,
                          "format": fmt, "tokens": c.tokens},
                         hashlib.sha256(c.content.encode()).hexdigest()) for c in chunks]
                items.append(WriteItem(path, content_hash, fmt, rows, vectors[offset:offset + len(chunks)]))
                offset += len(chunks)
            writer.put(items)
            pending, pending_chunks = [], 0

        try:
            for file in to_embed:
                try:
                    data = read_bytes(fs, file)
                    assert file.format is not None
                    text = extract_text(data, file.format)
                except SkipFile as exc:
                    skipped.add(file.path, str(exc))
                    failed.add(file.path)
                    continue
                content_hash = hashlib.sha256(data).hexdigest()
                chunks = chunk_document(file.path, text, counter, spec.chunking.strategy, size, overlap)
                if not chunks:
                    skipped.add(file.path, "no extractable text")
                    failed.add(file.path)
                    continue
                pending.append((file.path, content_hash, file.format, chunks))
                pending_chunks += len(chunks)
                if pending_chunks >= batch_chunks:
                    flush()
            flush()
        finally:
            writer.finish()

        store.update_settings(version, settings)
        if sharded:  # the finalize step builds the indexes, switches and counts
            rebuilt, documents, chunks, digest = False, 0, 0, ""
        else:
            store.ensure_indexes(version, spec.store.distance, settings["index"])
            rebuilt = version.state == "building"
            if rebuilt:
                store.switch(version)
                store.drop_retired()
            documents, chunks, digest = store.counts(version)
    finally:
        conn.close()

    if sharded:
        counts = {"added": len([p for p in added if p not in failed]), "updated": len([p for p in updated if p not in failed]),
                  "deleted": len(deleted), "unchanged": len(unchanged), "skipped": skipped.count}
        report_progress(stage="shard-done", shard=shard, **counts)
        return fit_result({
            "shard": shard, "shards": spec.parallelism, **counts, "skippedFiles": skipped.files,
            "embeddingModel": spec.embedding.model[-200:], "dimension": dim, "tableVersion": version.table,
            "embeddedChunks": writer.rows, "embedSeconds": round(embed_seconds, 3),
            "seconds": round(time.monotonic() - started, 3),
        })
    result = {
        "documents": documents,
        "chunks": chunks,
        "added": len([p for p in added if p not in failed]),
        "updated": len([p for p in updated if p not in failed]),
        "deleted": len(deleted),
        "unchanged": len(unchanged),
        "skipped": skipped.count,
        "skippedFiles": skipped.files,
        "embeddingModel": spec.embedding.model[-200:],
        "dimension": dim,
        "sourceDigest": digest,
        "tableVersion": version.table,
        "rebuilt": rebuilt,
        "previousVersion": previous.table if previous else None,
        "embeddedChunks": writer.rows,
        "embedSeconds": round(embed_seconds, 3),
        "seconds": round(time.monotonic() - started, 3),
    }
    report_progress(stage="done", documents=documents, chunks=chunks)
    return fit_result(result)


def fit_result(result: dict[str, Any], limit: int = 3800) -> dict[str, Any]:
    """Keeps the result under the termination message's 4 KiB (with room for "ok")."""
    while len(json.dumps(result, separators=(",", ":"))) > limit and result["skippedFiles"]:
        result["skippedFiles"].pop()
    return result


def index_main(request: dict[str, Any]) -> dict[str, Any]:
    """The workload's entry point under the contract: spec from the request, secrets from the env."""
    if not isinstance(request.get("spec"), dict):
        raise WorkloadError("InvalidSpec", "the request has no spec object")
    index = os.environ.get("JOB_COMPLETION_INDEX", "")
    return run_index(
        request["spec"],
        db_uri=os.environ.get("TUNERAG_DB_URI", ""),
        source_dir=os.environ.get("TUNERAG_SOURCE_DIR") or None,
        shard=int(index) if index.isdigit() else None,
    )
