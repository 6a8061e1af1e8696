from __future__ import annotations

from collections.abc import Iterator

import pytest

from substrate.controlplane import ControlPlane
from substrate.operatorproc import OperatorProcess


@pytest.fixture(scope="session")
def operator(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator as a child process, watching the whole local cluster."""
    proc = OperatorProcess(
        control_plane.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log",
        extra_env={"TUNERAG_RETRY_DELAY": "2"},
    )
    proc.start()
    yield proc
    proc.stop()
