"""The server's Prometheus metrics, in a registry of its own (served at /metrics with the process
collectors). `adapter_version` is the AdapterVersion's name, or "base"."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

ENDPOINTS = ("predict", "completions", "chat_completions")
OUTCOMES = ("ok", "error")  # error: a server-side failure (5xx); client errors (4xx) are not counted
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


class ServeMetrics:
    def __init__(self, namespace: str, service: str, adapter_versions: Iterable[str]) -> None:
        # no `_created` series beside every counter (a process-wide switch)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)
        self._ids = {"namespace": namespace, "service": service}
        r = self.registry
        self.requests = Counter("tunerag_serve_requests", "Exchanges answered, by outcome (error: 5xx).",
                                ["namespace", "service", "adapter_version", "endpoint", "outcome"], registry=r)
        self.request_seconds = Histogram("tunerag_serve_request_seconds", "Time to answer an exchange (retrieval included).",
                                         ["namespace", "service", "adapter_version", "endpoint"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("tunerag_serve_tokens", "Prompt (in) and generated (out) tokens.",
                              ["namespace", "service", "adapter_version", "direction"], registry=r)
        self.retrieval_seconds = Histogram("tunerag_serve_retrieval_seconds", "Time to retrieve the chunks of a question.",
                                           ["namespace", "service"], buckets=LATENCY_BUCKETS, registry=r)
        self.feedback = Counter("tunerag_serve_feedback", "Feedback posted on exchanges, by label.",
                                ["namespace", "service", "adapter_version", "label"], registry=r)
        self.log_dropped = Counter("tunerag_serve_feedback_log_dropped",
                                   "Log entries (exchanges, feedback) dropped: database down too long, or queue full.",
                                   ["namespace", "service"], registry=r)
        for version in adapter_versions:  # series exist from the start, so rate() has data
            for endpoint in ENDPOINTS:
                for outcome in OUTCOMES:
                    self.requests.labels(**self._ids, adapter_version=version, endpoint=endpoint, outcome=outcome)
                self.request_seconds.labels(**self._ids, adapter_version=version, endpoint=endpoint)
            for direction in ("in", "out"):
                self.tokens.labels(**self._ids, adapter_version=version, direction=direction)
            for label in ("positive", "negative"):
                self.feedback.labels(**self._ids, adapter_version=version, label=label)
        self.log_dropped.labels(**self._ids)
        self.retrieval_seconds.labels(**self._ids)

    def request(self, adapter_version: str, endpoint: str, outcome: str, seconds: float) -> None:
        self.requests.labels(**self._ids, adapter_version=adapter_version, endpoint=endpoint, outcome=outcome).inc()
        self.request_seconds.labels(**self._ids, adapter_version=adapter_version, endpoint=endpoint).observe(seconds)

    def count_tokens(self, adapter_version: str, tokens_in: int, tokens_out: int) -> None:
        self.tokens.labels(**self._ids, adapter_version=adapter_version, direction="in").inc(tokens_in)
        self.tokens.labels(**self._ids, adapter_version=adapter_version, direction="out").inc(tokens_out)

    def retrieval(self, seconds: float) -> None:
        self.retrieval_seconds.labels(**self._ids).observe(seconds)

    def count_feedback(self, adapter_version: str, label: str) -> None:
        self.feedback.labels(**self._ids, adapter_version=adapter_version, label=label).inc()

    def dropped(self, n: int = 1) -> None:
        self.log_dropped.labels(**self._ids).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
