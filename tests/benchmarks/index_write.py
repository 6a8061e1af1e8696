"""Write-path benchmark of the index workload: rows/s of `Store.write_batch` (binary COPY with all
metadata columns, bookkeeping, one transaction per batch) vs bare psycopg binary COPY of the same
rows, in the same run, into the same throw-away PostgreSQL. Embeddings are precomputed.

    PYTHONPATH=operator/src:workloads/src:tests python tests/benchmarks/index_write.py --rows 20000

Prints rows/s of both, their ratio and verified row counts. (The peer libraries, langchain-postgres
and LlamaIndex, need a virtual environment of their own and are not measured here.)
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from substrate.postgres import Postgres
from tunerag_workloads.index.store import Store, WriteItem


def synthetic_rows(rows: int, dim: int, chunks_per_doc: int) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """The write benchmarks' rows (the same in every script, seeded): unit vectors, chunk texts,
    their sha256 and document names."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"chunk {i} " + "lorem ipsum dolor sit amet " * 30 for i in range(rows)]
    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    docs = [f"doc{i // chunks_per_doc:06d}.md" for i in range(rows)]
    return vectors, texts, hashes, docs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunks-per-doc", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2000, help="rows per transaction")
    args = parser.parse_args()
    vectors, texts, hashes, docs = synthetic_rows(args.rows, args.dim, args.chunks_per_doc)

    with Postgres() as pg:
        uri = pg.create_database("bench")
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            conn.execute(f"CREATE TABLE bare (document text, chunk_index int, content text, metadata jsonb, "
                         f"content_hash text, embedding vector({args.dim}))")
            t = time.perf_counter()
            for start in range(0, args.rows, args.batch):
                with conn.transaction(), conn.cursor() as cur, cur.copy(
                        "COPY bare FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "int4", "text", "jsonb", "text", "vector"])
                    for i in range(start, min(start + args.batch, args.rows)):
                        copy.write_row((docs[i], i % args.chunks_per_doc, texts[i], Jsonb({"document": docs[i]}), hashes[i], vectors[i]))
            bare_s = time.perf_counter() - t
            bare_rows = conn.execute("SELECT count(*) FROM bare").fetchone()[0]

            store = Store(conn, "public", "bench")
            store.prepare()
            version, _ = store.target("f" * 16, {"model": "bench"}, args.dim)
            t = time.perf_counter()
            per_batch_docs = max(1, args.batch // args.chunks_per_doc)
            doc_names = sorted(set(docs))
            for d0 in range(0, len(doc_names), per_batch_docs):
                items = []
                for n, name in enumerate(doc_names[d0:d0 + per_batch_docs], d0):
                    first = n * args.chunks_per_doc
                    idx = range(first, min(first + args.chunks_per_doc, args.rows))
                    rows = [(i % args.chunks_per_doc, texts[i], {"document": name, "chunkIndex": i % args.chunks_per_doc,
                                                                "headingPath": ["A", "B"], "format": "markdown"}, hashes[i]) for i in idx]
                    items.append(WriteItem(name, "h", "markdown", rows, vectors[idx.start:idx.stop]))
                store.write_batch(version, items)
            ours_s = time.perf_counter() - t
            ours_rows = store.counts(version)[1]
            t = time.perf_counter()
            store.ensure_indexes(version, "cosine", {"type": "hnsw", "m": 16, "efConstruction": 64})
            index_s = time.perf_counter() - t

    assert bare_rows == args.rows and ours_rows == args.rows, (bare_rows, ours_rows)
    print(f"rows={args.rows} dim={args.dim} batch={args.batch}")
    print(f"bare binary COPY        {args.rows / bare_s:10.0f} rows/s  ({bare_s:.2f}s, {bare_rows} rows)")
    print(f"tunerag write_batch     {args.rows / ours_s:10.0f} rows/s  ({ours_s:.2f}s, {ours_rows} rows)")
    print(f"ratio                   {bare_s / ours_s:10.2f}x of bare COPY")
    print(f"HNSW + GIN index build  {index_s:10.2f}s")


if __name__ == "__main__":
    main()
