"""What a FineTuneSchedule run creates (pure rendering), checked against the models and the
workload that read it, and the schedule's row in `kubectl tunerag status`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tunerag_operator.api.common import SecretKeyRef
from tunerag_operator.api.finetunejob import FineTuneJobSpec
from tunerag_operator.api.finetuneschedule import ActiveRun, FineTuneScheduleSpec
from tunerag_operator.cli.summary import summarize
from tunerag_operator.render.workload import Owner, config_map, job
from tunerag_operator.schedule import render
from tunerag_operator.schedule.controller import Pass, later
from tunerag_operator.schedule.source import Source
from tunerag_workloads.feedback_dataset.build import parse_request

SPEC = FineTuneScheduleSpec.model_validate({
    "minNewSamples": 50,
    "feedback": {"rolloutPolicy": "qa", "maxAge": "720h", "dropFields": ["feedback_comment"], "mixRatio": 0.3},
    "minImprovement": 0.05,
    "template": {"baseModel": {"uri": "pvc://models/base"}, "adapter": {"family": "qa"},
                 "dataset": {"train": {"uri": "pvc://data/train.csv", "format": "csv",
                                       "fields": {"prompt": "q", "completion": "a"}},
                             "validation": {"uri": "pvc://data/val.jsonl"}},
                 "training": {"seed": 7}, "output": {"uri": "s3://bucket/artifacts", "credentialsSecret": "s3"}},
})
OWNER = Owner("FineTuneSchedule", "sched", "ns", "uid-1", 3)
SOURCE = Source("qa", "logs", "feedback", SecretKeyRef(name="db", key="uri"), ("qa", "qa-b"), "qa-v4")
ACTIVE = ActiveRun(run="sched-12", number=12, trigger="Threshold", stage="Dataset", started_at="2026-03-01T12:00:00Z",
                   as_of="2026-03-01T12:00:00.250000Z", dataset_job="sched-12-data", baseline="qa-v4")


def test_the_dataset_job_is_what_the_workload_reads() -> None:
    run = render.dataset_run(SPEC, SOURCE, ACTIVE, OWNER, "img:1")
    rendered = job(run)
    assert rendered["metadata"]["name"] == "sched-12-data" == config_map(run)["metadata"]["name"]
    container = rendered["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "tunerag_workloads.feedback_dataset"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TUNERAG_DB_URI"]["valueFrom"] == {"secretKeyRef": {"name": "db", "key": "uri"}}
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in rendered["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"data"}  # the original data; the output is on s3
    req = parse_request(run.spec)
    assert (req.table.schema_, req.table.table, req.services) == ("logs", "feedback", ["qa", "qa-b"])
    assert req.max_age_seconds == 720 * 3600 and req.drop_fields == ["feedback_comment"] and req.mix_ratio == 0.3
    assert req.seed == 7 and req.baseline_version == "qa-v4"
    assert req.as_of == dt.datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)
    assert (req.original.uri, req.original.format, req.original.fields.prompt) == ("pvc://data/train.csv", "csv", "q")
    assert (req.output.uri, req.output.prefix) == ("s3://bucket/artifacts", "datasets/ns-sched")


def test_the_fine_tune_job_trains_on_the_dataset_against_the_baseline() -> None:
    result = {"uri": "s3://bucket/artifacts/datasets/ns-sched/abc", "trainUri": "s3://bucket/artifacts/datasets/ns-sched/abc/train.jsonl",
              "validationUri": "s3://bucket/artifacts/datasets/ns-sched/abc/validation.jsonl"}
    baseline: dict[str, Any] = {"metadata": {"name": "qa-v4"},
                                "spec": {"artifact": {"uri": "pvc://artifacts/runs/x/adapter", "sha256": "b" * 64}}}
    body = render.fine_tune_job(SPEC, ACTIVE, result, OWNER, baseline)
    assert body["metadata"]["name"] == "sched-12"
    assert body["metadata"]["labels"][render.SCHEDULE_LABEL] == "sched" and body["metadata"]["labels"][render.RUN_LABEL] == "12"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    spec = FineTuneJobSpec.model_validate(body["spec"])  # a valid FineTuneJob
    assert spec.dataset.train.uri == result["trainUri"] and spec.dataset.train.format == "jsonl"
    assert spec.dataset.train.fields.prompt == "prompt"  # the dataset's own fields, not the original's
    assert spec.dataset.validation is not None and spec.dataset.validation.uri == result["validationUri"]
    assert spec.gates.baseline is not None
    assert (spec.gates.baseline.adapter_version, spec.gates.baseline.sha256, spec.gates.baseline.min_improvement) == \
        ("qa-v4", "b" * 64, 0.05)
    assert spec.training.seed == 7 and spec.output.credentials_secret == "s3"
    assert "baseline" not in render.fine_tune_job(SPEC, ACTIVE, result, OWNER, None)["spec"]["gates"]


def _pass(status: dict[str, Any], now: dt.datetime) -> Pass:
    body = {"metadata": {"name": "sched", "namespace": "ns", "uid": "uid-1", "generation": 1,
                         "creationTimestamp": "2026-03-01T00:00:00Z"}, "status": status}
    return Pass(body, SPEC, [], "img", now)


def test_the_threshold_backs_off_after_failures() -> None:
    now = dt.datetime(2026, 3, 1, 12, 0, 30, tzinfo=dt.UTC)
    ended = {"history": [{"run": "sched-1", "outcome": "Failed", "time": "2026-03-01T12:00:00Z"}]}
    assert _pass({**ended, "consecutiveFailures": 0}, now).backing_off() is None
    assert _pass({**ended, "consecutiveFailures": 1}, now).backing_off() == "2026-03-01T12:02:00Z"  # 1m x 2
    assert _pass({**ended, "consecutiveFailures": 3}, now).backing_off() == "2026-03-01T12:08:00Z"  # 1m x 8
    assert _pass({**ended, "consecutiveFailures": 30}, now).backing_off() == "2026-03-01T13:00:00Z"  # at most an hour
    assert _pass({**ended, "consecutiveFailures": 1}, now + dt.timedelta(minutes=2)).backing_off() is None


def test_a_trigger_is_recorded_before_anything_is_created() -> None:
    p = _pass({"runs": 4, "newSamples": 60}, dt.datetime(2026, 3, 1, 12, 0, 30, 5, tzinfo=dt.UTC))
    p.start("Threshold", SOURCE)
    active = p.out.status["active"]
    assert p.out.status["runs"] == 5 and p.out.status["phase"] == "BuildingDataset"
    assert active == {"run": "sched-5", "number": 5, "trigger": "Threshold", "stage": "Dataset",
                      "startedAt": "2026-03-01T12:00:30Z", "asOf": "2026-03-01T12:00:30.000005Z",
                      "datasetJob": "sched-5-data", "baseline": "qa-v4", "rows": {}}
    assert p.out.events[0][0] == "RunStarted" and "qa-v4" in p.out.events[0][1]


def test_the_schedule_row_of_kubectl_tunerag_status() -> None:
    obj = {"kind": "FineTuneSchedule", "metadata": {"name": "sched", "namespace": "ns"}, "spec": {"minNewSamples": 50},
           "status": {"phase": "Idle", "newSamples": 7, "runs": 2, "nextScheduleTime": "2026-01-01T03:00:00Z",
                      "history": [{"run": "sched-2", "outcome": "Succeeded", "adapterVersion": "qa-v3"}]}}
    row = summarize(obj)
    assert (row.progress, row.details) == ("7/50 new samples", "last sched-2 Succeeded (qa-v3), next 2026-01-01T03:00:00Z")
    obj["status"]["active"] = {"run": "sched-3", "stage": "Training"}
    assert (summarize(obj).progress, summarize(obj).details) == ("run sched-3: training", "last sched-2 Succeeded (qa-v3)")


def test_the_watermark_never_moves_back() -> None:
    assert later("2026-03-01T12:00:00.5Z", "2026-03-01T12:00:00Z") == "2026-03-01T12:00:00.5Z"
    assert later("2026-03-01T11:00:00Z", "2026-03-01T12:00:00Z") == "2026-03-01T12:00:00Z"
    assert later(None, "2026-03-01T12:00:00Z") == "2026-03-01T12:00:00Z" and later(None, None) is None
