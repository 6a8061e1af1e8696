"""Operator configuration from command-line flags and TUNERAG_* environment variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...]
    health_port: int
    metrics_port: int
    workloads_image: str
    log_format: str
    verbose: bool
    retry_delay: float = 15.0
    prometheus_allow: tuple[str, ...] = ()  # Prometheus base URLs analyses may query; empty: any (not link-local)
    peering: str = ""  # kopf peering object name; empty runs standalone (one replica)
    peering_lifetime: int = 30

    @classmethod
    def defaults(cls) -> OperatorConfig:
        return parse([])

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def parse(argv: list[str] | None = None) -> OperatorConfig:
    env = os.environ
    p = argparse.ArgumentParser(prog="tunerag-operator", description="Run the tunerag operator.")
    p.add_argument("--namespaces", default=env.get("TUNERAG_NAMESPACES", ""),
                   help="comma-separated namespaces to watch; empty watches the whole cluster")
    p.add_argument("--health-port", type=int, default=int(env.get("TUNERAG_HEALTH_PORT", "8080")),
                   help="port of /healthz (liveness and readiness); 0 disables it")
    p.add_argument("--metrics-port", type=int, default=int(env.get("TUNERAG_METRICS_PORT", "9090")),
                   help="port of the Prometheus /metrics endpoint; 0 disables it")
    p.add_argument("--workloads-image", default=env.get("TUNERAG_WORKLOADS_IMAGE", "ghcr.io/tunerag/workloads:0.1.0"),
                   help="image of the training, indexing and serving workloads")
    p.add_argument("--log-format", choices=["json", "plain"], default=env.get("TUNERAG_LOG_FORMAT", "json"))
    p.add_argument("--retry-delay", type=float, default=float(env.get("TUNERAG_RETRY_DELAY", "15")),
                   help="seconds between re-checks of a resource whose references are missing")
    p.add_argument("--prometheus-allow", default=env.get("TUNERAG_PROMETHEUS_ALLOW", ""),
                   help="comma-separated Prometheus base URLs that analyses may query (http://host admits any "
                        "port); empty admits any address that is not link-local")
    p.add_argument("--peering", default=env.get("TUNERAG_PEERING", ""),
                   help="name of the kopf peering object shared by the replicas: the oldest replica reconciles, "
                        "the others wait and take over when it stops; empty runs standalone (one replica)")
    p.add_argument("--peering-lifetime", type=int, default=int(env.get("TUNERAG_PEERING_LIFETIME", "30")),
                   help="seconds a replica's peering record stays valid; a standby takes over at most this long "
                        "after the active replica died")
    p.add_argument("--verbose", action="store_true", default=env.get("TUNERAG_VERBOSE") == "1")
    a = p.parse_args(argv)
    namespaces = tuple(n.strip() for n in a.namespaces.split(",") if n.strip())
    return OperatorConfig(
        namespaces, a.health_port, a.metrics_port, a.workloads_image, a.log_format, a.verbose, a.retry_delay,
        tuple(u.strip() for u in a.prometheus_allow.split(",") if u.strip()), a.peering.strip(), a.peering_lifetime,
    )
