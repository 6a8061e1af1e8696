"""Fixtures for the Helm chart and Dockerfile tests: a real helm binary (tests/substrate/fetch-helm.sh,
cached outside the clone) run with its own config/cache/data directories."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tunerag"
FETCH_HELM = ROOT / "tests" / "substrate" / "fetch-helm.sh"
KUBECTL = "/usr/bin/kubectl"


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def template(self, *args: str, namespace: str = "tunerag-system", release: str = "t") -> str:
        return self.run("template", release, str(CHART), "--namespace", namespace, *args).stdout

    def render(self, *args: str, namespace: str = "tunerag-system", release: str = "t") -> list[dict[str, Any]]:
        """`helm template` parsed into its objects (empty documents dropped)."""
        return [d for d in yaml.safe_load_all(self.template(*args, namespace=namespace, release=release)) if d]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        out = subprocess.run([str(FETCH_HELM)], check=True, capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"fetch-helm.sh failed ({exc.returncode}):\n{exc.stderr}")
    return Helm(Path(out.stdout.strip().splitlines()[-1]), tmp_path_factory.mktemp("helm-home"))
