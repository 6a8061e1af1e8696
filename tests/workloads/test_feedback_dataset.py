"""The feedback-to-dataset workload (tunerag_workloads.feedback_dataset) against a real PostgreSQL:
an exchange log created by the serving workload's own DDL, rows as it writes them, the dataset
written to a file:// artifact store and read back."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.feedback_dataset import mix
from tunerag_workloads.feedback_dataset.build import build, build_main, parse_request, read_feedback
from tunerag_workloads.finetune.publish import build_manifest
from workloads import feedback_log
from workloads import finetune_fixtures as ff
from workloads.feedback_log import create_log

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def insert(uri: str, rows: list[dict[str, Any]]) -> None:
    feedback_log.insert(uri, rows, now=NOW)


def qa(i: int, **extra: Any) -> dict[str, Any]:
    return {"question": f"what color is thing {i} ?", "answer": f" color {i % 4}", **extra}


def request(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    original = ff.write_rows(tmp_path / "original" / "train.jsonl",
                             [{"prompt": f"original question {i}", "completion": f" answer {i}"} for i in range(60)])
    base = {"table": {"schema": "public", "table": "feedback"}, "namespace": "ns", "services": ["qa", "qa-b"],
            "labels": ["positive"], "asOf": NOW.isoformat(), "mixRatio": 0.5, "holdoutFraction": 0.25, "seed": 3,
            "original": {"uri": f"file://{original}", "format": "jsonl"},
            "output": {"uri": f"file://{tmp_path}/store", "prefix": "datasets/ns-sched"}}
    return {**base, **overrides}


def run(uri: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    req = parse_request(request(tmp_path, **overrides))
    return build(req, read_feedback(uri, req))


def jsonl(uri: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(uri.removeprefix("file://")).read_text().splitlines()]


def test_filters_dedup_drop_fields_mix_and_holdout(pg_database: str, tmp_path: Path) -> None:
    create_log(pg_database)
    insert(pg_database, [qa(i) for i in range(20)])
    insert(pg_database, [
        # the same exchange content again (case and spaces differ), labelled later: one row remains
        {"question": "What  color is THING 3 ?", "answer": " color 3", "prompt": "Context: secret\nQuestion: what color is thing 3 ?",
         "feedback_at": NOW - dt.timedelta(minutes=5)},
        qa(100, feedback_label="negative"),                             # another label
        qa(101, feedback_label=None, feedback_at=None),                 # no feedback
        qa(102, service="other"),                                       # another service
        qa(103, namespace="elsewhere"),                                 # another namespace
        qa(104, service="qa-b"),                                        # the A/B twin: included
        qa(105, feedback_at=NOW + dt.timedelta(minutes=1)),             # labelled after asOf
        qa(106, created_at=NOW - dt.timedelta(days=40)),                # older than maxAge
        qa(107, answer="   "),                                          # an empty answer
    ])
    # An original row equal to a feedback row is not mixed in (it could be a held-out row).
    result = run(pg_database, tmp_path, maxAgeSeconds=30 * 86400, dropFields=["feedback_comment", "question"])
    counts = result["counts"]
    assert counts["read"] == 23 and counts["duplicate"] == 1 and counts["empty"] == 1
    rows = result["rows"]
    train, validation = jsonl(result["trainUri"]), jsonl(result["validationUri"])
    fb_train = [r for r in train if r["source"] == "feedback"]
    assert rows["feedback"] == len(fb_train) and rows["original"] == len(train) - len(fb_train)
    assert rows["original"] == rows["feedback"]  # mixRatio 0.5
    assert rows["feedback"] + rows["validationFeedback"] == 21  # 20 + the A/B twin's row
    assert 0 < rows["validationFeedback"] < 21 and rows["validationOriginal"] == rows["validationFeedback"]
    # The prompt is what the model saw; dropped fields are gone, the rest is provenance.
    row = fb_train[0]
    assert row["prompt"].startswith("Context: secret\nQuestion: ") and row["completion"].startswith(" color")
    assert set(row["exchange"]) == set(mix.COLUMNS) - {"feedback_comment", "question", "prompt"}
    assert not any("Alice" in json.dumps(r) for r in train + validation)
    assert row["exchange"]["adapter_version"] == "qa-v1" and row["exchange"]["created_at"].endswith("Z")
    # The newest of the duplicates was kept, and the watermark is the newest feedback read.
    assert result["watermark"] == "2026-03-01T11:55:00Z"
    keys = [mix.normalize(r["prompt"]) + mix.normalize(r["completion"]) for r in train + validation]
    assert len(keys) == len(set(keys))
    # Versioned by content: the folder is named by its digest, which the manifest recomputes.
    folder = Path(result["uri"].removeprefix("file://"))
    assert result["digest"] == f"sha256:{folder.name}" == f"sha256:{build_manifest(folder)['sha256']}"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rows"] == rows and manifest["dropFields"] == ["feedback_comment", "question"]
    assert folder.parent == tmp_path / "store" / "datasets" / "ns-sched"

    # The same feedback gives the same dataset (a retried pod, a run on unchanged data).
    again = run(pg_database, tmp_path, maxAgeSeconds=30 * 86400, dropFields=["feedback_comment", "question"])
    assert again["digest"] == result["digest"] and len(list(folder.parent.iterdir())) == 1


def test_filters_by_adapter_version_label_and_question_as_prompt(pg_database: str, tmp_path: Path) -> None:
    create_log(pg_database)
    insert(pg_database, [qa(i, adapter_version="qa-v1") for i in range(6)] + [qa(i, adapter_version="qa-v2") for i in range(6, 12)]
           + [qa(i, feedback_label="negative") for i in range(12, 14)])
    result = run(pg_database, tmp_path, adapterVersions=["qa-v2"], labels=["positive", "negative"], promptField="question",
                 mixRatio=1.0)
    rows = jsonl(result["trainUri"]) + jsonl(result["validationUri"])
    assert {r["exchange"]["adapter_version"] for r in rows} == {"qa-v2"} and len(rows) == 6
    assert all(r["source"] == "feedback" and r["prompt"].startswith("what color") for r in rows)
    assert "prompt" in rows[0]["exchange"] and "question" not in rows[0]["exchange"]  # the full prompt stays as provenance
    assert result["rows"]["original"] == 0 and result["counts"]["originalRead"] == 0  # mixRatio 1: feedback only


def test_the_holdout_is_stable_as_feedback_grows(pg_database: str, tmp_path: Path) -> None:
    create_log(pg_database)
    insert(pg_database, [qa(i) for i in range(30)])
    first = run(pg_database, tmp_path)
    insert(pg_database, [qa(i) for i in range(30, 80)])
    second = run(pg_database, tmp_path)
    assert second["digest"] != first["digest"]

    def feedback_keys(uri: str) -> set[str]:
        return {r["prompt"] for r in jsonl(uri) if r["source"] == "feedback"}

    held_before = feedback_keys(first["validationUri"])
    assert held_before <= feedback_keys(second["validationUri"])  # still held out
    assert not held_before & feedback_keys(second["trainUri"])  # never trained on later


def test_answers_of_the_baseline_do_not_validate_it(pg_database: str, tmp_path: Path) -> None:
    create_log(pg_database)
    insert(pg_database, [qa(i, adapter_version="qa-v1") for i in range(40)] + [qa(i, adapter_version="qa-v0") for i in range(40, 60)])
    result = run(pg_database, tmp_path, baselineVersion="qa-v1")
    validation = jsonl(result["validationUri"])
    versions = {r["exchange"]["adapter_version"] for r in validation if r["source"] == "feedback"}
    assert versions == {"qa-v0"} and result["counts"]["heldOutFromBaseline"] > 0
    assert any(r["source"] == "original" for r in validation)
    trained = {r["prompt"] for r in jsonl(result["trainUri"])}
    assert not trained & {r["prompt"] for r in validation}
    # Held-out answers of the baseline stay out of training too.
    everything = run(pg_database, tmp_path / "all")
    held = {r["prompt"] for r in jsonl(everything["validationUri"]) if r["source"] == "feedback"}
    assert not held & trained


def test_too_little_original_data_keeps_the_ratio_with_the_newest_feedback(pg_database: str, tmp_path: Path) -> None:
    create_log(pg_database)
    insert(pg_database, [qa(i, feedback_at=NOW - dt.timedelta(minutes=60 - i)) for i in range(40)])
    small = ff.write_rows(tmp_path / "small.jsonl", [{"prompt": f"original {i}", "completion": " x"} for i in range(8)])
    result = run(pg_database, tmp_path, mixRatio=0.75, original={"uri": f"file://{small}"})
    rows, counts = result["rows"], result["counts"]
    assert rows["feedback"] == 3 * rows["original"] and counts["droppedForRatio"] > 0
    ages = [r["exchange"]["feedback_at"] for r in jsonl(result["trainUri"]) if r["source"] == "feedback"]
    assert min(ages) > "2026-03-01T11:20:00Z"  # the newest were kept


def test_nothing_to_train_on_is_skipped(pg_database: str, tmp_path: Path) -> None:
    assert run(pg_database, tmp_path)["reason"] == "NotEnoughFeedback"  # the log's table does not exist yet
    create_log(pg_database)
    insert(pg_database, [qa(1)])
    result = run(pg_database, tmp_path)
    assert result["skipped"] and result["reason"] == "NotEnoughFeedback" and result["watermark"] == "2026-03-01T11:30:00Z"
    assert not (tmp_path / "store").exists()


def test_pure_mix_arithmetic() -> None:
    counts = mix.Counts()
    fb = mix.feedback_rows([{"prompt": f"q{i}", "answer": f"a{i}", "adapter_version": "v1"} for i in range(100)],
                           "prompt", set(), counts)
    orig = mix.original_rows([{"p": f"o{i}", "c": "x"} for i in range(1000)] + [{"p": 1, "c": "x"}, "junk"], "p", "c", counts)
    assert counts.original_unusable == 2
    out = mix.mix(fb, orig, ratio=0.2, holdout_fraction=0.1, seed=1, counts=counts)
    rows = out.rows()
    assert rows["original"] == 4 * rows["feedback"] and rows["feedback"] + rows["validationFeedback"] == 100
    assert mix.mix(fb, orig, ratio=0.2, holdout_fraction=0.1, seed=1, counts=mix.Counts()).train == out.train
    assert mix.mix(fb, orig, ratio=0.2, holdout_fraction=0.1, seed=2, counts=mix.Counts()).train != out.train
    # Two rows: one trains, one validates, whatever the hash says.
    kept, held = mix.split(fb[:2], 0.05)
    assert len(kept) == len(held) == 1


def test_cli_result_and_an_unreachable_database_never_shows_its_uri(pg_database: str, tmp_path: Path) -> None:
    create_log(pg_database)
    insert(pg_database, [qa(i) for i in range(10)])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "FineTuneSchedule", "namespace": "ns", "name": "sched", "spec": request(tmp_path)}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("workloads/src", "tests")),
           "TUNERAG_RESULT_PATH": str(tmp_path / "result.json"), "TUNERAG_DB_URI": pg_database}
    done = subprocess.run([sys.executable, "-m", "tunerag_workloads.feedback_dataset", str(spec)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] and result["digest"].startswith("sha256:") and len(json.dumps(result)) < 4096

    secret = "postgresql://tunerag:s3cr3t-pw@127.0.0.1:1/nodb"
    env |= {"TUNERAG_DB_URI": secret, "TUNERAG_DB_CONNECT_BUDGET_SECONDS": "1"}
    done = subprocess.run([sys.executable, "-m", "tunerag_workloads.feedback_dataset", str(spec)], env=env,
                          capture_output=True, text=True, timeout=120)
    result = json.loads((tmp_path / "result.json").read_text())
    assert done.returncode == 2 and result["reason"] == "DatabaseUnreachable"
    assert "s3cr3t" not in done.stdout + done.stderr + json.dumps(result)


def test_a_bad_request_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="not valid"):
        build_main({"spec": {**request(tmp_path), "table": {"table": "Robert'); DROP TABLE x;--"}}})
    with pytest.raises(WorkloadError):
        parse_request({**request(tmp_path), "output": {"uri": "file:///x", "prefix": "../../etc"}})
