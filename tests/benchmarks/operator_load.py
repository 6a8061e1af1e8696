"""Operator load benchmark: N resources of each kind across 10 namespaces on the local control plane.

    python tests/benchmarks/operator_load.py [--per-kind 1000] [--namespaces 10]

Prints the operator's RSS idle and loaded, p50/p95/max time from create to first status
(status.observedGeneration set), and the creation rate the client reached. A benchmark, not a test:
it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from kubernetes import client, config, watch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import GROUP, VERSION

SPECS: dict[str, dict[str, Any]] = {
    "finetunejobs": {
        "baseModel": {"uri": "file:///models/base"}, "adapter": {"family": "bench"},
        "dataset": {"train": {"uri": "file:///data/train.jsonl"}}, "output": {"uri": "file:///artifacts"},
    },
    "adapterversions": {
        "family": "bench", "version": 1, "baseModel": {"uri": "file:///models/base"},
        "artifact": {"uri": "file:///artifacts/bench/1", "sha256": "b" * 64},
    },
    "vectorindexes": {
        "source": {"uri": "file:///docs"},
        "store": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "docs"},
    },
    "rolloutpolicies": {
        "target": {"inferenceService": "svc", "baseModel": "file:///models/base"},
        "adapterSelector": {"family": "bench"},
    },
}
KINDS = {"finetunejobs": "FineTuneJob", "adapterversions": "AdapterVersion", "vectorindexes": "VectorIndex",
         "rolloutpolicies": "RolloutPolicy"}


def contextlib_suppress_stream(stream: Any) -> Any:
    """Ends quietly when the API server goes away at the end of the run."""
    try:
        yield from stream
    except Exception:
        return


def rss_mib(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-kind", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunerag-bench-"))
    cp = ControlPlane(work / "cp")
    cp.start()
    op = OperatorProcess(cp.kubeconfig, work / "operator.log")
    try:
        api = config.new_client_from_config(str(cp.kubeconfig))
        api.configuration.connection_pool_maxsize = 16
        kube.install_crds(api, kube.crd_documents(include_kserve=False))
        namespaces = [f"bench-{i}" for i in range(args.namespaces)]
        core = client.CoreV1Api(api)
        for ns in namespaces:
            kube.create_namespace(api, ns)
            core.create_namespaced_secret(ns, {"metadata": {"name": "db"}, "stringData": {"uri": "postgresql://x"}})
        op.start()
        assert op.proc is not None
        time.sleep(5)
        idle = rss_mib(op.proc.pid)

        created: dict[tuple[str, str, str], float] = {}
        statused: dict[tuple[str, str, str], float] = {}
        total = args.per_kind * len(SPECS)
        done = threading.Event()

        def watch_kind(plural: str) -> None:
            w = watch.Watch()
            custom = client.CustomObjectsApi(config.new_client_from_config(str(cp.kubeconfig)))
            stream = w.stream(custom.list_cluster_custom_object, GROUP, VERSION, plural, timeout_seconds=900)
            for ev in contextlib_suppress_stream(stream):
                obj = ev["object"]
                key = (plural, obj["metadata"]["namespace"], obj["metadata"]["name"])
                if obj.get("status", {}).get("observedGeneration") and key not in statused:
                    statused[key] = time.monotonic()
                    if len(statused) >= total:
                        done.set()
                if done.is_set():
                    w.stop()

        watchers = [threading.Thread(target=watch_kind, args=(p,), daemon=True) for p in SPECS]
        for t in watchers:
            t.start()
        time.sleep(1)
        custom = client.CustomObjectsApi(api)

        def create(i: int, plural: str) -> None:
            ns = namespaces[i % len(namespaces)]
            name = f"{plural[:3]}-{i}"
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KINDS[plural], "metadata": {"name": name},
                    "spec": SPECS[plural]}
            created[(plural, ns, name)] = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            for i in range(args.per_kind):
                for plural in SPECS:
                    pool.submit(create, i, plural)
        create_seconds = time.monotonic() - t0
        peak = idle
        deadline = time.monotonic() + 900
        while not done.is_set() and time.monotonic() < deadline:
            peak = max(peak, rss_mib(op.proc.pid))
            done.wait(1)
        all_seconds = time.monotonic() - t0
        time.sleep(5)
        loaded = rss_mib(op.proc.pid)
        latencies = sorted(statused[k] - created[k] for k in statused if k in created)
        print(f"resources: {len(statused)}/{total} got a status ({args.per_kind} per kind, {args.namespaces} namespaces)")
        print(f"creation: {total / create_seconds:.0f}/s; all statused after {all_seconds:.1f}s")
        print(f"create -> first status: p50 {percentile(latencies, 50):.2f}s  p95 {percentile(latencies, 95):.2f}s  "
              f"max {latencies[-1]:.2f}s")
        print(f"operator RSS: idle {idle:.0f} MiB, peak {peak:.0f} MiB, loaded and settled {loaded:.0f} MiB")
        return 0 if len(statused) == total else 1
    finally:
        op.stop()
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
