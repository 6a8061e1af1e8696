"""A real Prometheus server on loopback (Debian's `prometheus` binary, installed by `.ci/setup`).

    prom = Prometheus(workdir, targets=["127.0.0.1:8000"])
    prom.start()                        # waits until /-/ready answers
    prom.set_targets(["127.0.0.1:9000"])  # rewrites the config and reloads it
    prom.query("up")                    # the `result` list of /api/v1/query
    prom.stop(); prom.start()           # same port and TSDB: simulates an outage

All targets form one scrape job (`tunerag`) scraped every `scrape_interval` (1s by default).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from substrate.controlplane import free_port

JOB = "tunerag"




def find_binary() -> Path:
    """The prometheus binary: `$TUNERAG_PROMETHEUS`, else the one on PATH."""
    found = os.environ.get("TUNERAG_PROMETHEUS") or shutil.which("prometheus")
    if not found:
        raise FileNotFoundError("prometheus not found; run .ci/setup (apt-get install prometheus)")
    return Path(found)


def render_config(targets: list[str], scrape_interval: str) -> str:
    """A minimal prometheus.yml: one static job over `targets`."""
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    }
    return yaml.safe_dump(config, sort_keys=False)


class Prometheus:
    """Prometheus as a child process; its config and TSDB live in `workdir`.

    With no `workdir` a temporary folder is used and removed by `close()`. `stop()` keeps port and
    data, so a later `start()` serves the same URL.
    """

    def __init__(
        self, workdir: Path | None = None, targets: list[str] | None = None, scrape_interval: str = "1s"
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="tunerag-prom-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.targets = list(targets or [])
        self.scrape_interval = scrape_interval
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self, timeout: float = 30.0) -> None:
        """Starts the server (on the port of the previous start, if any) and waits until ready."""
        if self.pid is not None:
            return
        self.port = self.port or free_port()
        self._write_config()
        argv = [
            str(find_binary()),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True,
            )
        self.wait_ready(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (clean TSDB shutdown); SIGKILL to the process group if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        """Stops the server and removes the temporary folder (when this instance created it)."""
        self.stop()
        atexit.unregister(self.close)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Polls `/-/ready` until it answers 200."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"prometheus is not running:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise TimeoutError(f"prometheus not ready after {timeout}s ({last}):\n{self._log_tail()}")

    def set_targets(self, targets: list[str]) -> None:
        """Replaces the scrape targets (host:port) and, if running, reloads the config.

        Prometheus 2.x hands target changes to its scrapers at most every 5s, so the first samples
        of a new target appear about 5-6s later (also after `start()`); poll `query` for them.
        """
        self.targets = list(targets)
        self._write_config()
        if self.pid is not None:
            self._post("/-/reload")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Evaluates an instant query; returns `data.result` (vector samples, for example)."""
        qs = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def _write_config(self) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(render_config(self.targets, self.scrape_interval))
        tmp.replace(self.config_path)

    def _post(self, path: str) -> None:
        req = urllib.request.Request(f"{self.url}{path}", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def _log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""
