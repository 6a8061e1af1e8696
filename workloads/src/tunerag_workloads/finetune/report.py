"""report.html: a FineTuneJob run for people, from what report.json and data-report.json hold.

Sections: summary, metrics vs gates, loss curves (train and validation, learning rate), retention
against the base model, data (rows read, kept, dropped by reason with examples, digests),
hyper-parameters, lineage. One file, no script, no resource from elsewhere: the charts are inline
SVG from `tunerag_operator.report` (standard library only; the workloads image installs it).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from tunerag_operator.report import html, svg

Obj = dict[str, Any]
# metric -> (label, base metric, lower is better)
COMPARED = {
    "validationLoss": ("Validation loss", "baseValidationLoss", True),
    "exactMatch": ("Exact match", "baseExactMatch", False),
    "retentionLoss": ("Retention loss", "baseRetentionLoss", True),
}
GATE_TEXT = {
    "maxValidationLoss": "validation loss at most",
    "minExactMatch": "exact match at least",
    "maxRetentionRegression": "retention loss at most this much above the base's (relative)",
    "minBaselineImprovement": "validation loss at least this much below the baseline adapter's (relative)",
}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _points(rows: Any) -> list[tuple[float, float | None]]:
    return [(float(r[0]), _num(r[1])) for r in rows or [] if isinstance(r, list | tuple) and len(r) == 2]


def _change(adapted: float | None, base: float | None) -> str | None:
    if adapted is None or base is None:
        return None
    return f"{adapted - base:+.4g}" + (f" ({(adapted - base) / abs(base):+.1%})" if base else "")


def _gate(report: Obj, name: str) -> Obj | None:
    return next((g for g in report.get("gates") or [] if g.get("name") == name), None)


def summary_section(report: Obj) -> str:
    job, verdict = report.get("job") or {}, report.get("verdict", "")
    adapter, base = report.get("adapter") or {}, report.get("baseModel") or {}
    timings, tokens = report.get("timings") or {}, report.get("tokens") or {}
    failed = [g["name"] for g in report.get("gates") or [] if not g.get("passed")]
    steps = f"{report.get('steps')} of {report.get('totalSteps')}"
    if report.get("resumedFromStep") is not None:
        steps += f" (resumed from step {report['resumedFromStep']})"
    return html.section("summary", "Summary", html.fields([
        ("Verdict", html.Html(html.badge(verdict, "good" if verdict == "Validated" else "bad")
                              + (html.cell(f" failed gates: {', '.join(failed)}") if failed else ""))),
        ("FineTuneJob", f"{job['namespace']}/{job['name']} (generation {job.get('generation')})" if job.get("name") else None),
        ("Run", html.code(report.get("runId"))),
        ("Base model", html.code(base.get("uri", "") + (f" @ {base['revision']}" if base.get("revision") else ""))),
        ("Method", report.get("method")), ("Optimizer steps", steps),
        ("Training time", f"{timings['trainSeconds']:.1f} s" if _num(timings.get("trainSeconds")) is not None else None),
        ("Throughput", f"{_num((report.get('metrics') or {}).get('tokensPerSecond')) or 0:,.0f} real tokens/s, "
                       f"{tokens.get('real', 0):,} real of {tokens.get('padded', 0):,} tokens in batches"),
        ("Adapter", html.code(adapter.get("uri"))),
    ]))


def gates_section(report: Obj) -> str:
    metrics = report.get("metrics") or {}
    gates = html.table(["gate", "rule", "value", "threshold", "outcome"], [
        [g.get("name"), GATE_TEXT.get(g.get("name", ""), ""), _num(g.get("value")), _num(g.get("threshold")),
         html.badge("passed" if g.get("passed") else "failed", "good" if g.get("passed") else "bad")]
        for g in report.get("gates") or []], numeric=(2, 3), cls="gates")
    compared = html.table(["metric", "adapter", "base model", "change"], [
        [label, _num(metrics.get(k)), _num(metrics.get(b)), _change(_num(metrics.get(k)), _num(metrics.get(b)))]
        for k, (label, b, _) in COMPARED.items() if k in metrics], numeric=(1, 2, 3))
    others = html.table(["metric", "value"], [[k, _num(v)] for k, v in sorted(metrics.items())], numeric=(1,))
    bars = []
    for key, (label, base_key, lower) in COMPARED.items():
        if key == "retentionLoss" or key not in metrics:
            continue
        a, b = _num(metrics.get(key)), _num(metrics.get(base_key))
        bounds = []
        gate = _gate(report, "maxValidationLoss" if key == "validationLoss" else "minExactMatch")
        if gate and _num(gate.get("threshold")) is not None:
            bounds.append(svg.Bound(float(gate["threshold"]), "max" if lower else "min", f"gate {gate['threshold']:.4g}"))
        tone: svg.Tone | None = None if a is None or b is None else ("good" if (a < b) == lower or a == b else "bad")
        bars.append(svg.bar_chart(label, [svg.Bar("base model", b, "neutral"), svg.Bar("adapter", a, tone)], bounds=bounds))
    return html.section("gates", "Metrics and gates", gates, html.charts(*bars), compared,
                        html.Html("<details><summary>All metrics</summary>" + others + "</details>"))


def training_section(report: Obj) -> str:
    history = report.get("history") or {}
    train, validation, lr = (_points(history.get(k)) for k in ("train", "validation", "learningRate"))
    if not train and not validation:
        return html.section("training", "Loss curves", html.paragraph("No loss history was recorded.", "note"))
    loss = svg.line_chart("Loss per optimizer step", [
        svg.Series("train loss", train, markers=len(train) <= 60),
        svg.Series("validation loss", validation),
    ], x=svg.Axis("optimizer step"), y=svg.Axis("loss (mean token cross-entropy)"))
    parts = [html.charts(loss, svg.line_chart("Learning rate", [svg.Series("learning rate", lr, markers=False)],
                                              x=svg.Axis("optimizer step"), y=svg.Axis("learning rate"),
                                              width=720, height=200))]
    rows, total = history.get("validationRows"), history.get("validationRowsTotal")
    note = ("Train loss: the mean over the steps since the previous point. Validation loss: measured before the "
            f"first step and {max(len(validation) - 1, 0)} times during training")
    note += f" on the first {rows} of {total} validation rows." if rows and total and rows < total else f" on all {rows or '?'} validation rows."
    parts.append(html.paragraph(note, "note"))
    return html.section("training", "Loss curves", *parts)


def retention_section(report: Obj) -> str:
    metrics = report.get("metrics") or {}
    if "retentionLoss" not in metrics and "baseRetentionLoss" not in metrics:
        return html.section("retention", "Retention against the base model", html.paragraph(
            "No retention set was given (spec.dataset.retention), so forgetting was not measured.", "note"))
    adapted, base = _num(metrics.get("retentionLoss")), _num(metrics.get("baseRetentionLoss"))
    regression, gate = _num(metrics.get("retentionRegression")), _gate(report, "maxRetentionRegression")
    threshold = _num((gate or {}).get("threshold"))
    limit = base * (1 + threshold) if base is not None and threshold is not None else None
    bounds = [svg.Bound(limit, "max", f"gate: base + {threshold:.0%} = {limit:.4g}")] if limit is not None and threshold is not None else []
    tone: svg.Tone | None = None if gate is None else ("good" if gate.get("passed") else "bad")
    chart = svg.bar_chart("Retention loss", [svg.Bar("base model", base, "neutral"), svg.Bar("adapter", adapted, tone)],
                          bounds=bounds)
    fields = html.fields([
        ("Base model's loss", base), ("Adapter's loss", adapted),
        ("Regression", f"{regression:+.2%}" if regression is not None else None),
        ("Allowed", f"{threshold:.2%} (spec.gates.maxRetentionRegression)" if threshold is not None else None),
        ("Outcome", html.badge("passed" if gate and gate.get("passed") else "failed", tone or "neutral") if gate else None),
    ])
    return html.section("retention", "Retention against the base model", html.charts(chart), fields, html.paragraph(
        "Loss on the retention set (general text the adapter is not trained on) with the adapter and without it: "
        "how much general capability the fine-tuning cost.", "note"))


def data_section(data_reports: Obj) -> str:
    overview = html.table(["split", "rows read", "rows kept", "dropped", "tokens kept", "digest", "source"], [
        [name, r.get("rowsRead"), r.get("rowsKept"), sum((r.get("dropped") or {}).values()), r.get("tokens"),
         html.code(r.get("digest")), html.code(r.get("uri"))] for name, r in data_reports.items()], numeric=(1, 2, 3, 4))
    parts = [overview]
    for name, r in data_reports.items():
        dropped = r.get("dropped") or {}
        if not dropped:
            parts.append(html.paragraph(f"{name}: no rows dropped.", "note"))
            continue
        rows = []
        for reason, count in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])):
            shown = (r.get("droppedExamples") or {}).get(reason) or []
            examples = "".join(f'<pre class="example">{html.cell(e)}</pre>' for e in shown)
            rows.append([reason, count, html.Html(f"<details><summary>{len(shown)} example(s)</summary>{examples}</details>"
                                                  if shown else html.NONE)])
        parts += [html.Html(f"<h3>{html.cell(name)}: dropped rows by reason</h3>"),
                  html.table(["reason", "rows", "examples"], rows, numeric=(1,))]
    return html.section("data", "Data", *parts)


def hyper_section(report: Obj) -> str:
    hyper = report.get("hyperParameters") or {}
    return html.section("hyperparameters", "Hyper-parameters",
                        html.table(["name", "value"], [[k, html.code(v)] for k, v in sorted(hyper.items())]))


def lineage_section(report: Obj) -> str:
    base, adapter = report.get("baseModel") or {}, report.get("adapter") or {}
    digests = report.get("datasetDigests") or {k: v.get("digest") for k, v in (report.get("dataReports") or {}).items()}
    parts = [html.fields([
        ("Base model", html.code(base.get("uri"))), ("Base revision", base.get("revision")),
        ("Adapter family", report.get("family")), ("Adapter artifact", html.code(adapter.get("uri"))),
        ("Artifact sha256", html.code(adapter.get("sha256"))), ("Artifact size", f"{adapter.get('sizeBytes', 0):,} bytes"),
        ("Run", html.code(report.get("runId"))),
        ("Machine-readable", html.Html(html.link("report.json", "report.json") + " · "
                                       + html.link("data-report.json", "data-report.json")
                                       + " · " + html.link("adapter/manifest.json", "adapter/manifest.json"))),
    ]), html.Html("<h3>Dataset digests</h3>"),
        html.table(["split", "digest"], [[k, html.code(v)] for k, v in sorted(digests.items())])]
    files = report.get("manifest") or {}
    if files:
        parts += [html.Html("<h3>Adapter files</h3>"), html.table(["file", "bytes", "sha256"], [
            [name, f.get("sizeBytes"), html.code(f.get("sha256"))] for name, f in sorted(files.items())], numeric=(1,))]
    quantized = report.get("quantized")
    if quantized:
        parts += [html.Html("<h3>Quantized merged model</h3>"), html.table(["field", "value"], [
            [k, html.code(v) if k in ("uri", "sha256") else v] for k, v in quantized.items()])]
    return html.section("lineage", "Lineage", *parts)


def render_report(report: Obj, data_reports: Obj, now: dt.datetime | None = None) -> str:
    """The page for one run: `report` is report.json's content, `data_reports` data-report.json's."""
    now = now or dt.datetime.now(dt.UTC)
    job = report.get("job") or {}
    title = f"{report.get('family') or 'adapter'}: fine-tuning run {job.get('name') or report.get('runId', '')}"
    subtitle = f"{report.get('verdict', '')} · run {report.get('runId', '')} · generated {now.strftime('%Y-%m-%d %H:%M:%S UTC')}"
    return html.page(title, subtitle, summary_section(report), gates_section(report), training_section(report),
                     retention_section(report), data_section(data_reports), hyper_section(report), lineage_section(report))
