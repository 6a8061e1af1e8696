"""One peer library's write path, run by `index_peers.py` inside the peer virtual environment
(`tests/benchmarks/peer_venvs.sh index`: langchain-postgres, llama-index-vector-stores-postgres).

    <bench-index venv>/bin/python tests/benchmarks/index_peers_worker.py --which lc_pgvector \
        --uri postgresql://... --data /tmp/x.npz --batch 2000

Writes the rows of `--data` (vectors, texts, documents, metadata) with the library's own API in
batches of `--batch`, without an ANN index (none of the paths builds one while loading), and prints
one JSON line: {"which", "seconds", "table"}. Setup (tables, collections) is not timed.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np


def with_driver(uri: str, driver: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit((f"postgresql+{driver}", *parts[1:]))


class NoEmbeddings:
    """The embedding service the stores require; never called (embeddings are precomputed)."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise AssertionError("precomputed embeddings only")

    def embed_query(self, text: str) -> list[float]:
        raise AssertionError("precomputed embeddings only")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--which", required=True, choices=["lc_pgvector", "lc_pgvectorstore", "llamaindex"])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=0, help="write only the first N rows (0: all)")
    args = parser.parse_args()
    data = np.load(args.data, allow_pickle=False)
    vectors = data["vectors"]
    meta = json.loads(str(data["meta"]))
    texts: list[str] = meta["texts"]
    metadatas: list[dict[str, Any]] = meta["metadatas"]
    n = min(len(texts), args.limit or len(texts))
    batches = [range(s, min(s + args.batch, n)) for s in range(0, n, args.batch)]

    if args.which == "lc_pgvector":
        from langchain_core.embeddings import Embeddings
        from langchain_postgres import PGVector

        class LcNone(NoEmbeddings, Embeddings):
            pass

        store = PGVector(LcNone(), connection=with_driver(args.uri, "psycopg"), embedding_length=vectors.shape[1],
                         collection_name="bench", use_jsonb=True)
        t = time.perf_counter()
        for b in batches:
            store.add_embeddings([texts[i] for i in b], vectors[b.start:b.stop].tolist(), [metadatas[i] for i in b])
        seconds = time.perf_counter() - t
        table = "langchain_pg_embedding"
    elif args.which == "lc_pgvectorstore":
        from langchain_core.embeddings import Embeddings
        from langchain_postgres import PGEngine, PGVectorStore

        class LcNone2(NoEmbeddings, Embeddings):
            pass

        engine = PGEngine.from_connection_string(with_driver(args.uri, "psycopg"))
        engine.init_vectorstore_table("lc_v2", vectors.shape[1])
        vs = PGVectorStore.create_sync(engine, LcNone2(), "lc_v2")
        t = time.perf_counter()
        for b in batches:
            vs.add_embeddings([texts[i] for i in b], vectors[b.start:b.stop].tolist(), [metadatas[i] for i in b])
        seconds = time.perf_counter() - t
        table = "lc_v2"
    else:
        from llama_index.core.schema import TextNode
        from llama_index.vector_stores.postgres import PGVectorStore as LiStore

        li = LiStore.from_params(connection_string=with_driver(args.uri, "psycopg2"),
                                 async_connection_string=with_driver(args.uri, "asyncpg"),
                                 table_name="bench", embed_dim=vectors.shape[1], use_jsonb=True)
        t = time.perf_counter()
        for b in batches:
            li.add([TextNode(text=texts[i], metadata=metadatas[i], embedding=vectors[i].tolist()) for i in b])
        seconds = time.perf_counter() - t
        table = "data_bench"
    print(json.dumps({"which": args.which, "seconds": seconds, "table": table, "rows": n}), flush=True)


if __name__ == "__main__":
    main()
