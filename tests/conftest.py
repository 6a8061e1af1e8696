"""Session-wide real control plane, a fresh namespace per test, CRDs installed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.operatorproc import OperatorProcess


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane"), bin_dir=Path(bin_dir) if bin_dir else None)
    cp.start()
    try:
        api = config.new_client_from_config(str(cp.kubeconfig))
        kube.install_crds(api, kube.crd_documents(include_kserve=False))
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    """An admin ApiClient for the local control plane."""
    return config.new_client_from_config(str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def operator(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator as a child process (as in its pod), watching the whole local cluster."""
    proc = OperatorProcess(
        control_plane.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log",
        extra_env={"TUNERAG_RETRY_DELAY": "2", "TUNERAG_PROGRESS_INTERVAL": "1", "TUNERAG_ROLLOUT_TICK": "1",
                   "TUNERAG_ROLLOUT_RESYNC": "5", "TUNERAG_SCHEDULE_TICK": "1", "TUNERAG_SCHEDULE_RECHECK": "5",
                   # every Prometheus the tests start is on loopback; the examples name the usual in-cluster one
                   "TUNERAG_PROMETHEUS_ALLOW": "http://127.0.0.1,http://prometheus.monitoring.svc:9090"},
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def kserve_crds(api: client.ApiClient) -> None:
    """KServe's real CRDs (InferenceService, InferenceGraph, ServingRuntimes). Installing the
    2 MB InferenceService schema takes the API server about 25 s, so only tests that need it pay."""
    kube.install_crds(api, [d for d in kube.crd_documents() if d["spec"]["group"] == "serving.kserve.io"])


@pytest.fixture
def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test."""
    prefix = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}"
    name = kube.generate_namespace(api, "".join(c for c in prefix if c.isalnum() or c == "-") + "-")
    yield name
    kube.delete_namespace(api, name)


pytest_plugins = ["substrate.fixtures"]
