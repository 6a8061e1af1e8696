"""FineTuneSchedule end to end on CPU: the operator counts a RolloutPolicy's exchange log in real
PostgreSQL, runs the feedback-to-dataset Job and the FineTuneJob through the Job harness, and the
new AdapterVersion goes to the RolloutPolicy. The first test closes the whole loop through a
served model (KServe harness); the others fill the exchange log with SQL and pin the policy to a
version that never exists, so nothing is served and no KServe is needed.

Training is the tiny model for a few steps: each run takes seconds."""

from __future__ import annotations

import base64
import datetime as dt
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.serving_kit import FAMILY, ask, av_phase, base_model, get, make_adapter, post, register, wait_status
from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from substrate.prometheus import Prometheus
from tunerag_operator.api.common import GROUP, VERSION
from workloads import finetune_fixtures as ff
from workloads.feedback_log import create_log, insert

QUICK = {"training": {"maxSteps": 8, "learningRate": 5e-3, "checkpointInterval": 100},
         "dataset": {"rules": {"minRows": 4, "maxTokens": 64}}, "gates": {"maxRetentionRegression": 3.0}}


def _create(api: client.ApiClient, namespace: str, plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec})


def _secret(api: client.ApiClient, namespace: str, uri: str) -> None:
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": "db"}, "data": {"uri": base64.b64encode(uri.encode()).decode()}})


def _template(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The color task as the original data, family qa, a few steps; no exact-match gate (the
    feedback answers are the served model's, not the task's labels)."""
    spec = ff.base_spec(base_model(), tmp_path / "data", tmp_path / "out",
                        **ff.deep_merge(ff.deep_merge(QUICK, {"adapter": {"family": FAMILY}}), overrides))
    spec["gates"].pop("minExactMatch")
    spec["dataset"].pop("validation")
    return spec


def _schedule(api: client.ApiClient, namespace: str, tmp_path: Path, template: dict[str, Any] | None = None,
              **spec: Any) -> None:
    body = {"checkInterval": "1s", "feedback": {"rolloutPolicy": "qa", "holdoutFraction": 0.25, "mixRatio": 0.3},
            "template": template or _template(tmp_path), **spec}
    _create(api, namespace, "finetuneschedules", "FineTuneSchedule", "sched", body)


def _offline_policy(api: client.ApiClient, namespace: str) -> None:
    """A RolloutPolicy that logs to the `feedback` table and never serves (pinned to a version that
    does not exist): the feedback source of the schedule tests without KServe."""
    _create(api, namespace, "rolloutpolicies", "RolloutPolicy", "qa", {
        "target": {"inferenceService": "qa", "baseModel": f"file://{base_model()}"},
        "adapterSelector": {"family": FAMILY, "version": 999},
        "feedback": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "feedback"}})


def _status(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    return get(api, namespace, "finetuneschedules", "sched").get("status") or {}


def _wait(api: client.ApiClient, namespace: str, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        last = _status(api, namespace)
        return last if predicate(last) else None

    try:
        return wait_for(check, timeout, what, interval=0.3)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; status: {last}") from None


def _color_rows(n: int, start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    """Feedback rows written now, in namespace-agnostic form (the caller sets the namespace)."""
    rows = ff.task_rows(seed=11)[start:start + n]
    now = dt.datetime.now(dt.UTC)
    return [{"question": r["prompt"], "prompt": r["prompt"], "answer": r["completion"], "created_at": now,
             "feedback_at": now, **extra} for r in rows]


def _history(status: dict[str, Any], run: str) -> dict[str, Any] | None:
    return next((h for h in status.get("history") or [] if h["run"] == run), None)


def _jobs(api: client.ApiClient, namespace: str) -> list[str]:
    return sorted(j.metadata.name for j in client.BatchV1Api(api).list_namespaced_job(namespace).items)


# ---------------------------------------------------------------------------------------- the loop

def test_feedback_to_a_new_version_in_canary(
    operator: OperatorProcess, job_runner: JobRunner, kserve: Any, prometheus: Prometheus,
    api: client.ApiClient, namespace: str, pg_database: str, tmp_path: Path,
) -> None:
    """Served answers get feedback through the service; crossing minNewSamples starts a run whose
    dataset holds those exchanges; the run beats the serving version on the held-out slice, its
    AdapterVersion is Validated and the RolloutPolicy takes it as its canary."""
    client.CoreV1Api(api).create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "artifacts"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    _secret(api, namespace, pg_database)
    rel = f"runs/{namespace}-qa-1/adapter"
    v1 = register(api, namespace, 1, f"pvc://artifacts/{rel}", make_adapter(job_runner.claim_path(namespace, "artifacts") / rel, 1))
    _create(api, namespace, "rolloutpolicies", "RolloutPolicy", "qa", {
        "target": {"inferenceService": "qa", "baseModel": f"file://{base_model()}", "maxNewTokens": 8},
        "adapterSelector": {"family": FAMILY},
        "feedback": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "feedback"},
        "strategy": {"type": "canary", "canary": {"steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]}},
    })
    wait_status(api, namespace, "qa", lambda s: s.get("stable") == v1 and s.get("phase") == "Promoted", 240, "v1 serving")
    _schedule(api, namespace, tmp_path, minNewSamples=6)
    _wait(api, namespace, lambda s: s.get("phase") == "Idle" and s.get("newSamples") == 0, 60, "the schedule idle")

    url = wait_for(lambda: (client.CustomObjectsApi(api).get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", namespace, "inferenceservices", "qa").get("status") or {}).get("url"), 60, "the URL")
    questions = [r["prompt"] for r in ff.task_rows(seed=11)[:6]]

    def feedback(question: str) -> None:
        code, answer = ask(url, question)
        assert code == 200, answer
        exchange = answer["tunerag"]["exchangeId"]
        assert post(f"{url}/v1/feedback", {"exchangeId": exchange, "label": "positive"})[0] == 202

    for q in questions[:5]:
        feedback(q)
    below = _wait(api, namespace, lambda s: s.get("newSamples") == 5, 60, "5 new samples counted")
    assert below["runs"] == 0 and "active" not in below
    crossed = dt.datetime.now(dt.UTC)
    feedback(questions[5])
    started = _wait(api, namespace, lambda s: s.get("active"), 60, "a run to start")
    assert started["active"]["trigger"] == "Threshold" and started["active"]["baseline"] == v1
    done = _wait(api, namespace, lambda s: _history(s, "sched-1"), 300, "the run to finish")
    record = _history(done, "sched-1")
    assert record is not None and record["outcome"] == "Succeeded", record
    v2 = record["adapterVersion"]
    assert v2 == f"{FAMILY}-v2"

    # The new version names its data, was compared with v1, and the rollout begins.
    av = get(api, namespace, "adapterversions", v2)
    ftj = get(api, namespace, "finetunejobs", "sched-1")
    assert av["spec"]["lineage"]["fineTuneJob"] == "sched-1"
    assert av["spec"]["lineage"]["datasets"]["train"] == ftj["spec"]["dataset"]["train"]["uri"]
    assert record["datasetDigest"].removeprefix("sha256:") in av["spec"]["lineage"]["datasets"]["train"]
    gate = next(g for g in av["spec"]["gates"] if g["name"] == "minBaselineImprovement")
    assert gate["passed"] and ftj["spec"]["gates"]["baseline"]["adapterVersion"] == v1
    train = Path(ftj["spec"]["dataset"]["train"]["uri"].removeprefix("file://"))
    logged = [line for line in train.read_text().splitlines() if '"source": "feedback"' in line]
    assert logged and all(f'"adapter_version": "{v1}"' in line for line in logged)
    canary = wait_status(api, namespace, "qa", lambda s: s.get("candidate") == v2 and s.get("canaryWeight") == 50,
                         240, "v2 at its first canary step")
    assert canary["stable"] == v1 and av_phase(api, namespace, v2) == "Canary"
    data_job = client.BatchV1Api(api).read_namespaced_job("sched-1-data", namespace).status
    marks = [("trigger", started["active"]["startedAt"]), ("dataset", data_job.completion_time),
             ("training", ftj["status"]["completionTime"]), ("registration", av["metadata"]["creationTimestamp"]),
             ("rollout start", canary["rolloutStartedAt"]), ("canary at 50%", dt.datetime.now(dt.UTC))]
    last, parts = crossed, []
    for stage, mark in marks:
        at = mark if isinstance(mark, dt.datetime) else dt.datetime.fromisoformat(mark.replace("Z", "+00:00"))
        parts.append(f"{stage} {max((at - last).total_seconds(), 0):.0f}s")
        last = at
    print(f"\nthreshold crossed -> canary at 50%: {(last - crossed).total_seconds():.0f}s ({', '.join(parts)})")


# ------------------------------------------------------------------------------- each on its own

def test_a_cron_schedule_alone_starts_runs_and_skips_unchanged_data(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str,
    tmp_path: Path,
) -> None:
    _secret(api, namespace, pg_database)
    _offline_policy(api, namespace)
    create_log(pg_database)
    insert(pg_database, _color_rows(12, namespace=namespace))
    _schedule(api, namespace, tmp_path, schedule="* * * * *")
    first = _wait(api, namespace, lambda s: s.get("active"), 75, "the cron schedule to start a run")
    assert first["active"]["trigger"] == "Schedule" and first["lastScheduleTime"].endswith(":00Z")
    assert first["nextScheduleTime"] > first["lastScheduleTime"]
    done = _wait(api, namespace, lambda s: _history(s, "sched-1") and not s.get("active"), 300, "run 1 to finish")
    record = _history(done, "sched-1")
    assert record is not None and record["outcome"] == "Succeeded" and record["adapterVersion"] == f"{FAMILY}-v1", record
    # The next minute's run finds the same feedback: nothing new to train on.
    later = _wait(api, namespace, lambda s: _history(s, "sched-2") and not s.get("active"), 150, "run 2")
    second = _history(later, "sched-2")
    assert second is not None and second["outcome"] == "Skipped" and second["reason"].startswith("DatasetUnchanged")
    assert second["datasetDigest"] == record["datasetDigest"]
    assert [f["metadata"]["name"] for f in client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "finetunejobs")["items"]] == ["sched-1"]


def test_threshold_no_overlap_and_a_failed_run_does_not_block_the_next(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str,
    tmp_path: Path,
) -> None:
    _secret(api, namespace, pg_database)
    _offline_policy(api, namespace)
    create_log(pg_database)
    broken = _template(tmp_path, dataset={"train": {"uri": f"file://{tmp_path}/missing.jsonl"}})
    _schedule(api, namespace, tmp_path, template=broken, minNewSamples=6)

    insert(pg_database, _color_rows(5, namespace=namespace))
    below = _wait(api, namespace, lambda s: s.get("newSamples") == 5, 60, "5 new samples")
    time.sleep(2)
    assert _status(api, namespace)["runs"] == 0 and below.get("phase") == "Idle"

    # The threshold starts run 1; its original data is missing, so it fails.
    insert(pg_database, _color_rows(1, start=5, namespace=namespace))
    failed = _wait(api, namespace, lambda s: _history(s, "sched-1"), 120, "run 1 to fail")
    record = _history(failed, "sched-1")
    assert record is not None and record["outcome"] == "Failed" and "DatasetNotFound" in record["reason"], record
    assert failed["consecutiveFailures"] == 1 and failed["newSamples"] >= 6  # the data was not consumed

    # Fixed, the next run starts after a short back-off, without waiting for new feedback.
    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, "finetuneschedules", "sched", {
        "spec": {"template": {"dataset": {"train": {"uri": f"file://{tmp_path}/data/train.jsonl"}}}}})
    training = _wait(api, namespace, lambda s: (s.get("active") or {}).get("stage") == "Training", 120, "run 2 training")
    assert training["active"]["run"] == "sched-2" and training["watermark"] and training["newSamples"] == 0

    # More feedback while run 2 trains starts nothing until it has finished.
    insert(pg_database, _color_rows(8, start=10, namespace=namespace))
    while (status := _status(api, namespace)).get("active", {}).get("run") == "sched-2":
        assert "sched-3-data" not in _jobs(api, namespace), "a second run started while one was active"
        time.sleep(0.3)
    done = _history(status, "sched-2")
    assert done is not None and done["outcome"] == "Succeeded", status
    third = _wait(api, namespace, lambda s: _history(s, "sched-3") and not s.get("active"), 300, "run 3")
    created = client.BatchV1Api(api).read_namespaced_job("sched-3-data", namespace).metadata.creation_timestamp
    assert created.strftime("%Y-%m-%dT%H:%M:%SZ") >= done["time"]
    assert _history(third, "sched-3")["trigger"] == "Threshold"  # type: ignore[index]
    assert third["consecutiveFailures"] == 0 and third["runs"] == 3


def test_an_operator_restart_between_trigger_and_run_starts_it_once(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str,
    tmp_path: Path,
) -> None:
    _secret(api, namespace, pg_database)
    _offline_policy(api, namespace)
    create_log(pg_database)
    _schedule(api, namespace, tmp_path, minNewSamples=4)
    _wait(api, namespace, lambda s: s.get("phase") == "Idle", 60, "the schedule idle")
    insert(pg_database, _color_rows(6, namespace=namespace))
    _wait(api, namespace, lambda s: s.get("active"), 60, "the trigger")
    operator.stop()
    try:
        time.sleep(1)
    finally:
        operator.start()
    done = _wait(api, namespace, lambda s: _history(s, "sched-1") and not s.get("active"), 300, "the run to finish")
    assert _history(done, "sched-1")["outcome"] == "Succeeded" and done["runs"] == 1  # type: ignore[index]
    assert [j for j in _jobs(api, namespace) if j.startswith("sched-")] == ["sched-1-data", "sched-1-g1"]
    versions = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions")
    assert [v["metadata"]["name"] for v in versions["items"]] == [f"{FAMILY}-v1"]


def test_a_missing_policy_and_an_unreachable_database_are_reported_and_never_show_the_uri(
    operator: OperatorProcess, api: client.ApiClient, namespace: str, tmp_path: Path,
) -> None:
    _schedule(api, namespace, tmp_path, minNewSamples=10)

    def condition(type_: str) -> dict[str, Any]:
        return next((c for c in _status(api, namespace).get("conditions") or [] if c["type"] == type_), {})

    wait_for(lambda: condition("Accepted").get("reason") == "RolloutPolicyNotFound", 60, "RolloutPolicyNotFound")
    assert "spec.feedback.rolloutPolicy" in condition("Accepted")["message"]
    password = "n0t-f0r-y0ur-eyes"
    _secret(api, namespace, f"postgresql://tunerag:{password}@127.0.0.1:9/feedback")  # nothing listens on port 9
    _offline_policy(api, namespace)
    wait_for(lambda: condition("Ready").get("reason") == "DatabaseUnreachable", 90, "DatabaseUnreachable")
    status = _status(api, namespace)
    assert condition("Accepted")["status"] == "True" and status["phase"] == "Idle" and status.get("runs", 0) == 0
    assert "connection refused" in condition("Ready")["message"] and "Secret db" in condition("Ready")["message"]
    events = [f"{e.reason} {e.message}" for e in client.CoreV1Api(api).list_namespaced_event(namespace).items]
    assert any(e.startswith("DatabaseUnreachable") for e in events)
    assert password not in str(status) + " ".join(events) and "127.0.0.1:9" not in str(status)
    assert password not in operator.log_path.read_text()
