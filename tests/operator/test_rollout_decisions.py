"""The rollout's decisions, fast: canary steps, the analysis verdict against a real Prometheus,
the A/B test's z-test and its decision. These are what the mutation check
(`make mutation MODULE=rollout`) runs against every mutant of steps.py, analysis.py, stats.py and
abtest.decide; the end-to-end rollouts (tests/e2e/test_rollout.py) take minutes each."""

from __future__ import annotations

import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from substrate.controlplane import free_port
from substrate.prometheus import Prometheus
from tunerag_operator.api.rolloutpolicy import (
    AbTest,
    Analysis,
    Canary,
    CanaryStep,
    Metric,
    Pause,
    PrometheusQuery,
    RolloutPolicySpec,
    StepAnalysis,
    ThresholdRange,
)
from tunerag_operator.rollout import analysis, steps
from tunerag_operator.rollout.abtest import decide
from tunerag_operator.rollout.stats import two_proportion_z

# ------------------------------------------------------------------------------------ canary steps


def weights(canary: Canary) -> list[tuple[str, int]]:
    return [(s.kind, s.weight) for s in steps.expand(canary)]


def test_shorthand_weights_end_at_max_weight_once() -> None:
    assert weights(Canary(step_weight=25)) == [
        ("setWeight", 25), ("analysis", 0), ("setWeight", 50), ("analysis", 0), ("setWeight", 75), ("analysis", 0),
        ("setWeight", 100), ("analysis", 0)]
    assert weights(Canary(step_weight=30, max_weight=80))[-2:] == [("setWeight", 80), ("analysis", 0)]
    assert [w for k, w in weights(Canary(step_weight=30, max_weight=80)) if k == "setWeight"] == [30, 60, 80]
    # No stepWeight: one step at maxWeight.
    assert weights(Canary(max_weight=40)) == [("setWeight", 40), ("analysis", 0)]
    assert weights(Canary(step_weight=40, max_weight=40)) == [("setWeight", 40), ("analysis", 0)]
    assert weights(Canary(step_weight=1, max_weight=2)) == [("setWeight", 1), ("analysis", 0), ("setWeight", 2), ("analysis", 0)]


def test_written_steps_are_kept_in_order() -> None:
    expanded = steps.expand(Canary(steps=[
        CanaryStep(set_weight=0), CanaryStep(set_weight=10), CanaryStep(pause=Pause(duration="90s")), CanaryStep(pause=Pause()),
        CanaryStep(analysis=StepAnalysis(metrics=["errorRate"])), CanaryStep(set_weight=100), CanaryStep(analysis=StepAnalysis()),
    ]))
    assert [(s.kind, s.weight, s.duration, s.metrics) for s in expanded] == [
        ("setWeight", 0, None, ()), ("setWeight", 10, None, ()), ("pause", 0, 90.0, ()), ("pause", 0, None, ()),
        ("analysis", 0, None, ("errorRate",)), ("setWeight", 100, None, ()), ("analysis", 0, None, ())]
    assert [s.describe() for s in expanded] == [
        "setWeight 0", "setWeight 10", "pause 90s", "pause until resumed", "analysis (errorRate)", "setWeight 100", "analysis"]


def test_last_weight_is_the_latest_set_weight_before_the_step() -> None:
    s = [steps.Step("setWeight", weight=10), steps.Step("pause"), steps.Step("setWeight", weight=40), steps.Step("analysis")]
    assert [steps.last_weight(s, i) for i in range(6)] == [0, 10, 10, 40, 40, 40]
    assert steps.last_weight([], 3) == 0


# ----------------------------------------------------------------------------------------- z-test


def test_two_proportion_z_with_unequal_arms() -> None:
    # 45/100 vs 66/120: pooled 111/220, se 0.06770, z = 0.1 / se = 1.4772, p = 0.1396.
    z = two_proportion_z(45, 100, 66, 120)
    assert (z.rate_a, z.rate_b) == (0.45, 0.55)
    assert z.z == pytest.approx(1.4772, abs=1e-4)
    assert z.p_value == pytest.approx(0.13963, abs=1e-4)
    worse = two_proportion_z(66, 120, 45, 100)  # the same test seen from the other arm
    assert worse.z == pytest.approx(-z.z) and worse.p_value == pytest.approx(z.p_value)


def test_two_proportion_z_without_variance_or_samples() -> None:
    for all_or_nothing in (two_proportion_z(0, 50, 0, 60), two_proportion_z(50, 50, 60, 60)):
        assert (all_or_nothing.z, all_or_nothing.p_value) == (0.0, 1.0)
    assert two_proportion_z(50, 50, 60, 60).rate_b == 1.0
    with pytest.raises(ValueError, match="samples"):
        two_proportion_z(0, 0, 5, 10)
    with pytest.raises(ValueError, match="samples"):
        two_proportion_z(5, 10, 0, 0)
    one_each = two_proportion_z(1, 1, 0, 1)  # the smallest arms there are: computed, not refused
    assert (round(one_each.z, 4), round(one_each.p_value, 4)) == (-1.4142, 0.1573)
    for bad in ((1, -10, 1, 10), (1, 10, 1, -10)):  # counts are never negative; refused, not computed
        with pytest.raises(ValueError, match="samples"):
            two_proportion_z(*bad)


# ----------------------------------------------------------------------------------- A/B decision


AB = AbTest(duration="10m", confidence=0.95, min_samples=100)


def test_a_candidate_better_at_the_confidence_is_promoted() -> None:
    d = decide(AB, (100, 200), (118, 200), 600)  # p = 0.0707: not at 0.95
    assert (d.decision, d.outcome) == ("NoDifference", "RolledBack")
    assert d.why == "feedbackRate 0.590 vs 0.500, p=0.0707: not better at 0.95."
    d = decide(AbTest(duration="10m", confidence=0.9, min_samples=100), (100, 200), (118, 200), 600)  # at 0.9 it is
    assert (d.decision, d.outcome) == ("CandidateBetter", "Promoted")
    assert d.why == "feedbackRate 0.590 vs 0.500, p=0.0707."
    assert d.z is not None and d.z.z > 0
    d = decide(AB, (120, 200), (100, 200), 600)  # significantly worse
    assert (d.decision, d.outcome) == ("StableBetter", "RolledBack")
    assert d.z is not None and d.z.p_value == pytest.approx(0.0444, abs=1e-4)


def test_a_p_value_on_the_threshold_is_not_significant() -> None:
    # 80/200 vs 98/200: p = 0.0701424...; a confidence of exactly 1 - p puts p on the threshold.
    z = two_proportion_z(80, 200, 98, 200)
    edge = 1 - z.p_value
    assert 1 - edge == z.p_value  # exact in floating point for these counts
    on_edge = AbTest(duration="10m", confidence=edge, min_samples=100)
    assert decide(on_edge, (80, 200), (98, 200), 600).decision == "NoDifference"
    below = AbTest(duration="10m", confidence=math.nextafter(edge, 0), min_samples=100)
    assert decide(below, (80, 200), (98, 200), 600).decision == "CandidateBetter"


def test_the_direction_decides_at_any_confidence() -> None:
    # At confidence 0.5 a difference of z = +-0.80 (p = 0.42) is significant: better is promoted, worse is not.
    loose = AbTest(duration="10m", confidence=0.5, min_samples=100)
    better = decide(loose, (100, 200), (108, 200), 600)
    assert (better.decision, better.outcome) == ("CandidateBetter", "Promoted")
    assert better.z is not None and round(better.z.z, 4) == 0.8006
    worse = decide(loose, (108, 200), (100, 200), 600)
    assert (worse.decision, worse.outcome) == ("StableBetter", "RolledBack")


def test_too_few_samples_wait_then_end_inconclusive_after_three_durations() -> None:
    d = decide(AB, (5, 99), (90, 100), 1800)  # one arm short: no z-test, still within 3 x 10 min
    assert (d.decision, d.outcome, d.z) == ("Running", None, None)
    assert d.why == "A/B test: 99 and 100 samples, waiting for 100 per arm."
    assert decide(AB, (50, 100), (5, 99), 900).outcome is None
    d = decide(AB, (5, 99), (90, 100), 1800.5)
    assert (d.decision, d.outcome, d.z) == ("Inconclusive", "RolledBack", None)
    assert d.why == "too few samples after 1800s: 99 and 100 < 100."
    assert decide(AB, (50, 100), (50, 100), 600).decision == "NoDifference"  # exactly minSamples: decided


# ------------------------------------------------------------------------------------- analysis


NAMES = {"namespace": "ns1", "service": "qa", "candidate": "qa-v2"}


def custom(name: str, address: str, query: str, lo: float | None = None, hi: float | None = None) -> Metric:
    return Metric(name=name, prometheus=PrometheusQuery(address=address, query=query), threshold_range=ThresholdRange(min=lo, max=hi))


def test_values_on_a_bound_pass_and_outside_fail(prometheus: Prometheus) -> None:
    a = Analysis(metrics=[custom("low", prometheus.url, "vector(0.05)", hi=0.05), custom("high", prometheus.url, "0.05", lo=0.05)])
    m = analysis.measure(a, (), NAMES, 60)
    assert (m.verdict, m.values, m.failed, m.inconclusive) == ("Passed", {"low": 0.05, "high": 0.05}, [], [])
    a = Analysis(metrics=[custom("errors", prometheus.url, "vector(0.0501)", hi=0.05), custom("rps", prometheus.url, "vector(4.99)", lo=5),
                          custom("both", prometheus.url, "vector(7)", lo=1, hi=6.5), custom("ok", prometheus.url, "vector(3)", lo=1, hi=6.5)])
    m = analysis.measure(a, (), NAMES, 60)
    assert m.verdict == "Failed"
    assert m.failed == ["errors = 0.0501 outside [, 0.05]", "rps = 4.99 outside [5, ]", "both = 7 outside [1, 6.5]"]
    assert m.values == {"errors": 0.0501, "rps": 4.99, "both": 7.0, "ok": 3.0}


def test_the_window_is_the_interval_and_templates_take_the_rollout_names(prometheus: Prometheus) -> None:
    # {{window}} becomes the analysis interval (2s at least): a 30 s subquery at 1 s resolution
    # holds 30 or 31 points.
    a = Analysis(metrics=[custom("points", prometheus.url, "sum(count_over_time(vector(1)[{{window}}:1s]))", lo=29, hi=31)])
    m = analysis.measure(a, (), NAMES, 30)
    assert m.verdict == "Passed", m
    assert [analysis.window(s) for s in (0.5, 2, 2.9, 61)] == ["2s", "2s", "2s", "61s"]
    assert analysis.render_query("{{service}}-{{service}} {{other}}", {"service": "qa"}) == "qa-qa {{other}}"


def test_a_step_runs_only_its_metrics_and_a_failure_outweighs_missing_data(prometheus: Prometheus) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    a = Analysis(metrics=[custom("up", prometheus.url, "vector(1)", lo=1), custom("gone", dead, "vector(1)", lo=1),
                          custom("bad", prometheus.url, "vector(9)", hi=1)])
    only = analysis.measure(a, ("up",), NAMES, 60)
    assert (only.verdict, only.values) == ("Passed", {"up": 1.0})
    missing = analysis.measure(a, ("up", "gone"), NAMES, 60)
    assert missing.verdict == "Inconclusive" and missing.values == {"up": 1.0}
    assert len(missing.inconclusive) == 1 and missing.inconclusive[0].startswith(f"gone: Prometheus at {dead} did not answer")
    both = analysis.measure(a, (), NAMES, 60)
    assert both.verdict == "Failed" and both.failed == ["bad = 9 outside [, 1]"] and len(both.inconclusive) == 1
    none = analysis.measure(a, ("nothing-like-it",), NAMES, 60)
    assert (none.verdict, none.inconclusive) == ("Inconclusive", ["no metrics: define spec.analysis.metrics"])


def test_builtin_metrics_need_the_policy_prometheus(prometheus: Prometheus) -> None:
    builtin = Metric(name="errors", builtin="errorRate", threshold_range=ThresholdRange(max=0.1))
    # The model refuses built-in metrics without the address; one stored before that rule still gets here.
    m = analysis.measure(Analysis.model_construct(metrics=[builtin, custom("up", prometheus.url, "vector(1)", lo=1)]), (), NAMES, 60)
    assert (m.verdict, m.inconclusive) == ("Inconclusive", ["errors: no Prometheus address (spec.analysis.prometheusAddress)"])
    assert m.values == {"up": 1.0}  # the metrics after it are still measured
    m = analysis.measure(Analysis(prometheus_address=prometheus.url, metrics=[builtin]), (), NAMES, 60)
    assert (m.verdict, m.inconclusive) == ("Inconclusive", ["errors: no data yet"])  # nothing served yet


class _Serving(BaseHTTPRequestHandler):
    """A serving workload's /metrics for candidate qa-v2: 10 requests per scrape, 1 of them an
    error; every request takes 0.2 to 0.4 s (histogram buckets 0.1, 0.4, 1)."""

    scrapes = 0

    def do_GET(self) -> None:
        type(self).scrapes += 1
        n = type(self).scrapes
        sel = 'namespace="ns1",service="qa",adapter_version="qa-v2"'
        body = "".join([
            f'tunerag_serve_requests_total{{{sel},outcome="ok"}} {9 * n}\n',
            f'tunerag_serve_requests_total{{{sel},outcome="error"}} {n}\n',
            *(f'tunerag_serve_request_seconds_bucket{{{sel},le="{le}"}} {c}\n' for le, c in (("0.1", 0), ("0.4", 10 * n), ("1.0", 10 * n), ("+Inf", 10 * n))),
            f"tunerag_serve_request_seconds_count{{{sel}}} {10 * n}\n",
        ]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


def test_builtin_error_rate_and_latency_from_the_serving_metrics(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Serving)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Prometheus(tmp_path / "prom", targets=[f"127.0.0.1:{server.server_address[1]}"]) as p:
            spec = Analysis(prometheus_address=p.url, metrics=[
                Metric(name="errors", builtin="errorRate", threshold_range=ThresholdRange(max=0.11)),
                Metric(name="p95", builtin="latencyP95", threshold_range=ThresholdRange(max=0.39))])
            deadline = time.monotonic() + 30
            m = analysis.measure(spec, (), NAMES, 10)
            while m.verdict == "Inconclusive" and time.monotonic() < deadline:
                time.sleep(0.5)
                m = analysis.measure(spec, (), NAMES, 10)
    finally:
        server.shutdown()
    # errors / all requests = 0.1; p95 interpolates in the 0.1-0.4 bucket: 0.385.
    assert m.values["errors"] == pytest.approx(0.1)
    assert m.values["p95"] == pytest.approx(0.385)
    assert (m.verdict, m.failed) == ("Passed", [])


def test_addresses_name_the_fields_that_hold_them() -> None:
    spec = RolloutPolicySpec.model_validate({
        "target": {"inferenceService": "qa", "baseModel": "file:///m"}, "adapterSelector": {"family": "qa"},
        "analysis": {"prometheusAddress": "http://prom:9090", "metrics": [
            {"name": "e", "builtin": "errorRate", "thresholdRange": {"max": 1}},
            {"name": "c", "prometheus": {"address": "http://other:9090", "query": "vector(1)"}, "thresholdRange": {"min": 1}}]}})
    assert analysis.addresses(spec) == [("spec.analysis.prometheusAddress", "http://prom:9090"),
                                        ("spec.analysis.metrics[1].prometheus.address", "http://other:9090")]
    spec.analysis.prometheus_address = None
    assert analysis.addresses(spec) == [("spec.analysis.metrics[1].prometheus.address", "http://other:9090")]


def test_a_canary_whose_analysis_has_nothing_to_measure_is_named() -> None:
    """The default strategy (stepWeight 20) analyses after each weight: with no metrics defined,
    its first analysis could never pass, and the rollout says so before any traffic moves."""
    shorthand = steps.expand(Canary(step_weight=50))
    why = steps.unmeasured_analysis(shorthand, [])
    assert why is not None and why.startswith("step 2 (analysis) has no metric to measure"), why
    assert steps.unmeasured_analysis(shorthand, ["errors"]) is None
    written = steps.expand(Canary(steps=[CanaryStep(set_weight=50), CanaryStep(pause=Pause(duration="1s")),
                                         CanaryStep(set_weight=100)]))
    assert steps.unmeasured_analysis(written, []) is None  # nothing to analyse: a timed canary
    named = steps.expand(Canary(steps=[CanaryStep(set_weight=50), CanaryStep(analysis=StepAnalysis(metrics=["p95"])),
                                       CanaryStep(set_weight=100)]))
    assert steps.unmeasured_analysis(named, ["p95", "errors"]) is None
    assert steps.unmeasured_analysis(named, ["errors"]) is not None  # names a metric the policy lacks
