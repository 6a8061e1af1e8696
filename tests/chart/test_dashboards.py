"""The chart's Grafana dashboards (charts/tunerag/dashboards/, shipped as ConfigMaps for Grafana's
sidecar) and its PrometheusRule: they render, every query names a metric and labels that exist,
every query is valid PromQL (promtool), and the alerts fire when they should (promtool test rules).

Metric names are checked against one catalog: the metrics defined in code (the operator's
`tunerag_operator.metrics`, the model server's `tunerag_workloads.serve.metrics`, read from the
objects themselves) plus PROPOSED, the operator metrics the dashboards and alerts need that the
operator does not export yet."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client.metrics
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import tunerag_operator.metrics as operator_metrics
from chart.conftest import CHART, Helm
from tunerag_workloads.serve.metrics import ServeMetrics

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# Labels Prometheus attaches to every scraped series (others, like namespace, may collide with
# the metrics' own and are not assumed).
TARGET_LABELS = {"job", "instance"}
# Grafana's variables, as a query sees them once substituted.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$namespace": ".*", "$service": ".*",
                     "$adapter_version": ".*"}
ALERTS = {"TuneragOperatorDown", "TuneragReconcileErrors", "TuneragFineTuneJobStuck", "TuneragIndexRefreshOverdue",
          "TuneragRolloutFailed", "TuneragServingErrorRateHigh"}
Obj = dict[str, Any]


@dataclass(frozen=True)
class MetricDef:
    type: str  # counter, gauge or histogram (prometheus_client's names)
    labels: tuple[str, ...]
    help: str


# Operator metrics that the dashboards and alerts use and tunerag_operator.metrics does not define
# yet. test_proposed_metrics_agree_with_the_code keeps them honest once they are added.
PROPOSED: dict[str, MetricDef] = {}


def _definitions(objects: Any) -> dict[str, MetricDef]:
    # prometheus_client keeps a metric's type and label names in these attributes only.
    return {m._name: MetricDef(m._type, tuple(m._labelnames), m._documentation)
            for m in objects if isinstance(m, MetricWrapperBase)}


def defined_metrics() -> dict[str, MetricDef]:
    """The operator's and the model server's metrics, from the objects in code."""
    use_created = prometheus_client.metrics._use_created  # ServeMetrics turns `_created` series off process-wide
    try:
        serve = ServeMetrics("ns", "svc", ["v1"])
    finally:
        prometheus_client.metrics._use_created = use_created
    return {**_definitions(vars(operator_metrics).values()), **_definitions(vars(serve).values())}


def exposition_names(name: str, metric: MetricDef) -> dict[str, bool]:
    """The series names Prometheus stores for a metric, each with whether it carries `le`."""
    if metric.type == "counter":
        return {f"{name}_total": False}
    if metric.type == "histogram":
        return {f"{name}_bucket": True, f"{name}_sum": False, f"{name}_count": False}
    return {name: False}


@pytest.fixture(scope="module")
def catalog() -> dict[str, tuple[MetricDef, bool]]:
    """Every series name a query may use -> (its metric, whether it has `le`)."""
    metrics = {**PROPOSED, **defined_metrics()}
    return {series: (m, le) for name, m in metrics.items() for series, le in exposition_names(name, m).items()}


SELECTOR = re.compile(r"\b(tunerag_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def query_problems(expr: str, catalog: dict[str, tuple[MetricDef, bool]]) -> list[str]:
    """Unknown metrics, and labels that none of the query's metrics carries."""
    problems, labels = [], set(TARGET_LABELS)
    for name, matchers in SELECTOR.findall(expr):
        if name not in catalog:
            problems.append(f"unknown metric {name}")
            continue
        metric, has_le = catalog[name]
        own = set(metric.labels) | TARGET_LABELS | ({"le"} if has_le else set())
        labels |= own
        problems += [f"{name} has no label {label}" for label in MATCHER.findall(matchers) if label not in own]
    for group in GROUPING.findall(expr):
        problems += [f"no metric of the query has label {g}" for g in (x.strip() for x in group.split(",")) if g and g not in labels]
    return problems


def dashboard_queries(dashboard: Obj) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"{dashboard['uid']} panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), *[a-z_]+\)|label_values\(([a-z_]+)\)", var["query"]["query"])
            assert inner, f"{dashboard['uid']} variable {var['name']}: only label_values(...) queries are used"
            yield f"{dashboard['uid']} variable {var['name']}", inner.group(1) or inner.group(2)


def substituted(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a Grafana variable not substituted in {expr}"
    return expr


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: .ci/setup installs Debian's prometheus package, which ships it"
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


def rendered_rules(helm: Helm, *values: str) -> Obj:
    docs = helm.render("--set", "prometheusRule.enabled=true", *values)
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return rule


def write_rule_file(rule: Obj, path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------
# Dashboards
# --------------------------------------------------------------------------------------------
def test_dashboards_are_configmaps_for_the_grafana_sidecar(helm: Helm) -> None:
    def configmaps(*values: str) -> list[Obj]:
        return [d for d in helm.render(*values) if d["kind"] == "ConfigMap"]

    assert configmaps() == [], "off by default"
    maps = {c["metadata"]["name"]: c for c in configmaps("--set", "dashboards.enabled=true")}
    assert set(maps) == {"t-tunerag-dashboard-operator", "t-tunerag-dashboard-serving"}
    for path in DASHBOARDS:
        cm = maps[f"t-tunerag-dashboard-{path.stem.removeprefix('tunerag-')}"]
        assert cm["metadata"]["namespace"] == "tunerag-system"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tunerag"
        assert set(cm["data"]) == {path.name}
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())
        assert len(cm["data"][path.name].encode()) < 512 * 1024, "a ConfigMap holds at most 1 MiB"

    custom = configmaps("--set", "dashboards.enabled=true", "--set", "dashboards.label=tunerag.dev/dashboard",
                        "--set-string", "dashboards.labelValue=yes", "--set", "dashboards.namespace=monitoring",
                        "--set", "dashboards.annotations.grafana_folder=ML platform", "--set", "dashboards.labels.team=ml")
    for cm in custom:
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["labels"]["tunerag.dev/dashboard"] == "yes" and "grafana_dashboard" not in cm["metadata"]["labels"]
        assert cm["metadata"]["labels"]["team"] == "ml"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "ML platform"}


def test_dashboards_are_well_formed() -> None:
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids and len(board["uid"]) <= 40, f"{path.name}: uid"
        uids.add(board["uid"])
        assert board["title"].startswith("tunerag / ") and "tunerag" in board["tags"]
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        ids, cells = set(), set()
        for panel in board["panels"]:
            where = f"{path.name} panel {panel['id']} {panel['title']!r}"
            assert panel["id"] not in ids, f"{where}: duplicate id"
            ids.add(panel["id"])
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"{where}: outside the 24 columns"
            area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not area & cells, f"{where}: overlaps another panel"
            cells |= area
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, f"{where}: datasource"
            assert panel["targets"], f"{where}: no query"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs), f"{where}: duplicate refId"
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"]), f"{where}: target datasource"


def test_dashboard_queries_use_known_metrics_and_labels(catalog: dict[str, tuple[MetricDef, bool]]) -> None:
    problems = [f"{where}: {p}" for path in DASHBOARDS for where, expr in dashboard_queries(json.loads(path.read_text()))
                for p in query_problems(expr, catalog)]
    assert problems == []


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query, each as the expression of a recording rule."""
    rules = [{"record": f"dashboard:query_{i}", "expr": substituted(expr)}
             for i, (_, expr) in enumerate(q for path in DASHBOARDS for q in dashboard_queries(json.loads(path.read_text())))]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_metric_in_code_is_on_a_dashboard(catalog: dict[str, tuple[MetricDef, bool]]) -> None:
    shown = {name for path in DASHBOARDS for _, expr in dashboard_queries(json.loads(path.read_text()))
             for name, _ in SELECTOR.findall(expr)}
    missing = {name for name, metric in defined_metrics().items() if not set(exposition_names(name, metric)) & shown}
    assert missing == set(), "metrics no dashboard shows"


def test_proposed_metrics_agree_with_the_code() -> None:
    """Once a proposed metric is defined in code, with the same type and labels, it can leave
    PROPOSED; until then nothing else may define that name differently."""
    defined = defined_metrics()
    clashes = {name: (PROPOSED[name], defined[name]) for name in PROPOSED.keys() & defined.keys()
               if (PROPOSED[name].type, PROPOSED[name].labels) != (defined[name].type, defined[name].labels)}
    assert clashes == {}


# --------------------------------------------------------------------------------------------
# PrometheusRule
# --------------------------------------------------------------------------------------------
def test_prometheus_rule_renders_and_promtool_accepts_it(helm: Helm, catalog: dict[str, tuple[MetricDef, bool]],
                                                         tmp_path: Path) -> None:
    assert not [d for d in helm.render() if d["kind"] == "PrometheusRule"], "off by default"
    rule = rendered_rules(helm, "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.labels.release=prom",
                          "--set", "prometheusRule.alertLabels.team=ml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == ALERTS
    for name, alert in alerts.items():
        assert alert["labels"]["team"] == "ml" and alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        assert query_problems(alert["expr"], catalog) == [], name
    proc = run_promtool("check", "rules", str(write_rule_file(rule, tmp_path / "rules.yaml")))
    assert proc.returncode == 0 and "SUCCESS: 6 rules found" in proc.stdout, proc.stdout + proc.stderr

    # Without the chart's ServiceMonitor the operator's job name is unknown: no OperatorDown.
    plain = rendered_rules(helm)
    assert {r["alert"] for g in plain["spec"]["groups"] for r in g["rules"]} == ALERTS - {"TuneragOperatorDown"}
    assert helm.run("lint", "--strict", str(CHART), "--set", "prometheusRule.enabled=true", "--set", "dashboards.enabled=true",
                    "--set", "serviceMonitor.enabled=true").returncode == 0


def series(name: str, labels: Obj, values: str) -> Obj:
    return {"series": name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def fires(alert: str, at: str, *expected: Obj) -> Obj:
    return {"eval_time": at, "alertname": alert, "exp_alerts": list(expected)}


def alert(summary: str, severity: str = "warning", **labels: str) -> Obj:
    return {"exp_labels": {"severity": severity, **labels}, "exp_annotations": {"summary": summary}}


def test_alerts_fire_when_they_should(helm: Helm, tmp_path: Path) -> None:
    """promtool's rule unit tests, one scenario per alert (time starts at 0 and steps 1m; the
    descriptions are left out of the comparison, the summaries show the labels substituted)."""
    rule = rendered_rules(helm, "--set", "serviceMonitor.enabled=true")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            r["annotations"].pop("description")
    write_rule_file(rule, tmp_path / "rules.yaml")
    ml = {"namespace": "ml"}
    tests = [
        {"input_series": [series("up", {"job": "t-tunerag-metrics", "namespace": "tunerag-system"}, "1x10 0x30")],
         "alert_rule_test": [
             fires("TuneragOperatorDown", "15m"),  # pending for 10m first
             fires("TuneragOperatorDown", "25m", alert("The tunerag operator is down or not scraped.", "critical")),
         ]},
        {"input_series": [
            series("tunerag_reconcile_errors_total", {"kind": "VectorIndex", "reason": "SecretNotFound"}, "0+4x60"),
            series("tunerag_reconcile_errors_total", {"kind": "FineTuneJob", "reason": "InvalidSpec"}, "0+1x5 5x55"),  # healed
         ], "alert_rule_test": [
             fires("TuneragReconcileErrors", "10m"),
             fires("TuneragReconcileErrors", "30m", alert("Reconciles of VectorIndex keep failing with SecretNotFound.",
                                                          kind="VectorIndex", reason="SecretNotFound")),
         ]},
        {"input_series": [
            # "running" progresses every minute; "stalled" stops at 10m; "done" stopped but Succeeded.
            series("tunerag_finetune_last_progress_timestamp_seconds", {**ml, "name": "running"}, "0+60x60"),
            series("tunerag_finetune_last_progress_timestamp_seconds", {**ml, "name": "stalled"}, "0+60x10 600x50"),
            series("tunerag_finetune_last_progress_timestamp_seconds", {**ml, "name": "done"}, "0x60"),
            series("tunerag_resource_phase", {"kind": "FineTuneJob", **ml, "name": "running", "phase": "Training"}, "1x60"),
            series("tunerag_resource_phase", {"kind": "FineTuneJob", **ml, "name": "stalled", "phase": "Training"}, "1x60"),
            series("tunerag_resource_phase", {"kind": "FineTuneJob", **ml, "name": "done", "phase": "Succeeded"}, "1x60"),
         ], "alert_rule_test": [
             fires("TuneragFineTuneJobStuck", "42m"),  # stalled 32m: past 30m, not yet for 5m
             fires("TuneragFineTuneJobStuck", "50m", alert("FineTuneJob ml/stalled makes no progress.", **ml, name="stalled")),
         ]},
        {"input_series": [
            # Refresh every 10m (overdue after 20m): "fresh" keeps succeeding, "stale" last succeeded
            # at 0; "manual" has no periodic refresh.
            series("tunerag_index_last_success_timestamp_seconds", {**ml, "name": "fresh"}, "0+60x60"),
            series("tunerag_index_last_success_timestamp_seconds", {**ml, "name": "stale"}, "0x60"),
            series("tunerag_index_last_success_timestamp_seconds", {**ml, "name": "manual"}, "0x60"),
            series("tunerag_index_refresh_interval_seconds", {**ml, "name": "fresh"}, "600x60"),
            series("tunerag_index_refresh_interval_seconds", {**ml, "name": "stale"}, "600x60"),
         ], "alert_rule_test": [
             fires("TuneragIndexRefreshOverdue", "25m"),
             fires("TuneragIndexRefreshOverdue", "40m", alert("VectorIndex ml/stale is overdue for a refresh.", **ml, name="stale")),
         ]},
        {"input_series": [
            # A policy's first rollback creates its series at 1; another policy promotes.
            series("tunerag_rollout_outcomes_total", {**ml, "name": "router", "outcome": "RolledBack"}, "_x10 1x50"),
            series("tunerag_rollout_outcomes_total", {**ml, "name": "chat", "outcome": "Promoted"}, "_x10 1x50"),
         ], "alert_rule_test": [
             fires("TuneragRolloutFailed", "5m"),
             fires("TuneragRolloutFailed", "12m", alert("A rollout of RolloutPolicy ml/router ended RolledBack.",
                                                        **ml, name="router", outcome="RolledBack")),
             fires("TuneragRolloutFailed", "30m"),  # resolves once the rollback is 15m old
         ]},
        {"input_series": [
            # v2 fails 10% of its requests, v1 none.
            series("tunerag_serve_requests_total", {**ml, "service": "router", "adapter_version": "v1", "endpoint": "predict",
                                                    "outcome": "ok"}, "0+100x40"),
            series("tunerag_serve_requests_total", {**ml, "service": "router", "adapter_version": "v1", "endpoint": "predict",
                                                    "outcome": "error"}, "0x40"),
            series("tunerag_serve_requests_total", {**ml, "service": "router", "adapter_version": "v2", "endpoint": "predict",
                                                    "outcome": "ok"}, "0+90x40"),
            series("tunerag_serve_requests_total", {**ml, "service": "router", "adapter_version": "v2", "endpoint": "predict",
                                                    "outcome": "error"}, "0+10x40"),
         ], "alert_rule_test": [
             fires("TuneragServingErrorRateHigh", "8m"),
             fires("TuneragServingErrorRateHigh", "20m", alert("ml/router fails 10% of requests on v2.", "critical",
                                                               **ml, service="router", adapter_version="v2")),
         ]},
    ]
    path = tmp_path / "alerts-test.yaml"
    path.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                    "tests": [{"interval": "1m", **t} for t in tests]}, sort_keys=False))
    proc = run_promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "dashboards.label=not a label"], "dashboards.label: Does not match pattern"),
    (["--set", "dashboards.enable=true"], "Additional property enable is not allowed"),
    (["--set", "prometheusRule.thresholds.servingErrorRatio=2"], "servingErrorRatio: Must be less than or equal to 1"),
    (["--set", "prometheusRule.thresholds.fineTuneJobStuckSeconds=10"], "fineTuneJobStuckSeconds: Must be greater than or equal to 60"),
], ids=["label-key", "unknown-key", "error-ratio", "stuck-seconds"])
def test_values_schema_rejects_bad_monitoring_values(helm: Helm, values: list[str], message: str) -> None:
    proc = helm.run("template", "t", str(CHART), *values, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
