"""pytest fixtures for the backing services: PostgreSQL (pgvector) and Prometheus.

Loaded from `tests/conftest.py` via `pytest_plugins`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from substrate.postgres import Postgres
from substrate.prometheus import Prometheus


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the session (127.0.0.1, password auth, pgvector available)."""
    with Postgres() as pg:
        yield pg


@pytest.fixture
def pg_database(postgres: Postgres) -> Iterator[str]:
    """URI of a fresh, empty database for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    uri = postgres.create_database(name)
    yield uri
    if postgres.pid is not None:
        postgres.drop_database(name)


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One Prometheus server for the session, no targets yet (see `Prometheus.set_targets`)."""
    with Prometheus(tmp_path_factory.mktemp("prometheus")) as prom:
        yield prom
