"""The run report (report.html) of a real FineTuneJob run on CPU, opened in headless Chromium.

One short run (40 steps of the color task, on training data with rows of every drop reason) is
shared by the module: its loss history is in report.json and in the checkpoints, a run resumed from
a checkpoint reports the same curves, and the page loads with no console warning or error (its
policy refuses anything from elsewhere), shows every section, and plots exactly the recorded
points, each inside its chart.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from substrate.chromium import CHARTS_JS, Chromium
from tunerag_operator.report import html
from tunerag_workloads.contract import PROGRESS_PREFIX
from tunerag_workloads.finetune import pipeline, run_pipeline
from tunerag_workloads.finetune.report import render_report
from tunerag_workloads.finetune.storage import Store
from workloads import finetune_fixtures as ff

STEPS = 40
SETTINGS = {"training": {"learningRate": 1e-3, "maxSteps": STEPS, "checkpointInterval": 20},
            "gates": {"minExactMatch": 0.3, "maxValidationLoss": 1.5, "maxRetentionRegression": 3.0}}
BAD_ROWS = [
    "{not json",                                                      # malformed
    json.dumps({"prompt": "color of x ?"}),                           # missingField
    json.dumps({"prompt": "color of <b>y</b> ?", "completion": 7}),   # notString (and markup to escape)
    json.dumps({"prompt": "apple " * 80, "completion": " red"}),      # tooLong (maxTokens 64)
]
SECTIONS = ["Summary", "Metrics and gates", "Loss curves", "Retention against the base model", "Data",
            "Hyper-parameters", "Lineage"]


@dataclass(frozen=True)
class Run:
    result: dict[str, Any]
    folder: Path
    report: dict[str, Any]
    data: dict[str, Any]
    spec: dict[str, Any]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def spec_in(root: Path) -> dict[str, Any]:
    spec = ff.base_spec(ff.cached_model(), root / "data", root / "out", **SETTINGS)
    train = root / "data" / "train.jsonl"
    train.write_text(train.read_text() + "\n".join(BAD_ROWS) + "\n" + train.read_text().splitlines()[0] + "\n")  # + a duplicate
    return spec


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("report-run")
    spec = spec_in(root)
    result = run_pipeline({"namespace": "ml", "name": "colors", "generation": 2, "spec": spec})
    folder = root / "out" / "runs" / "ml-colors-g2"
    return Run(result, folder, json.loads((folder / "report.json").read_text()),
               json.loads((folder / "data-report.json").read_text()), spec)


def test_the_run_records_its_loss_history(run: Run) -> None:
    assert run.result["reportUri"] == f"file://{run.folder}/report.html" and (run.folder / "report.html").exists()
    history, metrics = run.report["history"], run.result["metrics"]
    assert [p[0] for p in history["train"]] == [p[0] for p in history["learningRate"]] == list(range(1, STEPS + 1))
    assert history["train"][-1][1] == pytest.approx(metrics["trainLoss"], abs=1e-6)
    assert max(p[1] for p in history["learningRate"]) == pytest.approx(1e-3)
    # Before the first step the adapter is the identity (LoRA's B starts at 0): the base model's loss.
    assert [p[0] for p in history["validation"]] == list(range(0, STEPS + 1, 4))
    assert history["validation"][0][1] == pytest.approx(metrics["baseValidationLoss"], rel=1e-4)
    assert history["validation"][-1][1] == pytest.approx(metrics["validationLoss"], rel=1e-4)
    assert history["validationRows"] == history["validationRowsTotal"] == 40
    state = json.loads((run.folder / "checkpoints" / "step-20" / "state.json").read_text())
    assert state["history"]["train"] == history["train"][:20]
    assert state["history"]["validation"] == history["validation"][:6]


def test_a_resumed_run_reports_the_same_curves(run: Run, tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    resumed_folder = tmp_path / "out" / "runs" / "ml-colors-g2"
    shutil.copytree(run.folder / "checkpoints" / "step-20", resumed_folder / "checkpoints" / "step-20")
    result = run_pipeline({"namespace": "ml", "name": "colors", "generation": 2, "spec": spec})
    assert result["resumedFromStep"] == 20
    report = json.loads((resumed_folder / "report.json").read_text())
    assert report["history"] == run.report["history"]
    assert f"{STEPS} of {STEPS} (resumed from step 20)" in (resumed_folder / "report.html").read_text()


def test_the_report_in_chromium(run: Run, tmp_path: Path) -> None:
    page = (run.folder / "report.html").read_text()
    assert f'content="{html.CSP}"' in page and "<script" not in page
    expressions = {
        "charts": CHARTS_JS,
        "sections": "[...document.querySelectorAll('h2')].map(h => h.textContent)",
        "verdict": "document.querySelector('#summary .badge').textContent",
        "gates": "[...document.querySelectorAll('#gates table.gates tbody tr')].map(r => [...r.cells].map(c => c.textContent))",
        "dropped": "Object.fromEntries([...document.querySelectorAll('#data h3')].map(h => [h.textContent.split(':')[0], "
                   "Object.fromEntries([...h.nextElementSibling.tBodies[0].rows].map(r => [r.cells[0].textContent, "
                   "Number(r.cells[1].textContent)]))]))",
        "examples": "[...document.querySelectorAll('#data pre.example')].map(p => p.textContent)",
        "hyper": "document.querySelectorAll('#hyperparameters tbody tr').length",
        "links": "[...document.querySelectorAll('#lineage a')].map(a => a.getAttribute('href'))",
    }
    with Chromium(tmp_path / "chromium") as browser:
        loaded = browser.open(run.folder / "report.html", expressions)
    assert loaded.errors == [], loaded.errors
    v = loaded.values
    assert v["sections"] == SECTIONS
    assert v["verdict"] == run.result["verdict"] == "Validated"
    assert [[g[0], g[4]] for g in v["gates"]] == [[g["name"], "passed"] for g in run.result["gates"]]
    assert v["hyper"] == len(run.result["hyperParameters"])
    assert v["links"] == ["report.json", "data-report.json", "adapter/manifest.json"]
    assert all((run.folder / link).exists() for link in v["links"])

    # Dropped rows by reason, with the examples (escaped: the markup in a row is text).
    assert v["dropped"] == {split: r["dropped"] for split, r in run.data.items() if r["dropped"]}
    assert v["dropped"]["train"] == {"malformed": 1, "missingField": 1, "notString": 1, "tooLong": 1, "duplicate": 1}
    assert "{not json" in v["examples"] and any("<b>y</b>" in e for e in v["examples"])

    charts = {c["title"]: c for c in v["charts"]}
    assert list(charts) == ["Validation loss", "Exact match", "Loss per optimizer step", "Learning rate", "Retention loss"]
    for chart in charts.values():
        assert chart["width"] > 200 and chart["height"] > 150
        for series in chart["series"]:
            assert all(m["inside"] for m in series["markers"]), (chart["title"], series["name"])

    history, metrics = run.report["history"], run.result["metrics"]
    curves = {s["name"]: s for s in charts["Loss per optimizer step"]["series"]}
    for name, key in (("train loss", "train"), ("validation loss", "validation")):
        assert curves[name]["count"] == len(history[key]) and curves[name]["length"] > 0
        assert [(float(m["x"]), m["y"]) for m in curves[name]["markers"]] == [(float(s), pytest.approx(y, abs=1e-9))
                                                                             for s, y in history[key]]
    (lr,) = charts["Learning rate"]["series"]
    assert lr["count"] == STEPS and lr["markers"] == [] and lr["length"] > 0

    def bars(title: str) -> dict[str, float]:
        (series,) = charts[title]["series"]
        return {m["x"]: m["y"] for m in series["markers"]}

    assert bars("Validation loss") == {"base model": metrics["baseValidationLoss"], "adapter": metrics["validationLoss"]}
    assert bars("Exact match") == {"base model": metrics["baseExactMatch"], "adapter": metrics["exactMatch"]}
    assert bars("Retention loss") == {"base model": metrics["baseRetentionLoss"], "adapter": metrics["retentionLoss"]}
    assert charts["Validation loss"]["bounds"] == [["max", 1.5]] and charts["Exact match"]["bounds"] == [["min", 0.3]]
    ((side, limit),) = charts["Retention loss"]["bounds"]
    assert side == "max" and limit == pytest.approx(metrics["baseRetentionLoss"] * 4, rel=1e-6)


def test_a_rejected_run_without_retention(run: Run) -> None:
    """Rendered from the recorded report changed as a run without a retention set that failed its
    exact-match gate would have written it."""
    report = json.loads(json.dumps(run.report))
    for key in ("retentionLoss", "baseRetentionLoss", "retentionRegression"):
        report["metrics"].pop(key)
    report["gates"] = [{**g, "passed": g["name"] != "minExactMatch"} for g in report["gates"]
                       if g["name"] != "maxRetentionRegression"]
    report["verdict"] = "Rejected"
    page = render_report(report, {k: v for k, v in run.data.items() if k != "retention"})
    assert '<span class="badge bad">Rejected</span>' in page and "failed gates: minExactMatch" in page
    assert "No retention set was given" in page and "Retention loss</title>" not in page


def test_a_report_that_cannot_be_rendered_does_not_fail_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tunerag_workloads.finetune import report

    def broken(*_: Any) -> str:
        raise ValueError("a bug")

    monkeypatch.setattr(report, "render_report", broken)
    assert not pipeline.write_html_report(Store(f"file://{tmp_path}"), {}, {})
    assert not (tmp_path / "report.html").exists()
    out, err = capsys.readouterr()
    (line,) = [json.loads(li[len(PROGRESS_PREFIX):]) for li in out.splitlines() if li.startswith(PROGRESS_PREFIX)]
    assert line == {"phase": "Publishing", "event": "reportFailed", "message": "ValueError: a bug"}
    assert "Traceback" in err
