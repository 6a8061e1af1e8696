"""Prometheus metrics of the operator itself, served on their own port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "tunerag_reconcile_total", "Reconciles by kind and result.", ["kind", "result"]
)
RECONCILE_ERRORS = Counter(
    "tunerag_reconcile_errors_total", "Reconciles that ended in an error condition, by kind and reason.",
    ["kind", "reason"],
)
RECONCILE_SECONDS = Histogram(
    "tunerag_reconcile_duration_seconds", "Time spent in one reconcile, by kind.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address)

ROLLOUT_WEIGHT = Gauge(
    "tunerag_rollout_canary_weight", "Traffic percentage on the candidate adapter, by RolloutPolicy.", ["namespace", "name"]
)
ROLLOUT_OUTCOMES = Counter(
    "tunerag_rollout_outcomes_total", "Finished rollouts by outcome (Promoted, RolledBack).", ["namespace", "name", "outcome"]
)
ROLLOUT_ANALYSIS = Counter(
    "tunerag_rollout_analysis_total", "Analysis measurements by verdict.", ["namespace", "name", "verdict"]
)
