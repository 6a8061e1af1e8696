"""kopf settings: our own finalizer and annotation prefixes, events, deliberate watch timeouts."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tunerag_operator import bookkeeping, events, kubeapi
from tunerag_operator.api.common import GROUP
from tunerag_operator.config import OperatorConfig

FINALIZER = f"{GROUP}/finalizer"
WORKERS = 32
PEERING_GROUP = "kopf.dev"


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER
    # kopf's diff base and handler progress live under status.kopf, out of the user's annotation
    # budget (see bookkeeping).
    bookkeeping.configure(settings)
    events.report_refused_writes()
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


def configure_peering(settings: kopf.OperatorSettings, cfg: OperatorConfig) -> None:
    """Several replicas (chart replicaCount > 1): kopf peering keeps one active. Each replica
    keeps its record in the peering object fresh; the others pause (timers stopped, events not
    handled) while a live peer of higher priority is there, and resume once its record is older
    than `lifetime` seconds. The peering object is created here if missing (before kopf's
    peering starts), so a Helm install needs no custom resource of a CRD it installs itself."""
    settings.peering.lifetime = cfg.peering_lifetime
    settings.peering.stealth = True  # keep-alives are not logged; pauses and resumes are
    custom = client.CustomObjectsApi(kubeapi.api_client())
    body = {"apiVersion": f"{PEERING_GROUP}/v1", "metadata": {"name": cfg.peering}}
    for namespace in [None] if cfg.clusterwide else list(cfg.namespaces):
        try:
            if namespace is None:
                custom.create_cluster_custom_object(PEERING_GROUP, "v1", "clusterkopfpeerings", {**body, "kind": "ClusterKopfPeering"})
            else:
                custom.create_namespaced_custom_object(PEERING_GROUP, "v1", namespace, "kopfpeerings", {**body, "kind": "KopfPeering"})
        except ApiException as exc:
            if exc.status == 404:
                raise kopf.PermanentError(
                    "peering is on (TUNERAG_PEERING) but kopf's peering CRDs (kopf.dev) are not installed: install "
                    "them (chart value peering.installCRDs=true) or run one replica with peering.enabled=false") from None
            if exc.status != 409:  # 409: it exists already
                raise


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    cfg = memo.get("config") or OperatorConfig.defaults()
    if not cfg.clusterwide:
        # Watched namespaces are exact names: serve them as given. Scanning would list and watch
        # Namespaces, which a namespaced install does not grant (kopf falls back after a 403 and
        # retries the list, filling the audit log with refusals).
        settings.scanning.disabled = True
    if cfg.peering:
        configure_peering(settings, cfg)
