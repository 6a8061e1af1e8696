"""Metric analysis against Prometheus: built-in error rate and p95 latency from the serving
workload's own metrics, or any PromQL template. No answer (Prometheus unreachable, an empty result,
NaN) is *Inconclusive*: the rollout waits, it never promotes on missing data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tunerag_operator.api.rolloutpolicy import Analysis, Metric, RolloutPolicySpec
from tunerag_operator.rollout.prometheus import query

Verdict = Literal["Passed", "Failed", "Inconclusive"]

_SELECTOR = 'namespace="{{namespace}}",service="{{service}}",adapter_version="{{candidate}}"'
BUILTIN = {
    "errorRate": (
        f'(sum(rate(tunerag_serve_requests_total{{{_SELECTOR},outcome="error"}}[{{{{window}}}}])) or vector(0))'
        f" / sum(rate(tunerag_serve_requests_total{{{_SELECTOR}}}[{{{{window}}}}]))"
    ),
    "latencyP95": (
        f"histogram_quantile(0.95, sum by (le) (rate(tunerag_serve_request_seconds_bucket{{{_SELECTOR}}}[{{{{window}}}}])))"
    ),
}


@dataclass
class Measurement:
    verdict: Verdict
    values: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # "metric value outside [min, max]"
    inconclusive: list[str] = field(default_factory=list)  # "metric: why"


def render_query(template: str, names: dict[str, str]) -> str:
    out = template
    for key, value in names.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def window(seconds: float) -> str:
    return f"{max(int(seconds), 2)}s"


def measure(analysis: Analysis, metrics: tuple[str, ...], names: dict[str, str], interval_s: float) -> Measurement:
    """One measurement of the selected metrics (all when `metrics` is empty)."""
    chosen: list[Metric] = [m for m in analysis.metrics if not metrics or m.name in metrics]
    out = Measurement("Passed")
    if not chosen:
        out.verdict = "Inconclusive"
        out.inconclusive.append("no metrics: define spec.analysis.metrics")
        return out
    subst = {**names, "window": window(interval_s)}
    for m in chosen:
        if m.prometheus is not None:
            address, template = m.prometheus.address, m.prometheus.query
        else:
            address, template = analysis.prometheus_address or "", BUILTIN[m.builtin or "errorRate"]
        if not address:
            out.inconclusive.append(f"{m.name}: no Prometheus address (spec.analysis.prometheusAddress)")
            continue
        try:
            value = query(address, render_query(template, subst))
        except OSError as exc:
            out.inconclusive.append(f"{m.name}: {exc}")
            continue
        if value is None:
            out.inconclusive.append(f"{m.name}: no data yet")
            continue
        out.values[m.name] = value
        lo, hi = m.threshold_range.min, m.threshold_range.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            out.failed.append(f"{m.name} = {value:.4g} outside [{'' if lo is None else f'{lo:g}'}, {'' if hi is None else f'{hi:g}'}]")
    if out.failed:
        out.verdict = "Failed"
    elif out.inconclusive:
        out.verdict = "Inconclusive"
    return out


def addresses(spec: RolloutPolicySpec) -> list[tuple[str, str]]:
    """Every Prometheus address the policy would query, with the field that names it."""
    out = []
    if spec.analysis.prometheus_address:
        out.append(("spec.analysis.prometheusAddress", spec.analysis.prometheus_address))
    for i, m in enumerate(spec.analysis.metrics):
        if m.prometheus is not None:
            out.append((f"spec.analysis.metrics[{i}].prometheus.address", m.prometheus.address))
    return out
