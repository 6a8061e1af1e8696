"""The SVG charts (tunerag_operator.report) and the rollout plot of `kubectl tunerag describe
rollout NAME --plot FILE`, rendered from a RolloutPolicy with two rollouts' analysis runs and opened
in headless Chromium: it loads with no console message of level warning or error (the page's policy
refuses anything from elsewhere, so a stray resource would be one), every chart is laid out with
its data points inside it, and the points are the status's values."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from substrate.chromium import CHARTS_JS, Chromium
from tunerag_operator.cli import plot
from tunerag_operator.report import html, svg

ROOT = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def analysis_run(time: str, candidate: str, step: int, weight: int, verdict: str, **values: float) -> Obj:
    return {"time": time, "candidate": candidate, "step": step, "weight": weight, "verdict": verdict,
            "values": {k.replace("_", "-"): v for k, v in values.items()}}


RUNS = [  # v2 fails its error rate twice and is rolled back; v3 goes through 10% and 50%
    analysis_run("2026-01-05T10:01:00Z", "ticket-router-v2", 1, 10, "Failed", error_rate=0.021, latency_p95=1.25),
    analysis_run("2026-01-05T10:02:00Z", "ticket-router-v2", 1, 10, "Passed", error_rate=0.004, latency_p95=1.5),
    analysis_run("2026-01-05T10:03:00Z", "ticket-router-v2", 1, 10, "Failed", error_rate=0.05, latency_p95=2.75),
    analysis_run("2026-01-05T10:04:00Z", "ticket-router-v2", 1, 10, "Failed", error_rate=0.03, latency_p95=1.1),
    analysis_run("2026-01-05T10:10:00Z", "ticket-router-v3", 1, 10, "Passed", error_rate=0.002, latency_p95=0.9),
    analysis_run("2026-01-05T10:11:00Z", "ticket-router-v3", 1, 10, "Inconclusive", error_rate=0.001),
    analysis_run("2026-01-05T10:17:00Z", "ticket-router-v3", 4, 50, "Passed", error_rate=0.003, latency_p95=1.0),
]


def policy() -> Obj:
    obj: Obj = yaml.safe_load((ROOT / "examples" / "40-rolloutpolicy.yaml").read_text())
    obj["metadata"]["namespace"] = "ml"
    obj["status"] = {
        "phase": "Progressing", "stable": "ticket-router-v1", "candidate": "ticket-router-v3", "currentStep": 4,
        "canaryWeight": 50, "failedChecks": 0, "message": "Analysing ticket-router-v3 at 50%.", "analysisRuns": RUNS,
        "history": [{"candidate": "ticket-router-v2", "outcome": "RolledBack", "time": "2026-01-05T10:04:01Z",
                     "reason": "3 failed checks (limit 2): error-rate 0.03 above 0.01."}],
    }
    return obj


# ------------------------------------------------------------------------------------------ units

def test_nice_ticks_and_labels() -> None:
    assert svg.nice_ticks(0.0, 4.83) == [0, 1, 2, 3, 4, 5]
    assert svg.nice_ticks(0.0, 0.021) == [0, 0.005, 0.01, 0.015, 0.02, 0.025]
    assert svg.nice_ticks(0.74, 0.74)[0] < 0.74 < svg.nice_ticks(0.74, 0.74)[-1]  # one value: a range around it
    ticks = svg.nice_ticks(0.0, 0.001)
    assert [svg.number_label(t, ticks) for t in ticks] == ["0.0000", "0.0002", "0.0004", "0.0006", "0.0008", "0.0010"]
    quarter = svg.nice_ticks(0.0, 1.1)
    assert [svg.number_label(t, quarter) for t in quarter] == ["0.00", "0.25", "0.50", "0.75", "1.00", "1.25"]
    t0 = epoch("2026-01-05T10:01:00Z")
    times = svg.time_ticks(t0, t0 + 16 * 60)
    assert [svg.time_label(t, times) for t in times] == ["10:05", "10:10", "10:15"]


def test_line_chart_keeps_each_point_and_leaves_gaps() -> None:
    out = svg.line_chart("loss", [svg.Series("train", [(0, 3.0), (1, None), (2, float("nan")), (3, 1.5), (4, 1.25)],
                                             notes=["", "", "", "peak <b>", ""], tones=[None, None, None, "bad", "good"])],
                         bounds=[svg.Bound(2.0, "max")])
    assert out.startswith('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') and out.endswith("</svg>")
    assert 'data-count="3"' in out
    assert [len(p.split()) for p in re.findall(r'<polyline points="([^"]*)"', out)] == [1, 2]  # split at the gaps
    assert re.findall(r'data-x="([^"]*)" data-y="([^"]*)"', out) == [("0", "3"), ("3", "1.5"), ("4", "1.25")]
    assert 'data-tone="bad"' in out and "peak &lt;b&gt;" in out  # notes are escaped
    assert 'class="bound" data-side="max" data-value="2"' in out
    empty = svg.line_chart("nothing yet", [svg.Series("x", [])])
    assert "no data" in empty and "<circle" not in empty


def test_report_package_needs_only_the_standard_library() -> None:
    """The workloads image installs the operator distribution without its dependencies for this
    package (see the Dockerfile): importing and using it with no site-packages at all must work."""
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "from tunerag_operator.report import html, svg; "
             "page = html.page('t', 's', svg.line_chart('c', [svg.Series('a', [(0, 1.0), (1, 2.0)])]), "
             "svg.bar_chart('b', [svg.Bar('x', 1.0)])); "
             "assert page.count('<svg') == 2; "
             "mods = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'tunerag_operator', '__main__'}; "
             "assert not mods, mods")
    proc = subprocess.run([sys.executable, "-S", "-I", "-c", probe, str(ROOT / "operator" / "src")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    workloads_stage = dockerfile[dockerfile.index("AS workloads-build"):dockerfile.index("AS workloads\n")]
    assert "COPY operator/ operator/" in workloads_stage and "--no-deps ./operator" in workloads_stage


# ---------------------------------------------------------------------------------- rollout page

def test_rollout_plot_page(tmp_path: Path) -> None:
    page = plot.render(policy(), now=dt.datetime(2026, 1, 5, 10, 20, tzinfo=dt.UTC))
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in page
    assert f'content="{html.CSP}"' in page
    path = tmp_path / "rollout.html"
    path.write_text(page)
    with Chromium(tmp_path / "chromium") as browser:
        loaded = browser.open(path, {"charts": CHARTS_JS, "sections": "[...document.querySelectorAll('h2')].map(h => h.textContent)",
                                     "runs": "document.querySelectorAll('#runs tbody tr').length"})
    assert loaded.errors == [], loaded.errors
    assert loaded.values["sections"] == ["Summary", "Analysis over time", "Metrics and passing ranges", "Analysis runs",
                                         "Finished rollouts"]
    assert loaded.values["runs"] == len(RUNS)
    charts = {c["title"]: c for c in loaded.values["charts"]}
    assert list(charts) == ["Canary weight at each analysis", "error-rate (errorRate)", "latency-p95 (latencyP95)"]
    for chart in charts.values():
        assert chart["width"] > 300 and chart["height"] > 150
        for series in chart["series"]:
            assert series["name"] in ("ticket-router-v2", "ticket-router-v3")
            assert series["length"] > 0 and series["vertices"] >= series["count"] == len(series["markers"])
            assert all(m["inside"] for m in series["markers"]), series

    def points(title: str, candidate: str) -> list[tuple[float, float, str | None]]:
        (series,) = [s for s in charts[title]["series"] if s["name"] == candidate]
        return [(float(m["x"]), m["y"], m["tone"]) for m in series["markers"]]

    verdict_tone = {"Passed": "good", "Failed": "bad", "Inconclusive": "neutral"}
    for candidate in ("ticket-router-v2", "ticket-router-v3"):
        mine = [r for r in RUNS if r["candidate"] == candidate]
        assert points("Canary weight at each analysis", candidate) == [
            (epoch(r["time"]), r["weight"], verdict_tone[r["verdict"]]) for r in mine]
        assert points("error-rate (errorRate)", candidate) == [
            (epoch(r["time"]), r["values"]["error-rate"], "bad" if r["values"]["error-rate"] > 0.01 else "good") for r in mine]
        assert points("latency-p95 (latencyP95)", candidate) == [  # the inconclusive run measured no latency
            (epoch(r["time"]), r["values"]["latency-p95"], "bad" if r["values"]["latency-p95"] > 2.5 else "good")
            for r in mine if "latency-p95" in r["values"]]
    assert charts["error-rate (errorRate)"]["bounds"] == [["max", 0.01]]
    assert charts["latency-p95 (latencyP95)"]["bounds"] == [["max", 2.5]]
    assert charts["Canary weight at each analysis"]["bounds"] == []
    v3_latency = next(s for s in charts["latency-p95 (latencyP95)"]["series"] if s["name"] == "ticket-router-v3")
    assert v3_latency["count"] == 2 and "Passed at 50%, step 5" in v3_latency["markers"][-1]["tip"]


def test_rollout_plot_without_analysis_runs() -> None:
    obj = policy()
    obj["status"] = {"phase": "Idle", "stable": "ticket-router-v1"}
    page = plot.render(obj)
    assert "No analysis runs recorded yet." in page and "<svg" not in page
