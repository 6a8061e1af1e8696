"""The exchange log: every exchange, and the feedback posted on it, written to PostgreSQL by one
background thread through a bounded, ordered queue.

A request only enqueues (never blocks, never fails): a full queue drops the entry. The thread
retries an entry while the database is unreachable, with exponential back-off, until the entry is
older than the retry budget; then it is dropped. Dropped entries are counted in
`tunerag_serve_feedback_log_dropped_total`. Feedback goes through the same queue, so it is applied
after its exchange's insert. The table is created on first use.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

CONNECT_TIMEOUT = 5
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0

DDL = """CREATE TABLE IF NOT EXISTS {table} (
    exchange_id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    namespace text NOT NULL,
    service text NOT NULL,
    adapter_version text NOT NULL,
    endpoint text NOT NULL,
    question text NOT NULL,
    prompt text NOT NULL,
    chunk_ids bigint[] NOT NULL DEFAULT '{{}}',
    chunk_documents text[] NOT NULL DEFAULT '{{}}',
    answer text NOT NULL,
    latency_ms double precision NOT NULL,
    feedback_label text,
    feedback_comment text,
    feedback_at timestamptz
)"""
INSERT = ("INSERT INTO {table} (exchange_id, created_at, namespace, service, adapter_version, endpoint, question, prompt, "
          "chunk_ids, chunk_documents, answer, latency_ms) VALUES (%(exchange_id)s, to_timestamp(%(created_at)s), "
          "%(namespace)s, %(service)s, %(adapter_version)s, %(endpoint)s, %(question)s, %(prompt)s, %(chunk_ids)s, "
          "%(chunk_documents)s, %(answer)s, %(latency_ms)s) ON CONFLICT (exchange_id) DO NOTHING")
UPDATE = ("UPDATE {table} SET feedback_label = %(label)s, feedback_comment = %(comment)s, "
          "feedback_at = to_timestamp(%(at)s) WHERE exchange_id = %(exchange_id)s")


@dataclass
class _Entry:
    kind: str  # "exchange" or "feedback"
    row: dict[str, Any]
    queued: float = field(default_factory=time.monotonic)


class FeedbackLog:
    def __init__(self, url: str, schema: str, table: str, *, on_drop: Callable[[int], None], mask: Callable[[str], str],
                 queue_size: int = 10000, retry_seconds: float = 60.0) -> None:
        self._url = url
        self._schema = schema
        self._table = sql.Identifier(schema, table)
        self._on_drop = on_drop
        self._mask = mask
        self._retry_seconds = retry_seconds
        self._queue: queue.Queue[_Entry | None] = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._created = False
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="tunerag-feedback-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def log_exchange(self, row: dict[str, Any]) -> None:
        """row: exchange_id, created_at (epoch seconds), namespace, service, adapter_version, endpoint,
        question, prompt, chunk_ids, chunk_documents, answer, latency_ms."""
        self._put(_Entry("exchange", row))

    def log_feedback(self, exchange_id: str, label: str, comment: str | None) -> None:
        self._put(_Entry("feedback", {"exchange_id": exchange_id, "label": label, "comment": comment, "at": time.time()}))

    def close(self, timeout: float) -> None:
        """Writes what is queued for up to `timeout` seconds, then gives up on the rest (counted)."""
        deadline = time.monotonic() + timeout
        if self._thread.ident is not None:  # started
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=max(timeout, 0.01))
            self._thread.join(max(deadline - time.monotonic(), 0.01))
        self._stopping.set()  # wakes a back-off sleep: the rest is dropped
        if self._thread.ident is not None:
            self._thread.join(2)
        left = 0
        while True:
            try:
                left += self._queue.get_nowait() is not None
            except queue.Empty:
                break
        if left:
            self._on_drop(left)
            print(f"feedback log: {left} entries not written at shutdown", file=sys.stderr, flush=True)
        if self._conn is not None:
            self._conn.close()

    def _put(self, entry: _Entry) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._on_drop(1)

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            self._write(entry)

    def _write(self, entry: _Entry) -> None:
        if self._down_since is not None and time.monotonic() - entry.queued > self._retry_seconds:
            self._on_drop(1)  # queued while the database was down, for longer than the budget
            return
        delay = BACKOFF_FIRST
        while True:
            try:
                self._apply(entry)
                if self._down_since is not None:
                    print(f"feedback log: database reachable again after {time.monotonic() - self._down_since:.1f} s",
                          file=sys.stderr, flush=True)
                    self._down_since = None
                return
            except (psycopg.OperationalError, psycopg.errors.UniqueViolation) as exc:
                # unreachable, restarting, connection lost; or another replica creating the table: retry
                self._disconnect()
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    print(f"feedback log: database unreachable, retrying: {self._mask(str(exc))[:300]}",
                          file=sys.stderr, flush=True)
            except psycopg.Error as exc:  # refused by the database (permissions, bad data): retrying will not help
                self._disconnect()
                print(f"feedback log: dropped a {entry.kind}: {type(exc).__name__}: {self._mask(str(exc))[:300]}",
                      file=sys.stderr, flush=True)
                self._on_drop(1)
                return
            if time.monotonic() - entry.queued + delay > self._retry_seconds or self._stopping.wait(delay):
                self._on_drop(1)
                return
            delay = min(delay * 2, BACKOFF_MAX)

    def _apply(self, entry: _Entry) -> None:
        if self._conn is None:
            self._conn = psycopg.connect(self._url, connect_timeout=CONNECT_TIMEOUT)
            self._created = False
        conn = self._conn
        with conn.transaction():
            if not self._created:
                exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self._schema]).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema)))
                conn.execute(sql.SQL(DDL).format(table=self._table))
            if entry.kind == "exchange":
                conn.execute(sql.SQL(INSERT).format(table=self._table), entry.row)
            else:
                conn.execute(sql.SQL(UPDATE).format(table=self._table), entry.row)
        self._created = True

    def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
