"""The backing services start for real: PostgreSQL with pgvector, and Prometheus scraping a target."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

import psycopg
import pytest

from substrate.postgres import Postgres
from substrate.prometheus import Prometheus

T = TypeVar("T")
COUNTER = "tunerag_test_requests_total"


def wait_for(probe: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.2) -> T:
    """Calls `probe` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


def test_vector_cosine_order(pg_database: str) -> None:
    with psycopg.connect(pg_database) as conn:
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE TABLE docs (id text PRIMARY KEY, embedding vector(3))")
        conn.execute(
            "INSERT INTO docs VALUES ('x', '[1,0,0]'), ('xy', '[1,1,0]'), ('y', '[0,1,0]'), ('neg', '[-1,0,0]')"
        )
        rows = conn.execute("SELECT id FROM docs ORDER BY embedding <=> '[1,0.1,0]' LIMIT 4").fetchall()
    assert [r[0] for r in rows] == ["x", "xy", "y", "neg"]


def test_databases_are_isolated(postgres: Postgres, pg_database: str) -> None:
    other = postgres.create_database("isolated_other")
    try:
        with psycopg.connect(pg_database) as conn:
            conn.execute("CREATE TABLE only_here (id int)")
        with psycopg.connect(other) as conn:
            found = conn.execute("SELECT to_regclass('only_here')").fetchone()
        assert found == (None,)
    finally:
        postgres.drop_database("isolated_other")


def test_password_is_required(postgres: Postgres) -> None:
    assert postgres.uri.startswith("postgresql://tunerag:")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.uri.replace(postgres.password, "wrong"), connect_timeout=5).close()


class _Metrics(BaseHTTPRequestHandler):
    value = 0

    def do_GET(self) -> None:
        body = f"# HELP {COUNTER} Requests.\n# TYPE {COUNTER} counter\n{COUNTER} {self.value}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def metrics_target(prometheus: Prometheus) -> Iterator[str]:
    """A loopback /metrics endpoint exposing COUNTER = 42, registered as the only scrape target."""
    handler = type("Metrics", (_Metrics,), {"value": 42})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    target = f"127.0.0.1:{server.server_address[1]}"
    prometheus.set_targets([target])
    try:
        yield target
    finally:
        prometheus.set_targets([])
        server.shutdown()
        server.server_close()


def _counter_value(prometheus: Prometheus, target: str) -> float | None:
    result = prometheus.query(f'{COUNTER}{{instance="{target}"}}')
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_counter(prometheus: Prometheus, metrics_target: str) -> None:
    assert wait_for(lambda: _counter_value(prometheus, metrics_target)) == 42.0


def test_prometheus_restarts_on_same_url(prometheus: Prometheus, metrics_target: str) -> None:
    url = prometheus.url
    wait_for(lambda: _counter_value(prometheus, metrics_target))
    prometheus.stop()
    with pytest.raises(OSError):
        prometheus.query("up")
    prometheus.start()
    assert prometheus.url == url
    assert wait_for(lambda: _counter_value(prometheus, metrics_target)) == 42.0
    up = wait_for(lambda: prometheus.query(f'up{{instance="{metrics_target}"}}'))
    assert up[0]["value"][1] == "1"


def test_postgres_restarts_with_data(postgres: Postgres, pg_database: str) -> None:
    with psycopg.connect(pg_database) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    uri = postgres.uri
    postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_database, connect_timeout=2).close()
    postgres.start()
    assert postgres.uri == uri
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT id FROM kept").fetchall() == [(7,)]
