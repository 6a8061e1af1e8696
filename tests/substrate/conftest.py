"""Fixtures for the test substrate itself: a session-wide JobRunner over all namespaces."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from substrate.jobrunner import JobRunner

ROOT = Path(__file__).resolve().parents[2]


def runner_env() -> dict[str, str]:
    """What a Job's process needs on this machine: this interpreter first on PATH, and the
    project's sources importable (in a cluster both come from the image)."""
    return {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("operator/src", "workloads/src", "tests")),
    }


@pytest.fixture(scope="session")
def job_runner(api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobRunner]:
    """Plays the Job controller and a kubelet for every namespace (see substrate.jobrunner)."""
    with JobRunner(api, workdir=tmp_path_factory.mktemp("jobrunner"), env_overrides=runner_env()) as runner:
        yield runner
