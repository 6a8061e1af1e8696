"""Startup: configuration, adapters (verified before any weights load), model, retrieval and the
exchange log; then uvicorn until SIGTERM, which finishes the requests in flight and drains the log.

A failure the user can fix (bad configuration, missing or altered adapter, adapter for another
base model, 4-bit loading unavailable) prints one line `error: <Reason>: <message>` on stderr and
exits with code 2, before the port opens; the database URL never appears in it.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.serve.config import BASE, ServeConfig, load_config, masker

if TYPE_CHECKING:  # torch is imported only once the configuration is known to be valid
    from tunerag_workloads.serve.exchange import Responder


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if value < 0:
        raise WorkloadError("InvalidConfig", f"{name} must be a non-negative number, not {text!r}")
    return value


def build(config: ServeConfig, database_url: str | None, work_dir: Path,
          environ: Mapping[str, str] | None = None) -> Responder:
    """Loads everything the configuration names; raises WorkloadError for what the user can fix."""
    from tunerag_workloads.serve.artifacts import fetch_adapter
    from tunerag_workloads.serve.engine import load_engine
    from tunerag_workloads.serve.exchange import Responder
    from tunerag_workloads.serve.feedback import FeedbackLog
    from tunerag_workloads.serve.metrics import ServeMetrics
    from tunerag_workloads.serve.rag import Retriever

    env = os.environ if environ is None else environ
    queue_size = int(_number(env, "TUNERAG_FEEDBACK_QUEUE_SIZE", 10000)) or 1
    retry_seconds = _number(env, "TUNERAG_FEEDBACK_RETRY_SECONDS", 60)
    adapters = [fetch_adapter(ref, work_dir) for ref in config.adapters]
    engine = load_engine(config, adapters, work_dir)
    metrics = ServeMetrics(config.namespace, config.service, [*engine.adapters, *([BASE] if engine.has_base else [])])
    mask = masker(database_url)
    retriever = log = None
    if config.retrieval is not None and database_url:
        retriever = Retriever(database_url, config.retrieval, mask=mask, observe=metrics.retrieval)
    if config.feedback is not None and database_url:
        log = FeedbackLog(database_url, config.feedback.schema_, config.feedback.table, on_drop=metrics.dropped,
                          mask=mask, queue_size=queue_size, retry_seconds=retry_seconds)
    return Responder(config, engine, metrics, retriever, log)


def _stop(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already on the way out
    raise SystemExit(0)


def main(environ: Mapping[str, str] | None = None) -> int:
    # SIGTERM while loading: stop at once (the temporary folder is still removed). While serving,
    # uvicorn handles it (no new connections, requests in flight finish, the log drains), then
    # re-raises it: this handler turns that into exit code 0.
    signal.signal(signal.SIGTERM, _stop)
    env = os.environ if environ is None else environ
    mask = masker(env.get("TUNERAG_DATABASE_URL"))
    try:
        config, url, port = load_config(env)
        host = env.get("TUNERAG_SERVE_HOST", "0.0.0.0")
        drain = _number(env, "TUNERAG_SERVE_DRAIN_SECONDS", 10)
        with tempfile.TemporaryDirectory(prefix="tunerag-serve-") as tmp:
            responder = build(config, url, Path(tmp), env)
            _serve(responder, host, port, drain)
    except WorkloadError as exc:
        print(f"error: {exc.reason}: {mask(exc.message)}", file=sys.stderr, flush=True)
        return 2
    return 0


def run() -> None:
    """`python -m tunerag_workloads.serve`: main(), then exit without the interpreter's teardown.
    By then the requests are answered, the log drained and the temporary folder removed; the
    teardown of torch and transformers would only add seconds to every pod termination."""
    try:
        code = main()
    except SystemExit as stop:  # SIGTERM, see _stop
        code = stop.code if isinstance(stop.code, int) else int(bool(stop.code))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve(responder: Responder, host: str, port: int, drain: float) -> None:
    import uvicorn

    from tunerag_workloads.serve.app import create_app

    config = responder.config
    if (merged := config.merged) is not None:
        parts = [f"merged model {merged.uri} ({merged.format}) as {merged.name}, no base model", f"on {responder.engine.device}"]
    else:
        parts = [f"base {config.base_model}" + (" (nf4)" if config.load_in_4bit else ""),
                 f"adapters {list(responder.engine.adapters)} (default {config.default_adapter})",
                 f"on {responder.engine.device}"]
    if responder.retriever is not None:
        problem = responder.retriever.warm_up()
        parts.append(f"retrieval {config.retrieval.schema_}.{config.retrieval.table}" if config.retrieval else "")
        if problem:
            print(f"warning: retrieval is not available yet ({problem}); requests get 503 until it is",
                  file=sys.stderr, flush=True)
    if config.feedback is not None:
        parts.append(f"exchange log {config.feedback.schema_}.{config.feedback.table}")
    print(f"tunerag serve {config.namespace}/{config.service}: " + ", ".join(p for p in parts if p)
          + f"; listening on {host}:{port}", flush=True)
    app = create_app(responder, drain_seconds=drain)
    signal.signal(signal.SIGTERM, _stop)  # again: importing the retrieval stack may have replaced it
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
