"""Operator load benchmark: N resources of each of the five kinds across 10 namespaces on the local
control plane.

    python tests/benchmarks/operator_load.py [--per-kind 1000] [--namespaces 10] [--idle 60]

Prints the operator's RSS idle and loaded, p50/p95/max time from create to first status
(status.observedGeneration set), the creation rate the client reached, what status every resource
reached (phase and Accepted reason, against what each kind is expected to reach here: no Job
runs, so runs stay pending), and from the API server's audit log the operator's requests per
resource by verb, then its requests during `--idle` seconds after everything settled (an idle
operator must make no writes: no hot loop). The load generator's requests are told apart by their
User-Agent. A benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
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
    "finetuneschedules": {
        "schedule": "0 3 * * *", "feedback": {"rolloutPolicy": "rol-0"},
        "template": {"baseModel": {"uri": "file:///models/base"}, "adapter": {"family": "bench"},
                     "dataset": {"train": {"uri": "file:///data/train.jsonl"}}, "output": {"uri": "file:///artifacts"}},
    },
}
KINDS = {"finetunejobs": "FineTuneJob", "adapterversions": "AdapterVersion", "vectorindexes": "VectorIndex",
         "rolloutpolicies": "RolloutPolicy", "finetuneschedules": "FineTuneSchedule"}
BENCH_AGENT = "tunerag-bench"
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def contextlib_suppress_stream(stream: Any) -> Any:
    """Ends quietly when the API server goes away at the end of the run."""
    try:
        yield from stream
    except Exception:
        return


# What each kind reaches here: the specs reference what exists (the Secret) and what does not
# (files, an InferenceService, KServe's CRDs), and no Job runs.
# A schedule names `rol-0`, which lives in the first namespace only and logs no feedback.
EXPECTED: dict[str, set[tuple[str, str]]] = {
    "finetunejobs": {("Pending", "Accepted")},
    "adapterversions": {("Pending", "Accepted")},
    "vectorindexes": {("Indexing", "Accepted")},
    "rolloutpolicies": {("Idle", "Accepted")},
    "finetuneschedules": {("Pending", "FeedbackNotConfigured"), ("Pending", "RolloutPolicyNotFound")},
}


def client_for(cp: ControlPlane) -> client.ApiClient:
    api = config.new_client_from_config(str(cp.kubeconfig))
    api.user_agent = BENCH_AGENT
    return api


def outcomes(custom: client.CustomObjectsApi, namespaces: list[str]) -> collections.Counter[tuple[str, str, str]]:
    reached: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for plural in SPECS:
        for ns in namespaces:
            for obj in custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]:
                status = obj.get("status") or {}
                accepted: dict[str, Any] = next((c for c in status.get("conditions") or [] if c["type"] == "Accepted"), {})
                reached[(plural, str(status.get("phase")), str(accepted.get("reason")))] += 1
    return reached


def operator_requests(audit_log: Path, start: float, settled: float, idle_until: float
                      ) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """The operator's requests (not the load generator's) from `start` to `settled` by verb, and
    from `settled` to `idle_until` by verb and resource."""
    during: collections.Counter[str] = collections.Counter()
    idle: collections.Counter[str] = collections.Counter()
    with audit_log.open() as f:
        for line in f:
            event = json.loads(line)
            if event.get("userAgent", "").startswith(BENCH_AGENT) or event["user"]["username"].startswith("system:"):
                continue
            at = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", "")) + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            if start <= at < settled:
                during[event["verb"]] += 1
            elif settled <= at < idle_until:
                idle[f"{event['verb']} {resource}"] += 1
    return during, idle


def rss_mib(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-kind", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--settle", type=float, default=30, help="seconds after all statused before the idle window")
    parser.add_argument("--idle", type=float, default=60, help="seconds of the idle window")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunerag-bench-"))
    # Metadata-level audit of every request but the API server's own and the health probes.
    cp = ControlPlane(work / "cp", audit_rules=[
        {"level": "None", "users": ["system:apiserver"]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version", "/openapi*"]},
        {"level": "Metadata"}])
    cp.start()
    op = OperatorProcess(cp.kubeconfig, work / "operator.log")
    try:
        api = client_for(cp)
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
            custom = client.CustomObjectsApi(client_for(cp))
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

        t0, t0_wall = time.monotonic(), time.time()
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
        time.sleep(max(args.settle - 5, 0))  # runs started, conditions written: the operator has settled
        settled_at = time.time()
        time.sleep(args.idle)
        idle_until = time.time()
        latencies = sorted(statused[k] - created[k] for k in statused if k in created)
        print(f"resources: {len(statused)}/{total} got a status ({args.per_kind} per kind, {args.namespaces} namespaces)")
        print(f"creation: {total / create_seconds:.0f}/s; all statused after {all_seconds:.1f}s")
        print(f"create -> first status: p50 {percentile(latencies, 50):.2f}s  p95 {percentile(latencies, 95):.2f}s  "
              f"max {latencies[-1]:.2f}s")
        print(f"operator RSS: idle {idle:.0f} MiB, peak {peak:.0f} MiB, loaded and settled {loaded:.0f} MiB")
        reached = outcomes(custom, namespaces)
        print("status reached (kind, phase, Accepted reason: count), expected marked with *:")
        unexpected = 0
        for (plural, phase, reason), count in sorted(reached.items()):
            ok = (phase, reason) in EXPECTED[plural]
            unexpected += 0 if ok else count
            print(f"  {'*' if ok else ' '} {KINDS[plural]:17} {phase:14} {reason:22} {count}")
        during, idle_requests = operator_requests(cp.audit_log, t0_wall, settled_at, idle_until)
        print(f"operator requests while loaded and settling ({len(statused)} resources): "
              f"{sum(during.values()) / max(len(statused), 1):.1f} per resource: "
              + ", ".join(f"{verb} {n / max(len(statused), 1):.2f}" for verb, n in during.most_common()))
        writes = {k: n for k, n in idle_requests.items() if k.split()[0] in WRITES}
        print(f"operator requests in the {args.idle} s idle window: {sum(idle_requests.values())} "
              f"({', '.join(f'{k} {n}' for k, n in idle_requests.most_common()) or 'none'}); writes: {sum(writes.values())}")
        print(f"load average: {os.getloadavg()}")
        return 0 if len(statused) == total and not unexpected else 1
    finally:
        op.stop()
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
