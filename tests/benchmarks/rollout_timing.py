"""Rollout timing: how long a RolloutPolicy takes to promote a healthy candidate, against
`interval x analysis steps x count` (the time its analysis must wait by design), and to roll back a
failing one, against `interval x (failureLimit + 1)`.

Everything real, started as the test fixtures start it (tests/conftest.py, substrate/fixtures.py):
a local control plane (etcd + kube-apiserver) with the tunerag and KServe CRDs, the operator as a
child process (TUNERAG_ROLLOUT_TICK=1), the JobRunner, the KServe harness (`KServeController`:
each predictor is the real serving workload on the tiny model, as a local process behind a
router), Debian's Prometheus scraping the predictors every second. The policy measures the
built-in error rate and p95 latency of the candidate from Prometheus while a client keeps traffic
flowing through the service (`e2e.serving_kit.Traffic`).

    PYTHONPATH=operator/src:workloads/src:tests python tests/benchmarks/rollout_timing.py \\
        [--interval 10] [--analysis-steps 3] [--count 1] [--failure-limit 1] [--mode Knative] [--settle 1]

The scenario: v1 is deployed (the first version, no canary); v2, healthy, goes through
`setWeight w1, analysis, setWeight w2, analysis, ..., setWeight 100` (weights evenly up to
100 - 100/(steps+1)) and is promoted; then the latency objective is made impossible (p95 under 0.1 ms) and v3 is rolled
back by its analysis. The policy's status is polled every 0.1 s; the times are when a change was
first seen. Prints a breakdown of each rollout and the ratios to the ideal. A benchmark: it
asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import machine
from e2e.serving_kit import FAMILY, Traffic, av_phase, base_model, get, make_adapter, register
from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.fixtures import runner_env
from substrate.jobrunner import JobRunner
from substrate.kserve import KServeController
from substrate.operatorproc import OperatorProcess
from substrate.prometheus import Prometheus
from tunerag_operator.api.common import GROUP, VERSION

NAMESPACE = "bench-rollout"
POLICY = "qa"
FIELDS = ("phase", "stable", "candidate", "currentStep", "canaryWeight", "promoting")


@dataclass
class Timeline:
    """The policy's status, polled: each change of FIELDS with the monotonic time it was seen."""

    api: client.ApiClient
    seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)

    def wait(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.status = get(self.api, NAMESPACE, "rolloutpolicies", POLICY).get("status") or {}
            now = time.monotonic()
            snap = {k: self.status.get(k) for k in FIELDS}
            if not self.seen or self.seen[-1][1] != snap:
                self.seen.append((now, snap))
            if predicate(self.status):
                return self.status
            time.sleep(0.1)
        raise TimeoutError(f"no {what} after {timeout:.0f}s; status: {json.dumps(self.status)[:3000]}")

    def first(self, since: float, what: str, predicate: Any) -> float:
        """When a snapshot satisfying `predicate` was first seen after `since`."""
        for t, snap in self.seen:
            if t >= since and predicate(snap):
                return t
        raise LookupError(f"never seen: {what}")

    def step(self, since: float, candidate: str, i: int) -> float:
        """When `candidate` was first seen at step `i` or later (a poll may miss a short step, and a
        pass may go through several steps, up to the promotion)."""
        return self.first(since, f"{candidate} at step {i}", lambda s: (s["candidate"] == candidate and (
            (s["currentStep"] or 0) >= i or bool(s["promoting"]))) or s["stable"] == candidate)


def policy(args: argparse.Namespace, prometheus: Prometheus, weights: list[int]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for w in weights:
        steps += [{"setWeight": w}, {"analysis": {}}]
    steps.append({"setWeight": 100})  # admission: canary weights must end at 100
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RolloutPolicy", "metadata": {"name": POLICY}, "spec": {
        "target": {"inferenceService": POLICY, "deploymentMode": args.mode, "baseModel": f"file://{base_model()}",
                   "maxNewTokens": 8},
        "adapterSelector": {"family": FAMILY},
        "strategy": {"type": "canary", "canary": {"steps": steps}},
        "analysis": {
            "interval": f"{args.interval:g}s", "count": args.count, "failureLimit": args.failure_limit,
            "progressDeadline": "10m", "prometheusAddress": prometheus.url,
            "metrics": [
                {"name": "error-rate", "builtin": "errorRate", "thresholdRange": {"max": 0.05}},
                {"name": "latency-p95", "builtin": "latencyP95", "thresholdRange": {"max": 30}},
            ],
        },
    }}


def adapter(runner: JobRunner, version: int) -> tuple[str, str]:
    rel = f"runs/{NAMESPACE}-qa-{version}/adapter"
    return f"pvc://artifacts/{rel}", make_adapter(runner.claim_path(NAMESPACE, "artifacts") / rel, seed=version)


def runs_of(status: dict[str, Any], candidate: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in status.get("analysisRuns") or []:
        if r["candidate"] == candidate:
            out[r["verdict"]] = out.get(r["verdict"], 0) + 1
    return out


def row(label: str, seconds: float, ideal: float | None = None) -> str:
    ratio = f"{seconds / ideal:6.2f}x of {ideal:g}s" if ideal else ""
    return f"  {label:58}{seconds:7.1f}s  {ratio}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=10, help="analysis interval, seconds")
    parser.add_argument("--analysis-steps", type=int, default=3)
    parser.add_argument("--count", type=int, default=1, help="passing measurements per analysis step")
    parser.add_argument("--failure-limit", type=int, default=1)
    parser.add_argument("--mode", choices=["Knative", "Standard"], default="Knative")
    parser.add_argument("--traffic-pause", type=float, default=0.1, help="seconds between the client's requests")
    parser.add_argument("--skip-rollback", action="store_true")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="TUNERAG_ROLLOUT_SETTLE: how long a pass waits for KServe after moving traffic (0: not at all)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    n = args.analysis_steps
    weights = [round(100 * (k + 1) / (n + 1)) for k in range(n)]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tunerag-bench-rollout-"))
    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    cp = ControlPlane(work / "controlplane", bin_dir=Path(bin_dir) if bin_dir else None)
    op = OperatorProcess(cp.kubeconfig, work / "operator.log", extra_env={
        "TUNERAG_RETRY_DELAY": "2", "TUNERAG_PROGRESS_INTERVAL": "1", "TUNERAG_ROLLOUT_TICK": "1",
        "TUNERAG_ROLLOUT_RESYNC": "5", "TUNERAG_ROLLOUT_SETTLE": str(args.settle)})
    traffic: Traffic | None = None
    with contextlib.ExitStack() as stack:
        t = time.monotonic()
        cp.start()
        stack.callback(cp.stop)
        api = config.new_client_from_config(str(cp.kubeconfig))
        kube.install_crds(api, kube.crd_documents())  # tunerag's and KServe's
        prometheus = stack.enter_context(Prometheus(work / "prometheus"))
        runner = stack.enter_context(JobRunner(api, workdir=work / "jobrunner", env_overrides=runner_env()))
        stack.enter_context(KServeController(api, runner, prometheus=prometheus, workdir=work / "kserve"))
        op.start()
        stack.callback(op.stop)
        print(f"substrate up in {time.monotonic() - t:.0f}s (work folder {work})", flush=True)

        kube.create_namespace(api, NAMESPACE)
        client.CoreV1Api(api).create_namespaced_persistent_volume_claim(NAMESPACE, {
            "metadata": {"name": "artifacts"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
        adapters = {v: adapter(runner, v) for v in (1, 2, 3)}
        timeline = Timeline(api)
        t = time.monotonic()
        v1 = register(api, NAMESPACE, 1, *adapters[1])
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "rolloutpolicies",
                                                                     policy(args, prometheus, weights))
        timeline.wait(lambda s: s.get("stable") == v1 and s.get("phase") == "Promoted", 600, "v1 deployed")
        v1_s = time.monotonic() - t
        print(f"v1 deployed (first version, no canary) in {v1_s:.1f}s", flush=True)

        traffic = Traffic(api, NAMESPACE, POLICY, pause=args.traffic_pause).start()
        stack.callback(traffic.stop)
        time.sleep(3)  # Prometheus has v1's series and the client is in its stride

        # -- promotion of a healthy candidate
        traffic.reset()
        t_reg = time.monotonic()
        v2 = register(api, NAMESPACE, 2, *adapters[2])
        done = timeline.wait(lambda s: s.get("stable") == v2 and s.get("phase") == "Promoted", 900, "v2 promoted")
        t_start = timeline.first(t_reg, "v2's rollout", lambda s: s["candidate"] == v2)
        marks = [timeline.step(t_reg, v2, i) for i in range(1, 2 * n + 2)]
        t_promoting = timeline.first(t_reg, "v2 promoting", lambda s: (s["candidate"] == v2 and s["promoting"]) or s["stable"] == v2)
        t_done = timeline.first(t_reg, "v2 promoted", lambda s: s["stable"] == v2 and s["phase"] == "Promoted")
        promote_traffic = (dict(traffic.by_version), len(traffic.failures))
        v2_runs = runs_of(done, v2)
        ideal = args.interval * n * args.count

        # -- rollback of a failing candidate
        if not args.skip_rollback:
            body = get(api, NAMESPACE, "rolloutpolicies", POLICY)
            metrics = body["spec"]["analysis"]["metrics"]
            metrics[1]["thresholdRange"] = {"max": 0.0001}  # a p95 of 0.1 ms: no generation meets it
            client.CustomObjectsApi(api).patch_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "rolloutpolicies", POLICY, {"spec": {"analysis": {"metrics": metrics}}})
            traffic.reset()
            r_reg = time.monotonic()
            v3 = register(api, NAMESPACE, 3, *adapters[3])
            back = timeline.wait(lambda s: s.get("phase") == "RolledBack" and (s.get("history") or [{}])[-1].get("candidate") == v3,
                                 900, "v3 rolled back")
            r_start = timeline.first(r_reg, "v3's rollout", lambda s: s["candidate"] == v3)
            r_analysis = timeline.step(r_reg, v3, 1)
            r_done = timeline.first(r_reg, "v3 rolled back", lambda s: s["phase"] == "RolledBack")
            time.sleep(2)
            rollback_traffic = (dict(traffic.by_version), len(traffic.failures))
            reason = back["history"][-1]["reason"]
            v3_runs = runs_of(back, v3)
            v3_phase = av_phase(api, NAMESPACE, v3)
        traffic.stop()

    print()
    print(f"mode {args.mode}, interval {args.interval:g}s, {n} analysis steps at {', '.join(f'{w}%' for w in weights)}, "
          f"count {args.count}, failureLimit {args.failure_limit}, operator tick 1s, Prometheus scrape 1s")
    print(f"promotion of a healthy candidate ({v2}), ideal interval x steps x count = {ideal:g}s:")
    print(row("registered -> rollout started (operator sees it)", t_start - t_reg))
    print(row(f"rollout started -> candidate serving at {weights[0]}% (process start)", marks[0] - t_start))
    for k in range(n):
        step_start = marks[2 * k]
        print(row(f"analysis at {weights[k]}% (step {2 * k + 2})", marks[2 * k + 1] - step_start, args.interval * args.count))
        nxt = weights[k + 1] if k + 1 < n else 100
        print(row(f"shift to {nxt}% (step {2 * k + 3})", marks[2 * k + 2] - marks[2 * k + 1]))
    print(row("all steps passed -> promoting", t_promoting - marks[-1]))
    print(row("promoting -> Promoted (KServe serves it alone)", t_done - t_promoting))
    print(row(f"candidate serving at {weights[0]}% -> Promoted", t_done - marks[0], ideal))
    print(row("rollout started -> Promoted", t_done - t_start, ideal))
    print(row("registered -> Promoted", t_done - t_reg, ideal))
    print(f"  analysis runs {v2_runs}; requests answered during it {promote_traffic[0]}, failed {promote_traffic[1]}")
    if not args.skip_rollback:
        ideal_back = args.interval * (args.failure_limit + 1)
        print(f"rollback of a failing candidate ({v3}: latency objective p95 < 0.1 ms), "
              f"ideal interval x (failureLimit + 1) = {ideal_back:g}s:")
        print(row("registered -> rollout started", r_start - r_reg))
        print(row(f"rollout started -> candidate serving at {weights[0]}% (process start)", r_analysis - r_start))
        print(row(f"candidate serving at {weights[0]}% (analysis starts) -> RolledBack", r_done - r_analysis, ideal_back))
        print(row("rollout started -> RolledBack", r_done - r_start, ideal_back))
        print(row("registered -> RolledBack", r_done - r_reg, ideal_back))
        print(f"  analysis runs {v3_runs}; reason {reason[:90]!r}; {v3} is {v3_phase}; "
              f"requests answered during it {rollback_traffic[0]}, failed {rollback_traffic[1]}")
    print(f"(v1's first deployment took {v1_s:.1f}s: operator, first predictor start)")
    print(machine.summary(load_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
