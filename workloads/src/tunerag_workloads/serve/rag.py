"""Retrieval for the server: the topK chunks of a question from the VectorIndex (through
`tunerag_workloads.retrieval.search`, on a few reused connections), and the prompt built from them.

A database that is down, an index without a live version or any other failure to retrieve is a
`RetrievalUnavailable` (HTTP 503) with the database URL masked; the server goes on.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.retrieval import Chunk, search
from tunerag_workloads.serve.config import Retrieval

CONNECT_TIMEOUT = 5
MAX_IDLE = 4


class RetrievalUnavailable(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def build_prompt(template: str, question: str, chunks: list[Chunk]) -> str:
    """{context}: each chunk under its document's name, in rank order; {question}: the question.
    One pass, so braces in the chunks or the question are never substituted again."""
    context = "\n\n".join(f"[{c.document}]\n{c.content.strip()}" for c in chunks)
    values = {"context": context, "question": question}
    return re.sub(r"\{(context|question)\}", lambda m: values[m.group(1)], template)


def provenance(chunk: Chunk) -> dict[str, Any]:
    """A cited chunk; `alsoIn`: other documents that hold the same text (retrieval returns it once)."""
    cited = {"id": chunk.id, "document": chunk.document, "chunkIndex": chunk.chunk_index,
             "score": round(float(chunk.score), 6), "headingPath": list(chunk.heading_path)}
    if chunk.duplicates:
        cited["alsoIn"] = list(chunk.duplicates)
    return cited


class Retriever:
    def __init__(self, url: str, spec: Retrieval, *, mask: Callable[[str], str], observe: Callable[[float], None]) -> None:
        self.spec = spec
        self._url = url
        self._mask = mask
        self._observe = observe
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def retrieve(self, question: str) -> list[Chunk]:
        started = time.perf_counter()
        try:
            return self._retrieve(question)
        finally:
            self._observe(time.perf_counter() - started)

    def prompt(self, question: str, chunks: list[Chunk]) -> str:
        return build_prompt(self.spec.prompt_template, question, chunks)

    def warm_up(self) -> str | None:
        """Loads the index's embedding model now rather than on the first request; returns why it
        could not (the server starts anyway: retrieval answers 503 until the database is back)."""
        try:
            self._retrieve("warm-up")
        except RetrievalUnavailable as exc:
            return f"{exc.reason}: {exc.message}"
        return None

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _retrieve(self, question: str) -> list[Chunk]:
        s = self.spec
        for attempt in (1, 2):
            try:
                with self._connection() as (conn, reused):
                    try:
                        return search(conn, s.schema_, s.table, question, k=s.top_k, ef_search=s.ef_search,
                                      probes=s.probes, hybrid=s.hybrid)
                    except psycopg.OperationalError:
                        if reused and attempt == 1:  # a pooled connection the server closed meanwhile
                            raise _Stale() from None
                        raise
            except _Stale:
                continue
            except psycopg.OperationalError as exc:
                raise RetrievalUnavailable("DatabaseUnavailable", f"the vector database is unreachable: "
                                           f"{self._mask(str(exc))[:400]}") from None
            except LookupError as exc:
                raise RetrievalUnavailable("IndexNotReady", str(exc)) from None
            except psycopg.Error as exc:
                raise RetrievalUnavailable("RetrievalFailed", f"{s.schema_}.{s.table}: {type(exc).__name__}: "
                                           f"{self._mask(str(exc))[:400]}") from None
            except WorkloadError as exc:  # the index's embedding model cannot be loaded
                raise RetrievalUnavailable(exc.reason, exc.message) from None
        raise AssertionError("unreachable")

    @contextmanager
    def _connection(self) -> Iterator[tuple[psycopg.Connection[Any], bool]]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        if conn is None or conn.closed:
            conn, reused = psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT), False
        try:
            yield conn, reused
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()


class _Stale(Exception):
    pass
