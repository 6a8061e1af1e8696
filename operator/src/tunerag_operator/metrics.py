"""Prometheus metrics of the operator itself, served on their own port.

Gauges that describe a resource (its phase, a FineTuneJob's progress, a VectorIndex's size) are
set from the resource as the API server holds it, on every watch event (`handlers.base.watch`),
so whoever wrote the status, a restarted operator shows the same values; all of a resource's
series go when it is deleted (`forget`). Counters of finished runs are incremented only by the
status write that records the run as finished, so a run is counted once however often its
observer runs, and never again after an operator restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

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

RESOURCE_PHASE = Gauge(
    "tunerag_resource_phase",
    "1 for the phase (status.phase) each tunerag resource is in; the series of its earlier phase is removed.",
    ["kind", "namespace", "name", "phase"],
)

FINETUNE_STEP = Gauge(
    "tunerag_finetune_step", "Optimizer steps done by the FineTuneJob's current run (status.progress.step).",
    ["namespace", "name"],
)
FINETUNE_PLANNED_STEPS = Gauge(
    "tunerag_finetune_planned_steps",
    "Optimizer steps planned for the FineTuneJob (status.progress.totalSteps); no series until they are known.",
    ["namespace", "name"],
)
FINETUNE_LOSS = Gauge(
    "tunerag_finetune_loss", "Latest training loss of the FineTuneJob (status.progress.loss).", ["namespace", "name"]
)
FINETUNE_TOKENS_PER_SECOND = Gauge(
    "tunerag_finetune_tokens_per_second",
    "Real (non-padding) tokens per second of the FineTuneJob's training (status.progress.tokensPerSecond).",
    ["namespace", "name"],
)
FINETUNE_ETA = Gauge(
    "tunerag_finetune_eta_seconds",
    "Estimated seconds until the FineTuneJob's last planned step (status.progress.etaSeconds); "
    "no series once the job has finished.",
    ["namespace", "name"],
)
FINETUNE_LAST_PROGRESS = Gauge(
    "tunerag_finetune_last_progress_timestamp_seconds",
    "Unix time the FineTuneJob last made progress: its step advanced or its phase changed. After an "
    "operator start, the newest time recorded on the object until the next change is seen.",
    ["namespace", "name"],
)

INDEX_DOCUMENTS = Gauge(
    "tunerag_index_documents", "Documents in the VectorIndex's live table version (status.documents).",
    ["namespace", "name"],
)
INDEX_CHUNKS = Gauge(
    "tunerag_index_chunks", "Chunks in the VectorIndex's live table version (status.chunks).", ["namespace", "name"]
)
INDEX_RUN_DOCUMENTS = Counter(
    "tunerag_index_run_documents",
    "Documents handled by finished indexing runs (status.lastRun), by change: added, updated, deleted, unchanged, skipped.",
    ["namespace", "name", "change"],
)
INDEX_RUN_SECONDS = Histogram(
    "tunerag_index_run_duration_seconds",
    "Wall time of finished indexing runs (succeeded or failed), from the Job's start to its end.",
    ["namespace", "name"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600),
)
INDEX_RUNS = Counter(
    "tunerag_index_runs", "Finished indexing runs by result: Succeeded, Failed.", ["namespace", "name", "result"]
)
INDEX_LAST_SUCCESS = Gauge(
    "tunerag_index_last_success_timestamp_seconds",
    "Unix time the VectorIndex's last successful run finished (status.lastIndexedTime).",
    ["namespace", "name"],
)
INDEX_REFRESH_INTERVAL = Gauge(
    "tunerag_index_refresh_interval_seconds",
    "spec.refresh.interval of the VectorIndex in seconds; no series without a periodic refresh.",
    ["namespace", "name"],
)

ROLLOUT_WEIGHT = Gauge(
    "tunerag_rollout_canary_weight", "Traffic percentage on the candidate adapter, by RolloutPolicy.", ["namespace", "name"]
)
ROLLOUT_OUTCOMES = Counter(
    "tunerag_rollout_outcomes_total", "Finished rollouts by outcome (Promoted, RolledBack).", ["namespace", "name", "outcome"]
)
ROLLOUT_ANALYSIS = Counter(
    "tunerag_rollout_analysis_total", "Analysis measurements by verdict.", ["namespace", "name", "verdict"]
)

INDEX_CHANGES = ("added", "updated", "deleted", "unchanged", "skipped")
FINISHED_FINETUNE_PHASES = ("Succeeded", "Rejected", "Failed")
_FINETUNE_PROGRESS: dict[str, Gauge] = {
    "step": FINETUNE_STEP, "totalSteps": FINETUNE_PLANNED_STEPS, "loss": FINETUNE_LOSS,
    "tokensPerSecond": FINETUNE_TOKENS_PER_SECOND, "etaSeconds": FINETUNE_ETA,
}
# The metrics labelled (namespace, name, ...) that belong to one resource of a kind.
_OWN_SERIES: dict[str, tuple[MetricWrapperBase, ...]] = {
    "FineTuneJob": (*_FINETUNE_PROGRESS.values(), FINETUNE_LAST_PROGRESS),
    "VectorIndex": (INDEX_DOCUMENTS, INDEX_CHUNKS, INDEX_RUN_DOCUMENTS, INDEX_RUN_SECONDS, INDEX_RUNS,
                    INDEX_LAST_SUCCESS, INDEX_REFRESH_INTERVAL),
    "RolloutPolicy": (ROLLOUT_WEIGHT, ROLLOUT_OUTCOMES, ROLLOUT_ANALYSIS),
}

# kopf runs sync handlers in threads: the read-modify-write of what was last exported is locked.
_lock = threading.Lock()
_phases: dict[tuple[str, str, str], str] = {}
_progress_seen: dict[tuple[str, str], tuple[Any, Any]] = {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _set_or_remove(gauge: Gauge, namespace: str, name: str, value: float | None) -> None:
    if value is None:
        gauge.remove(namespace, name)
    else:
        gauge.labels(namespace, name).set(value)


def set_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """tunerag_resource_phase: 1 for `phase`, and the resource's series of another phase removed
    (no series at all while it has no phase). Idempotent; safe from any thread."""
    key = (kind, namespace, name)
    with _lock:
        old = _phases.get(key)
        if phase:
            RESOURCE_PHASE.labels(kind, namespace, name, phase).set(1)
            _phases[key] = phase
        else:
            _phases.pop(key, None)
        if old and old != phase:
            RESOURCE_PHASE.remove(kind, namespace, name, old)


def forget(kind: str, namespace: str, name: str) -> None:
    """Removes every series of a deleted resource."""
    with _lock:
        _phases.pop((kind, namespace, name), None)
        if kind == "FineTuneJob":
            _progress_seen.pop((namespace, name), None)
        RESOURCE_PHASE.remove_by_labels({"kind": kind, "namespace": namespace, "name": name})
        for metric in _OWN_SERIES.get(kind, ()):
            metric.remove_by_labels({"namespace": namespace, "name": name})


def set_finetune_progress(namespace: str, name: str, phase: str | None, progress: Mapping[str, Any],
                          recorded_at: float) -> None:
    """The FineTuneJob's gauges from status.phase and status.progress. Progress is a change of the
    step or of the phase; the first time a job is seen (also after an operator start) its last
    progress is `recorded_at`, the newest time the object itself records."""
    finished = phase in FINISHED_FINETUNE_PHASES
    for key, gauge in _FINETUNE_PROGRESS.items():
        value = None if finished and key == "etaSeconds" else _number(progress.get(key))
        if key == "totalSteps" and value is not None and value <= 0:
            value = None  # the schema's default until the workload says: not planned yet
        _set_or_remove(gauge, namespace, name, value)
    seen = (phase, progress.get("step"))
    with _lock:
        before = _progress_seen.get((namespace, name))
        if before == seen:
            return
        _progress_seen[(namespace, name)] = seen
        FINETUNE_LAST_PROGRESS.labels(namespace, name).set(recorded_at if before is None else time.time())


def set_index_status(namespace: str, name: str, *, documents: Any, chunks: Any, last_success: float | None,
                     refresh_interval: float | None) -> None:
    """The VectorIndex's gauges; a value that is not known (yet) has no series."""
    _set_or_remove(INDEX_DOCUMENTS, namespace, name, _number(documents))
    _set_or_remove(INDEX_CHUNKS, namespace, name, _number(chunks))
    _set_or_remove(INDEX_LAST_SUCCESS, namespace, name, last_success)
    _set_or_remove(INDEX_REFRESH_INTERVAL, namespace, name, refresh_interval)


def count_index_run(namespace: str, name: str, result: str, seconds: float | None,
                    changes: Mapping[str, int] | None = None) -> None:
    """One finished indexing run. Call it only from the status write that records the run as
    finished, so that each run is counted once."""
    INDEX_RUNS.labels(namespace, name, result).inc()
    if seconds is not None:
        INDEX_RUN_SECONDS.labels(namespace, name).observe(max(seconds, 0.0))
    if changes is not None:
        for change in INDEX_CHANGES:
            INDEX_RUN_DOCUMENTS.labels(namespace, name, change).inc(int(changes.get(change) or 0))


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address)
