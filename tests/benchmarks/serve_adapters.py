"""Multi-adapter cost of the serving workload: throughput and latency with 1, 2 and 4 LoRA adapters
loaded, requests spread round-robin over the loaded adapters, at a fixed client concurrency; 4
loaded with every request on one of them; and, for reference, the base model alone (`model: base`,
the LoRA layers switched off).

Three real servers (`python -m tunerag_workloads.serve`, the tiny Llama of
`finetune_fixtures.cached_model()`, real peft LoRA adapters r=8 on every projection, as
`serve_fixtures.make_adapter` makes them), started together, measured one after the other in
`--rounds` rounds whose order rotates, so a busy spell of the machine does not land on one of them.
The adapters are separate folders and separate peft adapters, but by default with the same weights
(one seed): every configuration then generates the same tokens for the same prompt (greedy decoding
stops at EOS, and random adapters reach it after different numbers of tokens), so the rows differ
only by the handling of the adapters. `--distinct` gives each its own weights.

    PYTHONPATH=operator/src:workloads/src:tests python tests/benchmarks/serve_adapters.py [--requests 48] [--rounds 3]

Prints requests/s, generated tokens/s, p50/p95 latency (client side) and the server process's CPU
time per request (user + system: steadier than the wall clock on a shared machine) of each, with
ratios vs 1 adapter. The server generates under one lock (peft's active adapter is global), so the client
concurrency only keeps it busy. It calls peft's `set_adapter` on every request, with one adapter
too, and peft computes only the active adapter, so the rows differ by what the adapters loaded
beside the active one cost. A benchmark: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import machine
from substrate.controlplane import free_port
from workloads import finetune_fixtures as ff
from workloads import serve_fixtures as sf

PROMPTS = ["color of apple ?", "count : one two", "the cat sat on", "what color is plum ?",
           "name the color : ruby", "a dog ran in", "count : four five six", "tell me the color of sky"]


@dataclass
class Result:
    label: str
    latencies: list[float] = field(default_factory=list)
    tokens_out: int = 0
    wall: float = 0.0
    cpu: float = 0.0  # the server process's user + system seconds

    @property
    def requests(self) -> int:
        return len(self.latencies)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def cpu_seconds(server: sf.Server) -> float:
    assert server.proc is not None
    times = psutil.Process(server.proc.pid).cpu_times()
    return float(times.user + times.system)


def burst(server: sf.Server, models: list[str], requests: int, concurrency: int, max_tokens: int, into: Result) -> None:
    """`requests` completions, request i on models[i % len(models)], from `concurrency` threads
    (one keep-alive connection each)."""
    base_url = str(server.ready().base_url)
    local = threading.local()
    lock = threading.Lock()

    def one(i: int) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base_url, timeout=120)
        t = time.perf_counter()
        response = local.client.post("/v1/completions", json={
            "model": models[i % len(models)], "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens})
        seconds = time.perf_counter() - t
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
        with lock:
            into.latencies.append(seconds)
            into.tokens_out += int(response.json()["usage"]["completion_tokens"])

    cpu, t = cpu_seconds(server), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(one, i) for i in range(requests)]:
            f.result()
    into.wall += time.perf_counter() - t
    into.cpu += cpu_seconds(server) - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48, help="requests per configuration per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--distinct", action="store_true", help="each adapter with its own random weights")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]

    work = Path(tempfile.mkdtemp(prefix="tunerag-bench-adapters-"))
    base = ff.cached_model()
    adapters = [{"name": f"qa-v{i}", "uri": f"file://{work / f'qa-v{i}'}", "sha256": sf.make_adapter(base, work / f"qa-v{i}", i if args.distinct else 1)}
                for i in range(1, 5)]
    generation = {"maxNewTokens": args.max_tokens}
    servers = {n: sf.Server(f"adapters-{n}", sf.serve_config(base, adapters[:n], generation=generation), free_port(), work / "logs")
               for n in (1, 2, 4)}
    for server in servers.values():
        server.start()
    try:
        for server in servers.values():
            server.ready()
        # (label, server, the models its requests name)
        configs = [(f"{n} loaded, {n} used", servers[n], [a["name"] for a in adapters[:n]]) for n in (1, 2, 4)]
        configs.append(("4 loaded, 1 used", servers[4], [adapters[0]["name"]]))
        configs.append(("base (no adapter)", servers[1], ["base"]))  # LoRA switched off: peft's disable_adapter
        results = {label: Result(label) for label, _, _ in configs}
        for label, server, models in configs:  # warm-up: every adapter once, untimed
            burst(server, models, max(len(models), args.concurrency), args.concurrency, args.max_tokens, Result(label))
        for r in range(args.rounds):
            for label, server, models in configs[r % len(configs):] + configs[:r % len(configs)]:
                burst(server, models, args.requests, args.concurrency, args.max_tokens, results[label])
    finally:
        for server in servers.values():
            server.stop()
    shutil.rmtree(work, ignore_errors=True)

    one = results[configs[0][0]]
    print(f"{args.rounds} rounds x {args.requests} requests per configuration, {args.concurrency} client threads, "
          f"max_tokens {args.max_tokens}, tiny Llama (finetune_fixtures.cached_model), LoRA r=8 on all projections, "
          f"{'distinct' if args.distinct else 'identical'} adapter weights")
    print(f"{'adapters':18}{'req/s':>8}{'tok/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'tok/req':>8}{'CPU ms/req':>11}"
          f"{'req/s vs 1':>12}{'p50 vs 1':>10}{'p95 vs 1':>10}{'CPU vs 1':>10}")
    for res in results.values():
        rps, tps = res.requests / res.wall, res.tokens_out / res.wall
        p50, p95 = percentile(res.latencies, 50), percentile(res.latencies, 95)
        print(f"{res.label:18}{rps:8.2f}{tps:8.1f}{p50 * 1000:9.1f}{p95 * 1000:9.1f}{res.tokens_out / res.requests:8.1f}"
              f"{res.cpu / res.requests * 1000:11.1f}"
              f"{rps / (one.requests / one.wall):11.2f}x{p50 / percentile(one.latencies, 50):9.2f}x"
              f"{p95 / percentile(one.latencies, 95):9.2f}x{res.cpu / res.requests / (one.cpu / one.requests):9.2f}x")
    print(machine.summary(load_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
