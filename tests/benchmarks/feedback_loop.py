"""Feedback loop timing (issue #7): from the feedback that crosses a FineTuneSchedule's
`minNewSamples` threshold to the new version's canary at its first step, and the share of each
stage: the trigger, the dataset Job, the fine-tune Job (training and validation apart),
registration, the rollout's start and the first canary step.

Everything real, started as the test fixtures start it (tests/conftest.py, substrate/fixtures.py):
a local control plane (etcd + kube-apiserver) with the tunerag and KServe CRDs, the operator as a
child process (schedule and rollout ticks `--tick`, progress every 1 s), the JobRunner, embedded
PostgreSQL (the exchange log), the KServe harness (each predictor is the real serving workload on
the tiny model, as a local process behind a router) and Debian's Prometheus.

    PYTHONPATH=operator/src:workloads/src:tests python tests/benchmarks/feedback_loop.py \\
        [--repeat 1] [--steps 8] [--threshold 6] [--check-interval 1] [--tick 1]

The scenario is the e2e test's (tests/e2e/test_finetune_schedule.py, the first test): v1 (a random
LoRA adapter) is deployed by a RolloutPolicy that logs its exchanges (canary steps `setWeight 50,
pause, setWeight 100`); a FineTuneSchedule over that log waits for `--threshold` new feedback rows
(the color task as its original data, `--steps` training steps, a baseline gate against the
serving version). `--threshold` - 1 questions are asked through the service's URL and each answer
gets a positive label (POST /v1/feedback); once the schedule has counted them, one more question is
asked and the clock starts when its feedback is posted. It stops when the candidate has passed its
first canary step (KServe routes 50% to it and it is ready: `status.currentStep` 1).

The stage boundaries are the times the system records, read after the loop: the schedule's
`status.active.asOf` (the pass that saw the threshold); the dataset Job's and the FineTuneJob's
creation, their pods' container start and end and their Jobs' completion; the kubelet's timestamps
on the workloads' `TUNERAG_PROGRESS` log lines (the dataset's ReadingFeedback and Building; the
fine-tune's ValidatingData, its data report, Training, Evaluating, Publishing and Succeeded); the
AdapterVersion's creation and Ready condition; the policy's `rolloutStartedAt` and its
`stepStartedAt` once at step 1. Only "canaryWeight 50 seen" is polled (every 0.3 s). Kubernetes
timestamps are whole seconds (truncated), so a stage is exact to about a second; a mark that comes
out before the one it follows is taken as equal to it. Each loop runs in a fresh namespace with a
fresh database (so each measures v1 -> v2); `--repeat` > 1 also prints the medians. A benchmark:
it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import machine
from e2e.serving_kit import FAMILY, ask, base_model, get, make_adapter, post_feedback, register, wait_status
from e2e.test_finetune_schedule import _create, _history, _schedule, _secret, _template, _wait
from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.fixtures import runner_env
from substrate.jobrunner import JobRunner
from substrate.kserve import KServeController
from substrate.operatorproc import OperatorProcess
from substrate.postgres import Postgres
from substrate.prometheus import Prometheus
from workloads import finetune_fixtures as ff

POLICY = "qa"  # the name test_finetune_schedule's helpers give the policy ("sched" the schedule)
WEIGHT = 50  # the first canary step
PHASES = ("ValidatingData", "dataReport", "Training", "Evaluating", "Publishing")


def parse_time(value: str) -> dt.datetime:
    """RFC 3339 with 0 to 9 fractional digits (the kubelet's log timestamps have nanoseconds)."""
    head, _, frac = value.removesuffix("Z").partition(".")
    out = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC)
    return out + dt.timedelta(microseconds=int((frac + "000000")[:6])) if frac else out


def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A read through the generated client as the API server's JSON (times stay strings)."""
    return json.loads(call(*args, _preload_content=False, **kwargs).data)  # type: ignore[no-any-return]


@dataclass
class Stage:
    """A stage of the loop: its end, and what happened inside it (each part ending at its time)."""

    name: str
    end: dt.datetime
    parts: list[tuple[str, dt.datetime]] = field(default_factory=list)


@dataclass
class Loop:
    namespace: str
    version: str
    stages: list[tuple[str, float, list[tuple[str, float]]]]  # name, seconds, parts
    total: float
    notes: list[str]


def measure(stages: list[Stage], start: dt.datetime) -> tuple[list[tuple[str, float, list[tuple[str, float]]]], float]:
    """Seconds of each stage and part, every mark taken no earlier than the one before it."""
    out: list[tuple[str, float, list[tuple[str, float]]]] = []
    last = start
    for stage in stages:
        begin, parts = last, []
        for name, at in stage.parts:
            at = max(at, last)
            parts.append((name, (at - last).total_seconds()))
            last = at
        last = max(stage.end, last)  # the parts end at the stage's end
        out.append((stage.name, (last - begin).total_seconds(), parts))
    return out, (last - start).total_seconds()


def pod_of(api: client.ApiClient, namespace: str, job: str) -> tuple[dict[str, Any], int]:
    """The Job's pod that succeeded (the newest one), and how many pods the Job ran."""
    pods = raw(client.CoreV1Api(api).list_namespaced_pod, namespace,
               label_selector=f"batch.kubernetes.io/job-name={job}")["items"]
    done = [p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"] or pods
    return max(done, key=lambda p: p["metadata"]["creationTimestamp"]), len(pods)


def container_times(pod: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    state = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0].get("state") or {}
    ended = state.get("terminated") or {}
    return parse_time(ended["startedAt"]), parse_time(ended["finishedAt"])


def progress_marks(api: client.ApiClient, namespace: str, pod: str) -> dict[str, dt.datetime]:
    """When the workload first reported each phase, from the kubelet's timestamps on its log;
    "first" and "last" are its first and last progress lines."""
    resp = client.CoreV1Api(api).read_namespaced_pod_log(pod, namespace, timestamps=True, _preload_content=False)
    marks: dict[str, dt.datetime] = {}
    for line in bytes(resp.data).decode(errors="replace").splitlines():
        stamp, _, text = line.partition(" ")
        if not text.startswith("TUNERAG_PROGRESS "):
            continue
        at, record = parse_time(stamp), json.loads(text.removeprefix("TUNERAG_PROGRESS "))
        marks.setdefault("first", at)
        marks["last"] = at
        if isinstance(record.get("phase"), str):
            marks.setdefault(record["phase"], at)
        if record.get("dataReport"):  # the data checked, before the model loads
            marks.setdefault("dataReport", at)
    return marks


def deploy(api: client.ApiClient, runner: JobRunner, pg: Postgres, namespace: str, folder: Path,
           args: argparse.Namespace) -> str:
    """The e2e test's set-up in `namespace`: v1 serving, a schedule over its exchange log, idle.
    Returns the service's URL."""
    kube.create_namespace(api, namespace)
    client.CoreV1Api(api).create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "artifacts"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    _secret(api, namespace, pg.create_database(namespace.replace("-", "_")))
    rel = f"runs/{namespace}-qa-1/adapter"
    v1 = register(api, namespace, 1, f"pvc://artifacts/{rel}", make_adapter(runner.claim_path(namespace, "artifacts") / rel, 1))
    _create(api, namespace, "rolloutpolicies", "RolloutPolicy", POLICY, {
        "target": {"inferenceService": POLICY, "baseModel": f"file://{base_model()}", "maxNewTokens": 8},
        "adapterSelector": {"family": FAMILY},
        "feedback": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "feedback"},
        "strategy": {"type": "canary", "canary": {"steps": [{"setWeight": WEIGHT}, {"pause": {}}, {"setWeight": 100}]}},
    })
    wait_status(api, namespace, POLICY, lambda s: s.get("stable") == v1 and s.get("phase") == "Promoted", 600, "v1 serving")
    template = _template(folder, training={"maxSteps": args.steps})
    _schedule(api, namespace, folder, template=template, minNewSamples=args.threshold,
              checkInterval=f"{args.check_interval:g}s")
    _wait(api, namespace, lambda s: s.get("phase") == "Idle" and s.get("newSamples") == 0, 120, "the schedule idle")
    url = kube.wait_for(lambda: (client.CustomObjectsApi(api).get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", namespace, "inferenceservices", POLICY).get("status") or {}).get("url"), 60, "the URL")
    return str(url)


def feedback(url: str, question: str) -> None:
    """Asks through the service and labels the answer positive: one new row for the schedule."""
    code, answer = ask(url, question)
    if code != 200:
        raise RuntimeError(f"the service answered {code}: {answer}")
    posted = post_feedback(url, answer["tunerag"]["exchangeId"], "positive")
    if posted[0] != 202:
        raise RuntimeError(f"feedback refused: {posted}")


def loop(api: client.ApiClient, runner: JobRunner, pg: Postgres, work: Path, number: int,
         args: argparse.Namespace) -> Loop:
    namespace = f"bench-feedback-{number}"
    t = time.monotonic()
    url = deploy(api, runner, pg, namespace, work / namespace, args)
    print(f"loop {number}: v1 serving and the schedule idle in {time.monotonic() - t:.0f}s ({namespace})", flush=True)

    questions = [r["prompt"] for r in ff.task_rows(seed=11)[:args.threshold]]
    for q in questions[:-1]:
        feedback(url, q)
    _wait(api, namespace, lambda s: s.get("newSamples") == args.threshold - 1, 120,
          f"{args.threshold - 1} new samples counted")
    code, answer = ask(url, questions[-1])
    if code != 200:
        raise RuntimeError(f"the service answered {code}: {answer}")
    crossed = dt.datetime.now(dt.UTC)
    if post_feedback(url, answer["tunerag"]["exchangeId"], "positive")[0] != 202:
        raise RuntimeError("the threshold-crossing feedback was refused")

    # Wait for the candidate's first canary step, keeping what only the live status shows: the
    # active run (gone from the status once it ends) and when the 50% weight was asked for.
    active: dict[str, Any] = {}
    weight_seen: dt.datetime | None = None
    deadline = time.monotonic() + args.timeout
    while True:
        schedule = get(api, namespace, "finetuneschedules", "sched").get("status") or {}
        active = schedule.get("active") or active
        record = _history(schedule, active.get("run", "")) if active else None
        if record is not None and record["outcome"] != "Succeeded":
            raise RuntimeError(f"run {record['run']} ended {record['outcome']}: {record.get('reason')}")
        policy = get(api, namespace, "rolloutpolicies", POLICY).get("status") or {}
        version = record.get("adapterVersion") if record else None
        if version and policy.get("candidate") == version:
            if weight_seen is None and (policy.get("canaryWeight") or 0) >= WEIGHT:
                weight_seen = dt.datetime.now(dt.UTC)
            if int(policy.get("currentStep") or 0) >= 1:
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no canary after {args.timeout:.0f}s; schedule {json.dumps(schedule)[:2000]}; "
                               f"policy {json.dumps(policy)[:2000]}")
        time.sleep(0.3)
    assert version is not None and record is not None

    batch = client.BatchV1Api(api)
    data_job = raw(batch.read_namespaced_job, active["datasetJob"], namespace)
    data_pod, data_pods = pod_of(api, namespace, active["datasetJob"])
    data_started, data_ended = container_times(data_pod)
    data_marks = progress_marks(api, namespace, data_pod["metadata"]["name"])
    ftj = get(api, namespace, "finetunejobs", active["run"])
    train_pod, train_pods = pod_of(api, namespace, ftj["status"]["jobName"])
    train_started, train_ended = container_times(train_pod)
    marks = progress_marks(api, namespace, train_pod["metadata"]["name"])
    av = get(api, namespace, "adapterversions", version)
    validated = next((c["lastTransitionTime"] for c in (av.get("status") or {}).get("conditions") or []
                      if c["type"] == "Ready" and c["status"] == "True"), None)
    t_ = parse_time
    stages = [
        Stage("trigger: threshold crossed -> run started (active.asOf)", t_(active["asOf"])),
        Stage(f"dataset Job ({active['datasetJob']} complete)", t_(data_job["status"]["completionTime"]), [
            ("run recorded -> Job created (next pass)", t_(data_job["metadata"]["creationTimestamp"])),
            ("Job created -> process started", data_started),
            ("process start-up (imports) -> first progress line", data_marks.get("first", data_started)),
            ("ReadingFeedback -> Building: read the exchange log", data_marks.get("last", data_started)),
            ("Building: mix, hold out, write the dataset; exit", data_ended),
            ("process exit -> Job complete", t_(data_job["status"]["completionTime"]))]),
        Stage(f"training + validation ({active['run']}'s Job complete)", t_(ftj["status"]["completionTime"]), [
            ("dataset built -> FineTuneJob created (next pass)", t_(ftj["metadata"]["creationTimestamp"])),
            ("FineTuneJob created -> process started", train_started),
            ("process start-up (imports) -> first progress line", marks["first"]),
            ("ValidatingData: baseline, tokenizer, data checks", marks.get("dataReport", marks["first"])),
            ("ValidatingData: model load", marks.get("Training", marks["first"])),
            (f"Training: {args.steps} steps", marks.get("Evaluating", marks["first"])),
            ("Evaluating: held-out, baseline, retention, gates", marks.get("Publishing", marks["first"])),
            ("Publishing: adapter, reports", marks["last"]),
            ("last progress line -> process exit", train_ended),
            ("process exit -> Job complete", t_(ftj["status"]["completionTime"]))]),
        Stage(f"registration ({version} created)", t_(av["metadata"]["creationTimestamp"])),
        Stage("rollout start (policy rolloutStartedAt)", t_(policy["rolloutStartedAt"]), [
            (f"{version} Validated (Ready condition)", t_(validated) if validated else t_(av["metadata"]["creationTimestamp"])),
            ("Validated -> the policy starts the rollout", t_(policy["rolloutStartedAt"]))]),
        Stage(f"first canary step ({WEIGHT}% routed, ready: stepStartedAt)", t_(policy["stepStartedAt"]), [
            (f"rollout started -> canaryWeight {WEIGHT} seen (polled at 0.3 s)", weight_seen or t_(policy["rolloutStartedAt"])),
            ("-> its predictor ready, KServe routes it the weight", t_(policy["stepStartedAt"]))]),
    ]
    measured, total = measure(stages, crossed)
    missing = [p for p in PHASES if p not in marks]
    rows, progress = active.get("rows") or {}, ftj["status"].get("progress") or {}
    notes = [f"dataset rows {rows}; trained {progress.get('step')}/{progress.get('totalSteps')} steps; "
             f"baselineImprovement {ftj['status'].get('metrics', {}).get('baselineImprovement')}; "
             f"pods: dataset {data_pods}, training {train_pods}"]
    if missing:
        notes.append(f"progress phases not in the log: {missing} (those parts show 0)")
    return Loop(namespace, version, measured, total, notes)


def report(number: int, result: Loop) -> None:
    print(f"\nloop {number} ({result.namespace}): threshold crossed -> {result.version} at its first canary step "
          f"({WEIGHT}%): {result.total:.1f}s")
    for name, seconds, parts in result.stages:
        print(f"  {name:66}{seconds:7.1f}s {100 * seconds / result.total:5.1f}%")
        for part, s in parts:
            print(f"      {part:62}{s:7.1f}s {100 * s / result.total:5.1f}%")
    for note in result.notes:
        print(f"  {note}")


def summary(results: list[Loop]) -> None:
    totals = [r.total for r in results]
    print(f"\nmedian of {len(results)} loops: {statistics.median(totals):.1f}s "
          f"(each: {', '.join(f'{t:.1f}' for t in totals)})")
    for i, (name, _, parts) in enumerate(results[0].stages):
        seconds = [r.stages[i][1] for r in results]
        shares = [100 * r.stages[i][1] / r.total for r in results]
        print(f"  {name:66}{statistics.median(seconds):7.1f}s {statistics.median(shares):5.1f}%")
        for j, (part, _) in enumerate(parts):
            s = [r.stages[i][2][j][1] for r in results]
            print(f"      {part:62}{statistics.median(s):7.1f}s "
                  f"{statistics.median(100 * r.stages[i][2][j][1] / r.total for r in results):5.1f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="loops, each in a fresh namespace")
    parser.add_argument("--steps", type=int, default=8, help="the FineTuneJob's training.maxSteps")
    parser.add_argument("--threshold", type=int, default=6, help="the schedule's minNewSamples")
    parser.add_argument("--check-interval", type=float, default=1, help="the schedule's checkInterval, seconds")
    parser.add_argument("--tick", type=float, default=1,
                        help="TUNERAG_SCHEDULE_TICK and TUNERAG_ROLLOUT_TICK, seconds (the product's default is 5)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for one loop, threshold to canary")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if not 1 <= args.threshold <= len(ff.task_rows()):
        parser.error("--threshold must be between 1 and 240 (the task's questions)")
    load_start = os.getloadavg()[0]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tunerag-bench-feedback-"))
    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    cp = ControlPlane(work / "controlplane", bin_dir=Path(bin_dir) if bin_dir else None)
    op = OperatorProcess(cp.kubeconfig, work / "operator.log", extra_env={
        "TUNERAG_RETRY_DELAY": "2", "TUNERAG_PROGRESS_INTERVAL": "1", "TUNERAG_ROLLOUT_TICK": f"{args.tick:g}",
        "TUNERAG_ROLLOUT_RESYNC": "5", "TUNERAG_SCHEDULE_TICK": f"{args.tick:g}", "TUNERAG_SCHEDULE_RECHECK": "5"})
    results: list[Loop] = []
    with contextlib.ExitStack() as stack:
        t = time.monotonic()
        cp.start()
        stack.callback(cp.stop)
        api = config.new_client_from_config(str(cp.kubeconfig))
        kube.install_crds(api, kube.crd_documents())  # tunerag's and KServe's
        pg = stack.enter_context(Postgres(work / "postgres"))
        prometheus = stack.enter_context(Prometheus(work / "prometheus"))
        runner = stack.enter_context(JobRunner(api, workdir=work / "jobrunner", env_overrides=runner_env()))
        stack.enter_context(KServeController(api, runner, prometheus=prometheus, workdir=work / "kserve"))
        op.start()
        stack.callback(op.stop)
        print(f"substrate up in {time.monotonic() - t:.0f}s (work folder {work})", flush=True)
        for number in range(1, args.repeat + 1):
            results.append(loop(api, runner, pg, work, number, args))
            report(number, results[-1])
            kube.delete_namespace(api, results[-1].namespace)  # the KServe harness stops its predictors

    print(f"\nthreshold {args.threshold}, maxSteps {args.steps}, checkInterval {args.check_interval:g}s, "
          f"schedule and rollout tick {args.tick:g}s, progress interval 1s, canary steps setWeight {WEIGHT}, pause, 100")
    if len(results) > 1:
        summary(results)
    print(machine.summary(load_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
