"""The kubelet's API for container logs, for `JobRunner`: what lets `kubectl logs` and
`read_namespaced_pod_log` work against the local API server.

The API server answers `GET /api/v1/namespaces/<ns>/pods/<pod>/log` by proxying to the kubelet of
the Pod's node (pkg/registry/core/pod LogLocation): it reads the Node, takes its preferred address
(`status.addresses`, InternalIP here) and `status.daemonEndpoints.kubeletEndpoint.Port`, and asks
`https://<address>:<port>/containerLogs/<ns>/<pod>/<container>?tailLines=...`. Without
`--kubelet-certificate-authority` it does not verify the kubelet's serving certificate, and without
`--kubelet-client-certificate` it presents none, so a self-signed certificate and no authentication
are what a default API server expects. Errors are passed through with their status code
(`Error from server (BadRequest): container "main" in pod "x" is waiting to start: ...`).

What is imitated (pkg/kubelet/server, pkg/kubelet/kuberuntime/logs):
    `node_object` is the Node a kubelet registers (Ready, capacity of this machine).
    `pump_logs` plays the container runtime's log writer: it copies the process's stdout+stderr
    (one pipe, so `stream=Stdout|Stderr` are not told apart) to the plain log file and to a
    second file whose lines carry the kubelet's RFC3339Nano timestamps.
    `KubeletServer` serves `/containerLogs` with `tailLines`, `limitBytes`, `sinceSeconds`,
    `sinceTime`, `timestamps` and `follow` (until the container exits), applied as the kubelet
    does (tail first, then since, then the byte limit), and the kubelet's errors: unknown Pod or
    container (404), a container that has not started or `previous=true` (400: no restarts here).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from substrate import pki

Obj = dict[str, Any]
_LINE = re.compile(rb"[^\n]*\n|[^\n]+$")


def rfc3339_nano(ns: int | None = None) -> str:
    """Go's time.RFC3339Nano in UTC (trailing zeros of the fraction dropped)."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{frac:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def parse_timestamp(text: str) -> float:
    """An RFC3339 / RFC3339Nano UTC timestamp -> seconds since the epoch."""
    base = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    match = re.match(r"\.(\d+)", text[19:])
    return base + (float("0." + match.group(1)) if match else 0.0)


def split_lines(data: bytes) -> list[bytes]:
    """Lines ending in `\\n` (and a last one without); `\\r` is content, as for the kubelet."""
    return _LINE.findall(data)


def stamped_path(log_path: Path) -> Path:
    """The timestamped twin of a Pod's log file (a Pod name never starts with a dot)."""
    return log_path.with_name(f".{log_path.name}.timestamps")


def pump_logs(pipe: IO[bytes], log_path: Path, name: str) -> threading.Thread:
    """Copies a container's output pipe to `log_path` and, each line prefixed with the time its
    first byte arrived, to `stamped_path(log_path)`, until EOF. Returns the started thread."""

    def run() -> None:
        fd, at_line_start = pipe.fileno(), True
        with pipe, log_path.open("ab") as raw, stamped_path(log_path).open("ab") as stamped:
            while chunk := os.read(fd, 65536):
                raw.write(chunk)
                raw.flush()
                prefix = rfc3339_nano().encode() + b" "
                out = bytearray()
                for line in split_lines(chunk):
                    if at_line_start:
                        out += prefix
                    out += line
                    at_line_start = line.endswith(b"\n")
                stamped.write(out)
                stamped.flush()

    thread = threading.Thread(target=run, name=f"logs-{name}", daemon=True)
    thread.start()
    return thread


def node_object(name: str, port: int) -> tuple[Obj, Obj]:
    """The Node a kubelet registers, as (object, status): one InternalIP, the kubelet port,
    Ready, and this machine's capacity."""
    ts = rfc3339_nano()[:19] + "Z"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory // 1024}Ki", "pods": "110"}
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "tunerag.dev/jobrunner": "true"}
    conditions = [{"type": t, "status": "False", "reason": f"KubeletHas{r}", "message": m,
                   "lastHeartbeatTime": ts, "lastTransitionTime": ts}
                  for t, r, m in (("MemoryPressure", "SufficientMemory", "kubelet has sufficient memory available"),
                                  ("DiskPressure", "NoDiskPressure", "kubelet has no disk pressure"),
                                  ("PIDPressure", "SufficientPID", "kubelet has sufficient PID available"))]
    conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                       "message": "jobrunner is posting ready status", "lastHeartbeatTime": ts,
                       "lastTransitionTime": ts})
    status = {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "capacity": capacity, "allocatable": capacity, "conditions": conditions,
        "nodeInfo": {"kubeletVersion": "jobrunner", "operatingSystem": "linux", "architecture": "amd64",
                     "containerRuntimeVersion": "jobrunner://local", "kernelVersion": os.uname().release,
                     "osImage": "", "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
    }
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}, status


def serving_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed serving certificate for 127.0.0.1 (a kubelet's --tls-cert-file default is
    self-signed too); returns (cert, key) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "kubelet.crt", directory / "kubelet.key"
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobrunner-kubelet")])
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    pki._write_cert(cert, pki._issue(name, private, name, private, usage=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans))
    pki._write_key(key, private)
    return cert, key


class KubeletError(Exception):
    """An error the kubelet answers with (status code, message as the body)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class LogSource:
    """A container's timestamped log file and whether the container still runs (for follow)."""

    path: Path
    running: Callable[[], bool]


# (namespace, pod, container) -> the container's log, or KubeletError
Resolver = Callable[[str, str, str], LogSource]


def read_lines(path: Path, offset: int, final: bool) -> tuple[list[bytes], int]:
    """The whole lines of `path` from `offset` (and a trailing partial one when `final`), and
    the offset after them."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = len(data) if final else data.rfind(b"\n") + 1
    return split_lines(data[:end]), offset + end


class KubeletServer:
    """HTTPS on 127.0.0.1:`port` (0: a free one) serving `/containerLogs` and `/healthz`."""

    def __init__(self, resolve: Resolver, certdir: Path, port: int = 0) -> None:
        self.resolve = resolve
        cert, key = serving_certificate(certdir)
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(str(cert), str(key))
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"kubelet-{self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:  # TLS handshake in the request's thread, not the accept loop
                self.request.settimeout(30)
                self.request = server._tls.wrap_socket(self.request, server_side=True)
                super().setup()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                parts = [unquote(p) for p in url.path.split("/")[1:]]
                try:
                    if parts == ["healthz"]:
                        self._reply(200, "ok")
                    elif len(parts) == 4 and parts[0] == "containerLogs":
                        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                        server._serve_logs(self, parts[1], parts[2], parts[3], query)
                    else:
                        self._reply(404, "404 page not found")
                except KubeletError as err:
                    self._reply(err.status, err.message)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass

            def _reply(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _serve_logs(self, handler: BaseHTTPRequestHandler, ns: str, pod: str, container: str,
                    query: dict[str, str]) -> None:
        """getContainerLogs + ReadLogs: validates, then writes the selected lines; with `follow`
        keeps writing new lines until the container has exited."""
        try:
            tail = int(query["tailLines"]) if "tailLines" in query else None
            limit = int(query["limitBytes"]) if "limitBytes" in query else None
            since = None
            if "sinceSeconds" in query:
                since = time.time() - int(query["sinceSeconds"])
            elif "sinceTime" in query:
                since = parse_timestamp(query["sinceTime"])
        except ValueError as exc:
            raise KubeletError(400, f"invalid log options: {exc}") from exc
        if query.get("previous") == "true":
            raise KubeletError(400, f'previous terminated container "{container}" in pod "{pod}" not found')
        source = self.resolve(ns, pod, container)
        timestamps, follow = query.get("timestamps") == "true", query.get("follow") == "true"
        following = follow and source.running()
        lines, offset = read_lines(source.path, 0, final=not following)
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.end_headers()
        budget = [limit if limit is not None else -1]

        def emit(chunk: list[bytes]) -> bool:
            out = bytearray()
            for line in chunk:
                stamp, _, content = line.partition(b" ")
                if since is not None and parse_timestamp(stamp.decode()) < since:
                    continue
                out += line if timestamps else content
            if budget[0] >= 0:
                out, budget[0] = out[: budget[0]], budget[0] - min(len(out), budget[0])
            if out:
                handler.wfile.write(bytes(out))
            return budget[0] != 0

        more = emit(lines)
        while following and more and not self._stopping.is_set():
            final = not source.running()  # read after it ended: nothing is left behind
            lines, offset = read_lines(source.path, offset, final)
            more = emit(lines)
            if final:
                break
            self._stopping.wait(0.1)
        with contextlib.suppress(OSError):
            handler.wfile.flush()
