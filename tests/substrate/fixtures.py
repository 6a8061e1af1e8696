"""pytest fixtures for the backing services: PostgreSQL (pgvector) and Prometheus, and the
JobRunner that plays the Job controller and a kubelet on the local control plane.

Loaded from `tests/conftest.py` via `pytest_plugins`, so every test folder can use them.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from substrate.jobrunner import JobRunner
from substrate.postgres import Postgres
from substrate.prometheus import Prometheus

ROOT = Path(__file__).resolve().parents[2]


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


def runner_env() -> dict[str, str]:
    """What a Job's process needs on this machine: this interpreter first on PATH, and the
    project's sources importable (in a cluster both come from the image)."""
    return {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("operator/src", "workloads/src", "tests")),
        # No model hub is reachable here: models load from local paths only.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # Tests that point a workload at a dead database should not wait the production 120 s.
        "TUNERAG_DB_CONNECT_BUDGET_SECONDS": "4",
    }


@pytest.fixture(scope="session")
def job_runner(api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobRunner]:
    """Plays the Job controller, the scheduler and a kubelet (node "jobrunner", with pod logs
    through the API server) for every namespace of the session's control plane; see
    substrate.jobrunner."""
    with JobRunner(api, workdir=tmp_path_factory.mktemp("jobrunner"), env_overrides=runner_env()) as runner:
        yield runner


from substrate.kserve import KServeController  # noqa: E402  (appended with its fixture)


@pytest.fixture(scope="session")
def kserve(
    api: client.ApiClient, kserve_crds: None, job_runner: JobRunner, prometheus: Prometheus,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KServeController]:
    """Plays KServe's controller, Knative Serving / Deployments and the ingress for every
    namespace of the session's control plane (substrate.kserve): each InferenceService's predictor
    container runs as a local process (prepared by `job_runner`'s kubelet code, so its PVCs are
    the runner's claim folders), behind a loopback router at `status.url`; an InferenceGraph
    Splitter gets a router too; status is written as KServe writes it; the ready processes are
    `prometheus`'s scrape targets. Hooks: `url_of`, `components`, `log_path`, `kill`, `errors`."""
    with KServeController(api, job_runner, prometheus=prometheus,
                          workdir=tmp_path_factory.mktemp("kserve")) as controller:
        yield controller


from substrate.s3 import S3Server  # noqa: E402  (appended with its fixture)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3-compatible server for the session (versitygw on 127.0.0.1, bucket `tunerag`,
    generated keys; `env()` gives the AWS_* variables for a workload's Secret). Tests that stop it
    (fault injection) should start their own `S3Server` instead, so others are not disturbed."""
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server
