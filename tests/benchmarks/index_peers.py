"""Write path of the index workload vs peer libraries, same rows, same throw-away PostgreSQL.

Rows/s of writing the same precomputed vectors (as `index_write.py`: 20k x 384, unit-normalized,
~180-word texts, 10 chunks per document, the same metadata for every path) with:

- tunerag `Store.write_batch` (binary COPY with all columns, bookkeeping, one transaction per batch)
- bare psycopg binary COPY (the floor)
- langchain-postgres `PGVector.add_embeddings` (SQLAlchemy, psycopg 3, multi-row INSERT ... ON CONFLICT)
- langchain-postgres `PGVectorStore.add_embeddings` (the v2 store, one INSERT per row)
- LlamaIndex `PGVectorStore.add` (llama-index-vector-stores-postgres, SQLAlchemy ORM, psycopg2)

The peers run in their own virtual environment (`tests/benchmarks/peer_venvs.sh index`: they pin
pgvector<0.4), one subprocess each (`index_peers_worker.py`), against the same server. No path
builds an ANN index while loading; langchain's PGVectorStore writes one row per statement and
commit, so it writes only the first `--pgvectorstore-rows` rows (its rows/s is over those); the workload's index build afterwards is timed apart. Batches of
`--batch` rows per call for every path. tunerag and bare COPY run first and again after every peer:
each peer's ratio is against the mean of the tunerag runs just before and after it (the machine is
shared, load drifts); tunerag vs bare COPY is given per pair. Row counts of every path are verified.

    tests/benchmarks/peer_venvs.sh index
    PYTHONPATH=operator/src:workloads/src:tests python tests/benchmarks/index_peers.py --rows 20000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.index_write import synthetic_rows
from benchmarks.machine import load
from substrate.postgres import Postgres
from tunerag_workloads.index.store import Store, WriteItem

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunks-per-doc", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2000, help="rows per transaction / call")
    parser.add_argument("--peers", nargs="*", default=["lc_pgvector", "lc_pgvectorstore", "llamaindex"])
    parser.add_argument("--pgvectorstore-rows", type=int, default=2000,
                        help="rows for langchain's PGVectorStore (one INSERT and commit per row: 20k take many minutes)")
    args = parser.parse_args()
    venv = subprocess.run([str(HERE / "peer_venvs.sh"), "index"], check=True, capture_output=True, text=True).stdout.strip()

    vectors, texts, hashes, docs = synthetic_rows(args.rows, args.dim, args.chunks_per_doc)
    metadatas: list[dict[str, Any]] = [{"document": docs[i], "chunkIndex": i % args.chunks_per_doc, "headingPath": ["A", "B"],
                                        "format": "markdown"} for i in range(args.rows)]
    work = Path(tempfile.mkdtemp(prefix="tunerag-bench-peers-"))
    data = work / "rows.npz"
    np.savez(data, vectors=vectors, meta=np.array(json.dumps({"texts": texts, "metadatas": metadatas})))

    seconds: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    rows_of: dict[str, int] = {}
    with Postgres() as pg:
        uri = pg.create_database("bench")
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)

            def bare(run: int) -> None:
                name = f"bare{run}"
                conn.execute(f"CREATE TABLE {name} (document text, chunk_index int, content text, metadata jsonb, "
                             f"content_hash text, embedding vector({args.dim}))")
                t = time.perf_counter()
                for start in range(0, args.rows, args.batch):
                    with conn.transaction(), conn.cursor() as cur, cur.copy(f"COPY {name} FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(["text", "int4", "text", "jsonb", "text", "vector"])
                        for i in range(start, min(start + args.batch, args.rows)):
                            copy.write_row((docs[i], i % args.chunks_per_doc, texts[i], Jsonb(metadatas[i]), hashes[i], vectors[i]))
                seconds.setdefault("bare binary COPY", []).append(time.perf_counter() - t)
                counts[f"bare binary COPY #{run}"] = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]  # type: ignore[index]

            def ours(run: int) -> None:
                store = Store(conn, "public", f"ours{run}")
                store.prepare()
                version, _ = store.target("f" * 16, {"model": "bench"}, args.dim)
                per_batch_docs = max(1, args.batch // args.chunks_per_doc)
                doc_names = sorted(set(docs))
                t = time.perf_counter()
                for d0 in range(0, len(doc_names), per_batch_docs):
                    items = []
                    for n, name in enumerate(doc_names[d0:d0 + per_batch_docs], d0):
                        first = n * args.chunks_per_doc
                        idx = range(first, min(first + args.chunks_per_doc, args.rows))
                        rows = [(i % args.chunks_per_doc, texts[i], metadatas[i], hashes[i]) for i in idx]
                        items.append(WriteItem(name, "h", "markdown", rows, vectors[idx.start:idx.stop]))
                    store.write_batch(version, items)
                seconds.setdefault("tunerag Store.write_batch", []).append(time.perf_counter() - t)
                counts[f"tunerag Store.write_batch #{run}"] = store.counts(version)[1]
                if run == 1:
                    t = time.perf_counter()
                    store.ensure_indexes(version, "cosine", {"type": "hnsw", "m": 16, "efConstruction": 64})
                    print(f"(tunerag HNSW + GIN index build after loading: {time.perf_counter() - t:.1f}s)", flush=True)

            print(f"rows={args.rows} dim={args.dim} batch={args.batch}; {load()}", flush=True)
            runs = 0

            def pair() -> None:
                nonlocal runs
                runs += 1
                bare(runs)
                ours(runs)
                print(f"  bare {seconds['bare binary COPY'][-1]:.2f}s, tunerag {seconds['tunerag Store.write_batch'][-1]:.2f}s; "
                      f"{load()}", flush=True)

            pair()
            beside: dict[str, tuple[float, float]] = {}  # peer: tunerag seconds of the runs just before and after
            labels = {"lc_pgvector": "langchain-postgres PGVector", "lc_pgvectorstore": "langchain-postgres PGVectorStore",
                      "llamaindex": "LlamaIndex PGVectorStore"}
            for which in args.peers:
                peer_db = pg.create_database(which)
                with psycopg.connect(peer_db, autocommit=True) as peer_conn:
                    peer_conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                out = subprocess.run([f"{venv}/bin/python", str(HERE / "index_peers_worker.py"), "--which", which, "--uri", peer_db,
                                      "--data", str(data), "--batch", str(args.batch),
                                      "--limit", str(args.pgvectorstore_rows if which == "lc_pgvectorstore" else 0)],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"  {which} failed:\n{out.stderr[-3000:]}", flush=True)
                    continue
                result = json.loads(out.stdout.strip().splitlines()[-1])
                seconds[labels[which]] = [result["seconds"]]
                rows_of[labels[which]] = result["rows"]
                with psycopg.connect(peer_db, autocommit=True) as peer_conn:
                    counts[labels[which]] = peer_conn.execute(f"SELECT count(*) FROM {result['table']}").fetchone()[0]  # type: ignore[index]
                print(f"  {labels[which]} {result['seconds']:.2f}s; {load()}", flush=True)
                before = seconds["tunerag Store.write_batch"][-1]
                pair()
                beside[labels[which]] = (before, seconds["tunerag Store.write_batch"][-1])

    print(f"\nrows={args.rows} dim={args.dim} batch={args.batch}; {load()}")
    pairs = [b / o for b, o in zip(seconds["bare binary COPY"], seconds["tunerag Store.write_batch"], strict=True)]
    for label, values in seconds.items():
        best = min(values)
        spread = f" (runs: {', '.join(f'{v:.2f}s' for v in values)})" if len(values) > 1 else ""
        print(f"{label:34s} {rows_of.get(label, args.rows) / best:9.0f} rows/s  {rows_of.get(label, args.rows):6d} rows in "
              f"{best:7.2f}s (best){spread}")
    print(f"tunerag / bare COPY rows/s, each pair: {', '.join(f'{r:.2f}' for r in pairs)}")
    for label, (before, after) in beside.items():
        ours_rate = args.rows / ((before + after) / 2)
        rate = rows_of[label] / seconds[label][0]
        print(f"tunerag / {label}: {ours_rate / rate:.1f}x (tunerag runs just before and after it: {before:.2f}s, {after:.2f}s)")
    for label, count in counts.items():
        print(f"rows written by {label}: {count}")
    assert all(count == rows_of.get(label.split(" #")[0], args.rows) for label, count in counts.items()), counts


if __name__ == "__main__":
    main()
