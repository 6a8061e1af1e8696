"""Entry point: `python -m tunerag_operator` or the `tunerag-operator` console script."""

from __future__ import annotations

import logging
import random
import time

import kopf

from tunerag_operator import config, metrics


def main(argv: list[str] | None = None) -> None:
    cfg = config.parse(argv)
    kopf.configure(
        verbose=cfg.verbose,
        log_format=kopf.LogFormat.JSON if cfg.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    import tunerag_operator.handlers
    import tunerag_operator.settings  # noqa: F401 - registers the startup settings

    if cfg.metrics_port:
        metrics.serve(cfg.metrics_port)
    kopf.run(
        clusterwide=cfg.clusterwide,
        namespaces=cfg.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz" if cfg.health_port else None,
        standalone=not cfg.peering,
        peering_name=cfg.peering or None,
        priority=_priority(),
        memo=kopf.Memo(config=cfg),
    )


def _priority() -> int:
    """kopf pauses a replica that sees a peer of higher *or equal* priority, so priorities must
    differ: the earlier a replica started, the higher its priority (the active replica stays
    active when another starts), with a random tie-breaker for replicas started the same second."""
    return (10**10 - int(time.time())) * 1000 + random.randrange(1000)


if __name__ == "__main__":
    main()
