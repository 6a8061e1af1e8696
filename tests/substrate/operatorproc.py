"""The operator as a real child process (`python -m tunerag_operator`), as it runs in its pod."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from substrate.controlplane import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class OperatorProcess:
    kubeconfig: Path
    log_path: Path
    namespaces: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    health_port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60, wait: bool = True) -> None:
        """Starts the operator; with `wait`, returns once /healthz answers."""
        self.health_port = self.health_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "operator" / "src"), os.environ.get("PYTHONPATH", "")]),
            "TUNERAG_NAMESPACES": ",".join(self.namespaces),
            "TUNERAG_HEALTH_PORT": str(self.health_port),
            "TUNERAG_METRICS_PORT": str(self.metrics_port),
            "TUNERAG_LOG_FORMAT": "plain",
            **self.extra_env,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunerag_operator"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_healthy(timeout)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"operator not healthy after {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
