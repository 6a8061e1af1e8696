"""Retrieval's per-query index settings (`hnsw.ef_search`, `ivfflat.probes`), which only matter
once the ANN index answers the query: on a table of a few chunks the planner scans every row and
no setting changes the answer.

Two VectorIndex versions of 2,000 chunks each (one HNSW, one IVFFlat with 100 lists) are written
through the index workload's own Store, with seeded synthetic unit vectors (no embedding model:
the query vectors are handed to `search` by a stub). On 2,000 rows PostgreSQL still picks the HNSW
index while `hnsw.ef_search` is pgvector's default 40, which stops an index scan at 40 rows; a table
many times larger is planned onto the index at any setting, which the second test reproduces by
taking the sequential scan away from the planner (`enable_seqscan = off`, checked with EXPLAIN).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql

from tunerag_workloads.index.store import Store, WriteItem
from tunerag_workloads.retrieval import search

DIM, DOCS, CHUNKS_PER_DOC = 384, 200, 10  # 2,000 chunks
QUERIES = 30
INDEXES = {"hnsw_docs": {"type": "hnsw", "m": 16, "efConstruction": 64}, "ivf_docs": {"type": "ivfflat", "lists": 100}}


class QueryModel:
    """What `search` calls to embed a query: the query's precomputed vector."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def _unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def scale(postgres: Any) -> Iterator[SimpleNamespace]:
    rng = np.random.default_rng(20240519)
    centers = rng.normal(size=(20, DIM))  # some structure, as text embeddings have: 20 topics and noise
    vectors = _unit(centers[rng.integers(0, len(centers), DOCS * CHUNKS_PER_DOC)] + rng.normal(size=(DOCS * CHUNKS_PER_DOC, DIM)))
    queries = {f"query {i}": v for i, v in enumerate(_unit(rng.normal(size=(QUERIES, DIM))))}
    name = "t_retrieval_scale"
    uri = postgres.create_database(name)
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            for table, index in INDEXES.items():
                store = Store(conn, "public", table)
                store.prepare()
                settings = {"model": "synthetic", "dimension": DIM, "normalize": True, "distance": "cosine", "index": index}
                version, _ = store.target("synthetic", settings, DIM)
                store.write_batch(version, [
                    WriteItem(f"doc-{d:03}.md", f"doc-{d}", "markdown",
                              [(c, f"chunk {c} of document {d}", {}, f"chunk-{d}-{c}") for c in range(CHUNKS_PER_DOC)],
                              vectors[d * CHUNKS_PER_DOC:(d + 1) * CHUNKS_PER_DOC])
                    for d in range(DOCS)])
                store.ensure_indexes(version, "cosine", index)
                store.switch(version)
        yield SimpleNamespace(uri=uri, queries=queries, model=QueryModel(queries))
    finally:
        postgres.drop_database(name)


def _exact(conn: psycopg.Connection[Any], table: str, vector: np.ndarray, k: int) -> list[int]:
    """The true k nearest (pgvector's own arithmetic, every row compared: no index)."""
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        rows = conn.execute(sql.SQL("SELECT id FROM {} ORDER BY embedding <=> %s LIMIT %s").format(
            sql.Identifier("public", table)), [vector, k]).fetchall()
    return [r[0] for r in rows]


def _recall(conn: psycopg.Connection[Any], truth: psycopg.Connection[Any], scale: SimpleNamespace, table: str,
            **settings: Any) -> float:
    """Mean share of the true top 10 that search returns, over every query."""
    found = 0
    for text, vector in scale.queries.items():
        got = {c.id for c in search(conn, "public", table, text, k=10, model=scale.model, distinct=False, **settings)}
        found += len(got & set(_exact(truth, table, vector, 10)))
    return found / (10 * len(scale.queries))


def test_k_beyond_pgvector_default_ef_search_returns_k(scale: SimpleNamespace) -> None:
    """As the database plans it: top 80 are 80 chunks, ranked (pgvector alone stops at 40)."""
    with psycopg.connect(scale.uri, autocommit=True) as conn:
        for text in list(scale.queries)[:5]:
            for distinct in (False, True):
                hits = search(conn, "public", "hnsw_docs", text, k=80, model=scale.model, distinct=distinct)
                assert len(hits) == 80 and len({h.id for h in hits}) == 80, (text, distinct, len(hits))
                assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_ef_search_and_probes_reach_the_index_scan(scale: SimpleNamespace) -> None:
    """Planned onto the ANN index, as a large table is: the settings search passes decide how many
    chunks come back and how many of the true nearest are among them."""
    with psycopg.connect(scale.uri, autocommit=True) as conn, psycopg.connect(scale.uri, autocommit=True) as truth:
        register_vector(truth)
        register_vector(conn)
        conn.execute("SET enable_seqscan = off")
        probe = next(iter(scale.queries.values()))
        for table in INDEXES:  # the precondition: the index answers search's query here
            plan = conn.execute(sql.SQL("EXPLAIN SELECT id FROM {} ORDER BY embedding <=> %s LIMIT 80").format(
                sql.Identifier("public", table)), [probe]).fetchall()
            assert any("Index Scan using" in line[0] for line in plan), plan

        # HNSW: k above pgvector's default ef_search (40), or above the ef_search asked for, still
        # gives k (the candidate list is never shorter than the rows fetched), and ef_search is what
        # trades speed for recall: 1000 (the most pgvector allows) finds the true top 10 (measured:
        # all of it), 10 about half.
        for text in list(scale.queries)[:5]:
            for ef in (100, 10):
                hits = search(conn, "public", "hnsw_docs", text, k=80, model=scale.model, distinct=False, ef_search=ef)
                assert len(hits) == 80, (text, ef, len(hits))
        wide, narrow = (_recall(conn, truth, scale, "hnsw_docs", ef_search=ef) for ef in (1000, 10))
        assert wide >= 0.98 and narrow <= 0.7, (wide, narrow)

        # IVFFlat: search's default probes (10 of 100 lists) give 40 of 40; probes = lists scans
        # every list, exactly the true top 10; one list (pgvector's default) a small share of it.
        for text in scale.queries:
            assert len(search(conn, "public", "ivf_docs", text, k=40, model=scale.model, distinct=False)) == 40, text
        every, one = (_recall(conn, truth, scale, "ivf_docs", probes=p) for p in (100, 1))
        assert every == 1.0 and one <= 0.5, (every, one)
