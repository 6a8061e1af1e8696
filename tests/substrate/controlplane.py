"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, the envtest way.

The binaries come from `build-controlplane.sh` (built from pinned Go modules, cached outside the
clone). Nothing here mocks the API: clients talk TLS to the upstream API server.

    with ControlPlane(workdir, rbac=True) as cp:
        cp.kubeconfig   # admin kubeconfig (client cert, group system:masters)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from substrate import pki as pki_mod

HERE = Path(__file__).resolve().parent


def build_binaries() -> Path:
    """Builds (or finds in the cache) kube-apiserver and etcd; returns their directory."""
    out = subprocess.run(
        [str(HERE / "build-controlplane.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    """etcd and kube-apiserver as child processes. `rbac` switches RBAC authorization on (else
    AlwaysAllow); `pod_security` keeps the PodSecurity admission plugin on; `audit_rules` (an audit
    Policy's rules) turns on a JSON audit log at `audit_log`."""

    workdir: Path
    rbac: bool = False
    pod_security: bool = True
    bin_dir: Path | None = None
    port: int = 0
    etcd_port: int = 0
    audit_rules: list[dict[str, Any]] | None = None
    _etcd_peer_port: int = 0
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        bin_dir = self.bin_dir or build_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = pki_mod.generate(self.workdir / "pki")
        self.port = self.port or free_port()
        self.etcd_port = self.etcd_port or free_port()
        self._start_etcd(bin_dir)
        self._start_apiserver(bin_dir)
        self._write_kubeconfig()
        self.wait_ready(timeout)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append(proc)

    def _start_etcd(self, bin_dir: Path, keep_data: bool = False) -> None:
        data = self.workdir / "etcd-data"
        if not keep_data:
            shutil.rmtree(data, ignore_errors=True)
            self._etcd_peer_port = free_port()
        peer = self._etcd_peer_port
        self._spawn("etcd", [
            str(bin_dir / "etcd"),
            f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ])

    def apiserver_args(self, bin_dir: Path) -> list[str]:
        p = self.pki
        disabled = ["ServiceAccount"]  # no token/SA controllers run here; tests create SAs
        if not self.pod_security:
            disabled.append("PodSecurity")
        return [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--tls-cert-file={p.serving_cert}",
            f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            f"--service-account-key-file={p.sa_public_key}",
            f"--service-account-signing-key-file={p.sa_private_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--api-audiences=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--authorization-mode={'RBAC' if self.rbac else 'AlwaysAllow'}",
            f"--disable-admission-plugins={','.join(disabled)}",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--v=0",
            *self._audit_args(),
        ]

    def _audit_args(self) -> list[str]:
        if self.audit_rules is None:
            return []
        policy = self.workdir / "audit-policy.json"
        policy.write_text(json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                      "omitStages": ["RequestReceived"], "rules": self.audit_rules}))
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                "--audit-log-mode=blocking"]

    def _start_apiserver(self, bin_dir: Path) -> None:
        self._spawn("kube-apiserver", self.apiserver_args(bin_dir))

    def restart_apiserver(self, down: float = 0.0, timeout: float = 120.0) -> None:
        """Kills kube-apiserver (SIGKILL: every watch and request is cut), waits `down` seconds and
        starts it again on the same port, over the same etcd (nothing stored is lost)."""
        (proc,) = [p for p in self._procs if Path(str(p.args[0])).name == "kube-apiserver"]  # type: ignore[index]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._procs.remove(proc)
        time.sleep(down)
        self._start_apiserver(self.bin_dir or build_binaries())
        self.wait_ready(timeout)

    def restart_etcd(self, down: float = 0.0, timeout: float = 120.0) -> None:
        """Kills etcd (SIGKILL), waits `down` seconds and starts it again over its data (a process
        crash loses nothing written); kube-apiserver stays up, answers errors meanwhile and
        reconnects by itself."""
        (proc,) = [p for p in self._procs if Path(str(p.args[0])).name == "etcd"]  # type: ignore[index]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._procs.remove(proc)
        time.sleep(down)
        self._start_etcd(self.bin_dir or build_binaries(), keep_data=True)
        self.wait_ready(timeout)

    def _write_kubeconfig(self) -> None:
        cfg = kubeconfig_dict(
            self.url, self.pki.ca_cert,
            user={"client-certificate": str(self.pki.admin_cert),
                  "client-key": str(self.pki.admin_key)},
        )
        self.kubeconfig.write_text(yaml.safe_dump(cfg))

    def token_kubeconfig(self, token: str, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's)."""
        path.write_text(
            yaml.safe_dump(kubeconfig_dict(self.url, self.pki.ca_cert, {"token": token}, namespace))
        )
        return path

    def wait_ready(self, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{proc.args[0]} exited with {proc.returncode}; see {self.workdir}/*.log"
                    )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.25)
        raise TimeoutError(f"kube-apiserver not ready after {timeout}s ({last}); logs in {self.workdir}")

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (the API server otherwise drains open
        watches for ~15 s; nothing here needs a graceful drain)."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()


def kubeconfig_dict(
    server: str, ca: Path, user: dict[str, str], namespace: str = "default"
) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "local", "user": user}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local",
                                                   "namespace": namespace}}],
        "current-context": "local",
    }
