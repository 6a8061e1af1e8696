"""One analysis measurement (`rollout.analysis.measure`) against a real Prometheus.

A candidate that has served nothing yet has no series: Prometheus answers the query, with an empty
vector. That is "no data yet", Inconclusive (the rollout waits), never a pass, and told apart
from a Prometheus that does not answer at all.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from substrate.controlplane import free_port
from substrate.prometheus import Prometheus
from tunerag_operator.api.rolloutpolicy import Analysis
from tunerag_operator.rollout.analysis import measure


def _analysis(address: str, *metrics: dict[str, Any]) -> Analysis:
    return Analysis.model_validate({"interval": "30s", "prometheusAddress": address, "metrics": list(metrics)})


def _names() -> dict[str, str]:
    """A namespace no test has served from: no series of the serving metrics match it (the session's
    Prometheus may scrape other tests' servers)."""
    return {"namespace": f"t-{uuid.uuid4().hex[:8]}", "service": "qa", "candidate": "qa-v2", "stable": "qa-v1"}


ERRORS = {"name": "errors", "builtin": "errorRate", "thresholdRange": {"max": 0.05}}
LATENCY = {"name": "latency", "builtin": "latencyP95", "thresholdRange": {"max": 2.0}}


def _custom(name: str, address: str, promql: str, **bounds: float) -> dict[str, Any]:
    return {"name": name, "prometheus": {"address": address, "query": promql}, "thresholdRange": bounds}


def test_no_series_yet_is_inconclusive_no_data(prometheus: Prometheus) -> None:
    """The built-in metrics and a custom query over series that do not exist yet: Prometheus
    answers (success, empty vector), and each metric is Inconclusive with "no data yet"."""
    names = _names()
    assert prometheus.query(f'tunerag_serve_requests_total{{namespace="{names["namespace"]}"}}') == []
    unseen = _custom("unseen", prometheus.url,
                     'sum(rate(tunerag_serve_requests_total{namespace="{{namespace}}",adapter_version="{{candidate}}"}[1m]))',
                     min=0.0)
    out = measure(_analysis(prometheus.url, ERRORS, LATENCY, unseen), (), names, 30.0)
    assert (out.verdict, out.values, out.failed) == ("Inconclusive", {}, [])
    assert out.inconclusive == ["errors: no data yet", "latency: no data yet", "unseen: no data yet"]


@pytest.mark.parametrize(("given", "verdict", "values", "failed", "inconclusive"), [
    # data that passes beside no data: still waiting, the value recorded
    ((0.01, None), "Inconclusive", {"has-data": 0.01}, [], ["no-data: no data yet"]),
    # data that fails beside no data: a failure is not hidden by what is missing
    ((0.5, None), "Failed", {"has-data": 0.5}, ["has-data = 0.5 outside [, 0.05]"], ["no-data: no data yet"]),
    # the control: the same queries with data pass
    ((0.01, 0.02), "Passed", {"has-data": 0.01, "no-data": 0.02}, [], []),
])
def test_no_data_beside_data(prometheus: Prometheus, given: tuple[float, float | None], verdict: str,
                             values: dict[str, float], failed: list[str], inconclusive: list[str]) -> None:
    names = _names()
    present, absent = given
    second = f"vector({absent})" if absent is not None else 'tunerag_serve_requests_total{namespace="{{namespace}}"}'
    analysis = _analysis(prometheus.url, _custom("has-data", prometheus.url, f"vector({present})", max=0.05),
                         _custom("no-data", prometheus.url, second, max=0.05))
    out = measure(analysis, (), names, 30.0)
    assert (out.verdict, out.values, out.failed, out.inconclusive) == (verdict, values, failed, inconclusive)


def test_unreachable_prometheus_is_inconclusive_saying_so_not_no_data() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    out = measure(_analysis(dead, ERRORS), (), _names(), 30.0)
    assert (out.verdict, out.values, out.failed) == ("Inconclusive", {}, [])
    [why] = out.inconclusive
    assert why.startswith(f"errors: Prometheus at {dead} did not answer") and "no data" not in why, why
