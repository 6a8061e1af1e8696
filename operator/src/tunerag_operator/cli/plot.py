"""`kubectl tunerag describe rollout NAME --plot FILE`: a RolloutPolicy's analysis history as one
self-contained HTML page: the canary weight over time and each metric's measured values with the
passing range from the spec, one line per candidate, markers coloured by the outcome."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from tunerag_operator.cli.describe import step_text
from tunerag_operator.cli.summary import canary_steps
from tunerag_operator.durations import parse_time
from tunerag_operator.report import html, svg

Obj = dict[str, Any]
VERDICT_TONES: dict[str, svg.Tone] = {"Passed": "good", "Failed": "bad", "Inconclusive": "neutral"}


def _seconds(run: Obj) -> float | None:
    try:
        return parse_time(str(run.get("time"))).timestamp()
    except ValueError:
        return None


def _value(run: Obj, name: str) -> float | None:
    v = (run.get("values") or {}).get(name)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _in_range(value: float | None, rng: Obj) -> svg.Tone | None:
    if value is None:
        return None
    lo, hi = rng.get("min"), rng.get("max")
    if lo is None and hi is None:
        return None
    return "bad" if (lo is not None and value < lo) or (hi is not None and value > hi) else "good"


def _by_candidate(runs: list[tuple[float, Obj]]) -> dict[str, list[tuple[float, Obj]]]:
    groups: dict[str, list[tuple[float, Obj]]] = {}
    for t, r in runs:
        groups.setdefault(r.get("candidate") or "candidate", []).append((t, r))
    return groups


def weight_chart(runs: list[tuple[float, Obj]]) -> str:
    series = [svg.Series(name, [(t, float(r.get("weight", 0))) for t, r in group], step=True,
                         notes=[f"step {r.get('step', 0) + 1}, {r.get('verdict', '')}" for _, r in group],
                         tones=[VERDICT_TONES.get(r.get("verdict", "")) for _, r in group])
              for name, group in _by_candidate(runs).items()]
    return svg.line_chart("Canary weight at each analysis", series, x=svg.Axis("time (UTC)", time=True),
                          y=svg.Axis("weight", lo=0, hi=100, unit="%"))


def metric_chart(name: str, metric: Obj | None, runs: list[tuple[float, Obj]]) -> str:
    rng = (metric or {}).get("thresholdRange") or {}
    bounds = [svg.Bound(float(rng[side]), side, f"{side} {rng[side]:.4g}") for side in ("min", "max")
              if isinstance(rng.get(side), int | float)]
    series = []
    for candidate, group in _by_candidate(runs).items():
        measured = [(t, r, v) for t, r in group if (v := _value(r, name)) is not None]  # the line goes on past a run without it
        series.append(svg.Series(
            candidate, [(t, v) for t, _, v in measured],
            notes=[f"{r.get('verdict', '')} at {r.get('weight', 0)}%, step {r.get('step', 0) + 1}" for _, r, _ in measured],
            tones=[_in_range(v, rng) for _, _, v in measured]))
    kind = (metric or {}).get("builtin") or ("prometheus" if (metric or {}).get("prometheus") else "")
    return svg.line_chart(f"{name}" + (f" ({kind})" if kind else ""), series, x=svg.Axis("time (UTC)", time=True),
                          y=svg.Axis(name), bounds=bounds)


def render(obj: Obj, now: dt.datetime | None = None) -> str:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    analysis = spec.get("analysis") or {}
    metrics = {m["name"]: m for m in analysis.get("metrics") or [] if m.get("name")}
    raw = status.get("analysisRuns") or []
    runs = sorted(((t, r) for r in raw if (t := _seconds(r)) is not None), key=lambda p: p[0])
    names = [*metrics, *sorted({k for _, r in runs for k in r.get("values") or {}} - set(metrics))]
    steps, step = canary_steps(obj), status.get("currentStep")
    now = now or dt.datetime.now(dt.UTC)
    title = f"Rollout {meta['name']}"
    subtitle = (f"RolloutPolicy {meta.get('namespace', '')}/{meta['name']}, {status.get('phase') or 'no phase'}; "
                f"{len(runs)} analysis runs; generated {now.strftime('%Y-%m-%d %H:%M:%S UTC')}")
    summary = html.fields([
        ("Service", (spec.get("target") or {}).get("inferenceService")),
        ("Stable", status.get("stable")), ("Candidate", status.get("candidate")),
        ("Step", f"{step + 1}/{len(steps)}, {step_text(steps[step])}" if step is not None and 0 <= step < len(steps) else step),
        ("Canary weight", f"{status['canaryWeight']}%" if status.get("canaryWeight") is not None else None),
        ("Failed checks", f"{status.get('failedChecks', 0)} (limit {analysis.get('failureLimit', 2)})"),
        ("Analysis", f"every {analysis.get('interval', '1m')}, {analysis.get('count', 1)} passing measurement(s) per step"),
        ("Message", status.get("message")),
    ])
    ranges = html.table(["metric", "source", "min", "max"], [
        [n, m.get("builtin") or ((m.get("prometheus") or {}).get("query")), (m.get("thresholdRange") or {}).get("min"),
         (m.get("thresholdRange") or {}).get("max")] for n, m in metrics.items()], numeric=(2, 3))
    if runs:
        plots = html.charts(weight_chart(runs), *(metric_chart(n, metrics.get(n), runs) for n in names))
    else:
        plots = html.paragraph("No analysis runs recorded yet.", "note")
    table = html.table(["time", "candidate", "step", "weight", *names, "verdict"], [
        [r.get("time"), r.get("candidate") or None, r.get("step", 0) + 1, f"{r.get('weight')}%", *(_value(r, n) for n in names),
         html.badge(r.get("verdict", ""), VERDICT_TONES.get(r.get("verdict", ""), "neutral"))] for _, r in runs],
        numeric=(2, 3, *range(4, 4 + len(names))))
    history = html.table(["time", "candidate", "outcome", "reason"], [
        [h.get("time"), h.get("candidate"), h.get("outcome"), h.get("reason")] for h in status.get("history") or []])
    return html.page(title, subtitle,
                     html.section("summary", "Summary", summary),
                     html.section("analysis", "Analysis over time", plots, html.paragraph(
                         "Markers: green passed (a metric: within its range), red failed, grey inconclusive. "
                         "Shaded: outside the passing range.", "note")),
                     html.section("metrics", "Metrics and passing ranges", ranges),
                     html.section("runs", "Analysis runs", table),
                     html.section("history", "Finished rollouts", history))
