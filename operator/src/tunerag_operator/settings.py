"""kopf settings: our own finalizer and annotation prefixes, events, deliberate watch timeouts."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from tunerag_operator.api.common import GROUP

FINALIZER = f"{GROUP}/finalizer"
WORKERS = 32


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER
    # Progress and diff-base live in annotations: the structural status schema would prune
    # anything kopf wrote under status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = True
    settings.posting.level = logging.INFO
    # Watches are re-opened every few minutes even when quiet, so a silently dropped connection
    # (API server restart, proxy timeout) is noticed within bounded time.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 15
    settings.networking.request_timeout = 60
    settings.batching.error_delays = (1, 2, 5, 10, 20, 30)
    # Handlers are synchronous and wait on the API server, not the CPU: a larger pool keeps a burst
    # of creations from queueing behind a few threads (tests/benchmarks/operator_load.py).
    settings.execution.max_workers = WORKERS
    # Single active operator per cluster by default; the chart runs one replica.
    settings.peering.standalone = True


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)
