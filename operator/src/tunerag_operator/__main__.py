"""Entry point: `python -m tunerag_operator` or the `tunerag-operator` console script."""

from __future__ import annotations

import logging

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
        standalone=True,
        memo=kopf.Memo(config=cfg),
    )


if __name__ == "__main__":
    main()
