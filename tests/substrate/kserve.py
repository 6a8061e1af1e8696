"""A stand-in for KServe's controller, Knative Serving (or Deployments) and the ingress: serves
InferenceServices and InferenceGraphs as local processes behind loopback routers, against the real
API server with KServe's real CRDs.

The local control plane has no KServe, no Knative, no Deployment controller and no node, so an
InferenceService would never serve. `KServeController` plays those parts for tests and the quick
start; the operator does not know about it and sees what it would see in a cluster: the
InferenceService's status, and a URL that answers.

    with KServeController(api_client, job_runner, prometheus=prom) as kserve:
        ...                               # create InferenceServices; they serve
        kserve.url_of(ns, "chat")         # the router's URL (also status.url)
        kserve.components(ns, "chat")     # the processes: name, port, pid, ready, weight, ...

What is imitated, and how faithfully:

Deployment mode
    From the annotation `serving.kserve.io/deploymentMode`: `Knative` (or legacy `Serverless`) or
    `Standard` (or legacy `RawDeployment`); without it `default_deployment_mode` (Knative, as in
    KServe's inferenceservice-config). `status.deploymentMode` is the canonical name.

Components (the predictor; canaries in Standard mode)
    Only custom containers run: `spec.predictor.containers[0]` (a model-format predictor that
    needs a ServingRuntime fails with reason NoSupportingRuntime). The container is prepared by
    the JobRunner's kubelet code (`JobRunner.prepare_container`): env with `valueFrom`
    (secretKeyRef, configMapKeyRef, fieldRef such as metadata.namespace / metadata.name of the
    stand-in Pod), `envFrom`, the predictor's `volumes` (a persistentVolumeClaim is the runner's
    `claim_path`, so artifacts written by training Jobs are there), `volumeMounts` and the same
    path mapping of mounted paths in command, args and env. Knative's and KServe's variables are
    added to the container's env (so `$(PORT)` works in args): `PORT` (a free loopback port),
    `K_SERVICE=<isvc>-predictor`, and in Knative mode `K_CONFIGURATION=<isvc>-predictor` and
    `K_REVISION=<revision>`. Each process runs in its own process group with its stdout+stderr in
    `<workdir>/logs/<namespace>/<pod>.log` (`log_path`). It is Ready once
    `GET /v2/health/ready` answers 200 (probed every 0.1 s until then, every second after; three
    misses in a row make it not ready). A process that exits, before or after it was ready, is a
    failed load: `modelStatus` says FailedToLoad / BlockedByFailedLoad with `lastFailureInfo`
    (reason ModelLoadFailed, the last 80 lines / 2 KiB of that run's log, exit code, time) until it
    is ready again, and it is restarted with the kubelet's CrashLoopBackOff doubling (2 s, 4 s,
    ... 30 s; reset after a minute of readiness) while the rest keeps serving.

Knative mode (KServe's ksvc reconciler + Knative Serving)
    Every distinct `spec.predictor` (ignoring `canaryTrafficPercent`) creates the next Revision
    `<isvc>-predictor-00001`, `-00002`, ... (as in Knative, going back to an older spec is a new
    revision too). `latestReadyRevision` is Knative's: the latest created revision once it became
    ready (it stays while a newer one loads or fails). The traffic KServe asks for is:
    with `canaryTrafficPercent: P` and a rolled-out revision R, R gets 100-P (tag `prev`) and the
    latest ready revision P (tag `latest`); when R is itself the latest and P is 0, R is replaced by
    `previousRolledoutRevision` (KServe's rollback after a promotion); without P (or before anything
    was rolled out) the latest ready revision gets 100. Knative resolves "latest" to the latest
    *ready* revision, so a latest revision that is loading or failed gets no traffic and the
    previous assignment stays; note that, as in Knative, dropping P while a newer revision is not
    ready sends 100 to the latest ready one (an un-promoted canary, say). Targets are merged per
    revision in `components.predictor.traffic`. `latestRolledoutRevision` / `previousRolledoutRevision`
    follow KServe's PropagateStatus: the latest ready revision becomes rolled out when its
    `latestRevision` target has 100; a rolled-out latest revision given 0 hands that back to
    the previous one. Revisions that have no traffic and are not the latest are stopped (after
    a one-second drain); one that gets traffic again is started again, and the router holds
    requests for it while it starts (up to `activation_timeout`), like Knative's activator.

Standard mode (KServe's raw reconciler + the Deployment controller)
    `spec.predictor` is one process; a changed spec is rolled like a Deployment with maxSurge 1,
    maxUnavailable 0: the new process starts, and traffic moves to it only once it is ready, then
    the old one is drained and stopped; if the new one fails, the old keeps serving (and the
    failure is reported). Each `spec.canary[i]` (`{predictor, trafficPercent}`) is its own such
    Deployment, named `<isvc>-canary-<i>` (or its predictor's `name`). Its effective percent is
    trafficPercent once ready, 0 before; the predictor gets 100 minus the canaries' share.

Ingress / router
    One threaded HTTP/1.1 reverse proxy per InferenceService on a loopback port that stays the
    same across spec changes and restarts of the harness (status.url and address.url are
    `http://127.0.0.1:<port>`). Each request goes to one ready backend chosen by the effective
    weights with smooth weighted round-robin (deterministic: 80/20 gives exactly 80 and 20 of
    every 100 requests); method, path, query, headers (but hop-by-hop ones) and body are
    forwarded and the upstream's answer relayed (streamed, chunked when it has no length). A
    backend that refuses the connection is retried on another (Envoy's connect-failure retry);
    with nothing ready the answer is 503 `no healthy upstream`. An InferenceGraph whose root node is
    a `Splitter` gets its own router splitting by `weight` across its steps' InferenceServices'
    routers (the request is forwarded with its own path; `serviceUrl` steps go to that URL's
    host and port); other router types are reported as not supported.

Status written (replace on the status subresource, only when it changes)
    InferenceService: `observedGeneration`, `deploymentMode`, `url`, `address.url`,
    `components.predictor` (`url`, `address.url`, `traffic`; Knative also `latestCreatedRevision`,
    `latestReadyRevision`, `latestRolledoutRevision`, `previousRolledoutRevision`), `modelStatus`
    of the latest revision (Standard: of the newest predictor process), `canaryStatuses`
    (Standard), conditions `IngressReady`, `LatestDeploymentReady`, `PredictorReady`, `Ready`
    (Knative also `PredictorConfigurationReady`, `PredictorRouteReady`), sorted by type, with
    lastTransitionTime kept while the status stays. Ready needs the latest spec of every component
    ready (it is Unknown while one loads, False when one failed), as a Knative Service's.
    InferenceGraph: `observedGeneration`, `deploymentMode`, `url`, condition `Ready` (all its
    services exist and are Ready).

Prometheus
    With `prometheus`, its targets are kept equal to the ready processes' `127.0.0.1:<port>`
    (scraped at /metrics), plus whatever targets others set.

Deleting an InferenceService or InferenceGraph (or its namespace, which stays Terminating here)
stops its processes and router. The state that Knative and Deployments would keep in the API
(revisions and their specs, what is rolled out, the router port) is kept in
`<workdir>/state/<uid>.json`, so `stop()` then `start()` (or a new controller on the same workdir)
carries on: the processes are started again and the routers come back on their ports.

Not imitated: transformers and explainers, ServingRuntimes and storage initialisers, autoscaling
(one process per revision or Deployment, no scale to zero), Knative tag URLs, gRPC, the other
InferenceGraph router types, Events.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import http.client
import json
import logging
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from substrate.controlplane import free_port
from substrate.jobrunner import ConfigError, JobRunner, exit_code, now_rfc3339

log = logging.getLogger("tunerag.kserve")

Obj = dict[str, Any]

GROUP = "serving.kserve.io"
ISVC_VERSION, ISVC_PLURAL = "v1beta1", "inferenceservices"
IG_VERSION, IG_PLURAL = "v1alpha1", "inferencegraphs"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
KNATIVE, STANDARD = "Knative", "Standard"
MODES = {"knative": KNATIVE, "serverless": KNATIVE, "standard": STANDARD, "rawdeployment": STANDARD}
READY_PATH = "/v2/health/ready"
BACKOFF_BASE, BACKOFF_MAX, BACKOFF_RESET = 2.0, 30.0, 60.0
DRAIN_SECONDS = 1.0  # a retired process keeps running this long after it left the router
KILL_GRACE = 5.0
UPSTREAM_TIMEOUT = 600.0
MAX_LOG_BYTES, MAX_LOG_LINES = 2048, 80
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade"}


def canonical_mode(annotations: dict[str, str] | None, default: str) -> str:
    value = (annotations or {}).get(MODE_ANNOTATION) or default
    return MODES.get(value.lower(), default)


def spec_hash(spec: Obj) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def pod_suffix() -> str:
    return "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))


def log_tail(path: Path, offset: int) -> str:
    """The last lines of what a run wrote to its log (from `offset`), as a kubelet's
    FallbackToLogsOnError termination message."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return ""
    lines = data.splitlines(keepends=True)[-MAX_LOG_LINES:]
    return b"".join(lines)[-MAX_LOG_BYTES:].decode(errors="replace").strip()


def condition(ctype: str, status: str, reason: str = "", message: str = "") -> Obj:
    cond: Obj = {"type": ctype, "status": status}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def stamp_conditions(new: list[Obj], old: list[Obj] | None) -> list[Obj]:
    """Sorted by type; lastTransitionTime carried over while a condition's status stays."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for cond in sorted(new, key=lambda c: c["type"]):
        before = previous.get(cond["type"])
        since = before.get("lastTransitionTime") if before and before.get("status") == cond["status"] else None
        out.append({**cond, "lastTransitionTime": since or now_rfc3339()})
    return out


def all_true(conds: Iterable[Obj]) -> Obj | None:
    """The first condition that is not True (False before Unknown), or None."""
    conds = list(conds)
    return next((c for c in conds if c["status"] == "False"), None) or next(
        (c for c in conds if c["status"] != "True"), None)


# ----------------------------------------------------------------------------- router


@dataclass(frozen=True)
class Target:
    key: str
    port: int
    weight: int
    host: str = "127.0.0.1"
    ready: bool = True  # False: starting (Knative: the activator holds its requests until ready)


class _RouterServer(ThreadingHTTPServer):
    daemon_threads = True
    router: Router


class Router:
    """An ingress for one InferenceService or InferenceGraph: a threaded HTTP reverse proxy on
    127.0.0.1:`port` (a free one if 0 or taken). `set_targets` replaces the weighted backends;
    each request goes to one picked by smooth weighted round-robin (nginx's), deterministic. A
    picked target that is still starting holds the request until it is ready (at most
    `activation_timeout` seconds), like Knative's activator for a revision scaled from zero."""

    def __init__(self, name: str, port: int = 0, activation_timeout: float = 60.0) -> None:
        self.name = name
        self.activation_timeout = activation_timeout
        self._lock = threading.Condition()
        self._targets: list[Target] = []
        self._current: dict[str, int] = {}
        try:
            self._server = _RouterServer(("127.0.0.1", port), _ProxyHandler)
        except OSError:
            self._server = _RouterServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.router = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"kserve-router-{name}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_targets(self, targets: Iterable[Target]) -> None:
        with self._lock:
            self._targets = [t for t in targets if t.weight > 0]
            keys = {t.key for t in self._targets}
            self._current = {k: v for k, v in self._current.items() if k in keys}
            self._lock.notify_all()

    def targets(self) -> list[Target]:
        with self._lock:
            return list(self._targets)

    def serving(self) -> bool:
        """Whether some target is ready."""
        with self._lock:
            return any(t.ready for t in self._targets)

    def pick(self, exclude: set[str] | frozenset[str] = frozenset()) -> Target | None:
        """The next backend by smooth weighted round-robin; None when there is none (or the one
        picked did not become ready in time)."""
        deadline = time.monotonic() + self.activation_timeout
        with self._lock:
            while True:
                candidates = [t for t in self._targets if t.key not in exclude]
                if not candidates:
                    return None
                total = sum(t.weight for t in candidates)
                best = candidates[0]
                for t in candidates:
                    self._current[t.key] = self._current.get(t.key, 0) + t.weight
                    if self._current[t.key] > self._current[best.key]:
                        best = t
                self._current[best.key] -= total
                while not best.ready:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._lock.wait(min(remaining, 0.1))
                    now = next((t for t in self._targets if t.key == best.key), None)
                    if now is None:
                        break  # it went away: pick again
                    best = now
                else:
                    return best

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RouterServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _plain(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        router = self.server.router
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-For"] = ", ".join(filter(None, [self.headers.get("X-Forwarded-For"),
                                                            self.client_address[0]]))
        headers.setdefault("X-Forwarded-Proto", "http")
        if body is not None:
            headers["Content-Length"] = str(len(body))
        tried: set[str] = set()
        while True:
            target = router.pick(tried)
            if target is None:
                self._plain(503, "no healthy upstream")
                return
            conn = http.client.HTTPConnection(target.host, target.port, timeout=UPSTREAM_TIMEOUT)
            try:
                conn.connect()
            except OSError:  # connect failure: nothing was sent, another backend may take it
                conn.close()
                tried.add(target.key)
                continue
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
            except OSError:
                conn.close()
                self._plain(503, "upstream connect error or disconnect/reset before headers")
                return
            try:
                self._relay(resp)
            finally:
                conn.close()
            return

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        length = resp.getheader("Content-Length")
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        if length is not None or no_body:
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            if not no_body:
                while chunk := resp.read(65536):
                    self.wfile.write(chunk)
            return
        chunked = self.request_version != "HTTP/1.0"
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        self.end_headers()
        while chunk := resp.read1(65536):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            self.wfile.flush()
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _proxy


# ----------------------------------------------------------------------------- processes


@dataclass(eq=False)
class Backend:
    """One container process: a Knative revision's pod, or a Deployment's pod."""

    namespace: str
    isvc: str
    component: str  # <isvc>-predictor-00001 (Knative), <isvc>-predictor or a canary's name (Standard)
    pod: str  # the stand-in Pod's name: HOSTNAME, metadata.name, the log file
    spec: Obj  # the predictor spec it runs
    hash: str
    env: dict[str, str]
    log_path: Path
    revision: int | None = None
    canary: int | None = None
    port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None
    log_offset: int = 0
    ready: bool = False
    ready_since: float = 0.0
    failed: bool = False  # it exited (or could not start) since it was last ready
    failures: int = 0
    last_failure: Obj | None = None
    waiting: str | None = None  # why it cannot start yet (a missing Secret, ...)
    unsupported: str | None = None  # it never can
    restart_at: float = 0.0
    backoff: float = BACKOFF_BASE
    probe_misses: int = 0
    next_probe: float = 0.0
    weight: int = 0  # its effective percent, as last given to the router
    stopping: bool = False
    stop_at: float = 0.0
    term_sent: float = 0.0

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def serving(self) -> bool:
        return self.ready and self.running and not self.stopping

    def signal(self, sig: int) -> None:
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def model_status(self) -> Obj:
        """KServe's modelStatus for this process."""
        if self.ready:
            state, transition = "Loaded", "UpToDate"
        elif self.failed:
            state, transition = "FailedToLoad", "BlockedByFailedLoad"
        elif self.running:
            state, transition = "Loading", "InProgress"
        else:
            state, transition = "Pending", "InProgress"
        status: Obj = {"states": {"activeModelState": state, "targetModelState": state},
                       "transitionStatus": transition,
                       "copies": {"failedCopies": 1 if self.failed else 0, "totalCopies": 1}}
        if self.last_failure is not None:
            status["lastFailureInfo"] = dict(self.last_failure)
        return status

    def failure_text(self) -> str:
        info = self.last_failure or {}
        text = f"exit code {info.get('exitCode')}" if "exitCode" in info else ""
        return "; ".join(filter(None, [text, info.get("message", "")]))


@dataclass(eq=False)
class Revision:
    name: str
    number: int
    hash: str
    spec: Obj
    ever_ready: bool = False
    backend: Backend | None = None


@dataclass(eq=False)
class Deployment:
    """Standard mode: one component's Deployment; `pending` is the new ReplicaSet while rolling."""

    key: str  # "predictor" or "canary-<i>"
    active: Backend | None = None
    pending: Backend | None = None
    spec: Obj | None = None  # the active spec, kept across restarts

    @property
    def newest(self) -> Backend | None:
        return self.pending or self.active


@dataclass(eq=False)
class ServiceState:
    namespace: str
    name: str
    uid: str
    mode: str
    router_port: int = 0
    router: Router | None = None
    # Knative
    revisions: list[Revision] = field(default_factory=list)
    next_number: int = 1
    latest_ready: str | None = None
    rolled_out: str | None = None
    previous: str | None = None
    # Standard
    deployments: dict[str, Deployment] = field(default_factory=dict)
    ready: bool = False  # its Ready condition, as last computed
    saved: str = ""

    def backends(self) -> list[Backend]:
        out = [r.backend for r in self.revisions if r.backend is not None]
        for dep in self.deployments.values():
            out += [b for b in (dep.active, dep.pending) if b is not None]
        return out

    def to_json(self) -> str:
        return json.dumps({
            "namespace": self.namespace, "name": self.name, "uid": self.uid, "mode": self.mode,
            "router_port": self.router.port if self.router else self.router_port,
            "revisions": [{"name": r.name, "number": r.number, "hash": r.hash, "spec": r.spec,
                           "ever_ready": r.ever_ready} for r in self.revisions],
            "next_number": self.next_number, "latest_ready": self.latest_ready, "rolled_out": self.rolled_out,
            "previous": self.previous,
            "deployments": {k: d.spec for k, d in self.deployments.items() if d.spec is not None},
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServiceState:
        data = json.loads(text)
        st = cls(namespace=data["namespace"], name=data["name"], uid=data["uid"], mode=data["mode"],
                 router_port=int(data.get("router_port") or 0), next_number=int(data.get("next_number") or 1),
                 latest_ready=data.get("latest_ready"), rolled_out=data.get("rolled_out"),
                 previous=data.get("previous"))
        st.revisions = [Revision(r["name"], r["number"], r["hash"], r["spec"], r.get("ever_ready", False))
                        for r in data.get("revisions") or []]
        st.deployments = {k: Deployment(k, spec=spec) for k, spec in (data.get("deployments") or {}).items()}
        return st


@dataclass(eq=False)
class GraphState:
    namespace: str
    name: str
    uid: str
    router_port: int = 0
    router: Router | None = None
    saved: str = ""

    def to_json(self) -> str:
        return json.dumps({"namespace": self.namespace, "name": self.name, "uid": self.uid, "graph": True,
                           "router_port": self.router.port if self.router else self.router_port}, sort_keys=True)


# ----------------------------------------------------------------------------- the controller


class KServeController:
    """Serves the InferenceServices and InferenceGraphs of `namespaces` (all when None); see the
    module docstring. `job_runner` lends its kubelet code (env, volumes, claim folders, path
    mapping); `prometheus` (substrate.prometheus.Prometheus) gets the ready processes as targets;
    objects are re-listed every `poll_seconds` and whenever a process changes state."""

    def __init__(
        self,
        api_client: client.ApiClient,
        job_runner: JobRunner,
        *,
        namespaces: Iterable[str] | None = None,
        prometheus: Any = None,
        workdir: Path | None = None,
        poll_seconds: float = 0.5,
        default_deployment_mode: str = KNATIVE,
        activation_timeout: float = 60.0,
    ) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.job_runner = job_runner
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.prometheus = prometheus
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kserve-"))
        self.poll_seconds = poll_seconds
        self.default_deployment_mode = MODES.get(default_deployment_mode.lower(), KNATIVE)
        self.activation_timeout = activation_timeout
        self.errors: list[str] = []  # reconcile errors, for tests to assert on
        self._lock = threading.RLock()
        self._services: dict[str, ServiceState] = {}  # by uid
        self._graphs: dict[str, GraphState] = {}
        self._backends: list[Backend] = []  # every process we own, retiring ones included
        self._logs: dict[tuple[str, str], Path] = {}  # (ns, component or pod) -> newest log
        self._written: dict[str, tuple[Obj, Obj]] = {}  # uid -> (status sent, status stored)
        self._prom_targets: list[str] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> KServeController:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the reconcile and supervisor threads; state comes back from `<workdir>/state`."""
        if self._threads:
            return
        self._stop = stop = threading.Event()
        for name, target in (("reconcile", self._reconcile_loop), ("supervise", self._supervise_loop)):
            thread = threading.Thread(target=target, args=(stop,), name=f"kserve-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stops the threads, kills every process (SIGKILL) and closes the routers; objects and
        their status are left as they are."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads.clear()
        with self._lock:
            backends, self._backends = self._backends, []
            states: list[ServiceState | GraphState] = [*self._services.values(), *self._graphs.values()]
            routers = [s.router for s in states if s.router]
            self._services.clear()
            self._graphs.clear()
            self._written.clear()
        for b in backends:
            b.signal(signal.SIGKILL)
        for b in backends:
            if b.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    b.popen.wait(timeout=5)
        for router in routers:
            router.close()
        self._sync_prometheus()

    # -- test hooks -----------------------------------------------------------------------

    def url_of(self, namespace: str, name: str) -> str | None:
        """The router URL of an InferenceService (or, failing that, an InferenceGraph)."""
        with self._lock:
            states: list[ServiceState | GraphState] = [*self._services.values(), *self._graphs.values()]
            for st in states:
                if (st.namespace, st.name) == (namespace, name) and st.router is not None:
                    return st.router.url
        return None

    def components(self, namespace: str, name: str) -> list[Obj]:
        """The InferenceService's processes (retiring ones excluded): name (revision, predictor
        or canary name), pod, revision (number or None), canary (index or None), port, pid (None
        between restarts), ready, weight (effective percent), restarts."""
        with self._lock:
            st = self._service(namespace, name)
            return [{"name": b.component, "pod": b.pod, "revision": b.revision, "canary": b.canary, "port": b.port,
                     "pid": b.popen.pid if b.running and b.popen else None, "ready": b.serving,
                     "weight": b.weight, "restarts": b.failures}
                    for b in (st.backends() if st else [])]

    def log_path(self, namespace: str, component: str) -> Path | None:
        """The log of a component's newest process (`component`: a revision, `<isvc>-predictor`,
        a canary's name, or a stand-in Pod's name); kept after it stops."""
        with self._lock:
            return self._logs.get((namespace, component))

    def kill(self, namespace: str, name: str, component: str, sig: int = signal.SIGKILL) -> bool:
        """Sends `sig` to the process group of the InferenceService's component (or stand-in Pod)
        to simulate a crash; False if none runs."""
        with self._lock:
            st = self._service(namespace, name)
            hits = [b for b in (st.backends() if st else []) if component in (b.component, b.pod) and b.running]
        for b in hits:
            b.signal(sig)
        return bool(hits)

    def sync(self) -> None:
        """Asks for a reconcile pass now."""
        self._wake.set()

    def _service(self, namespace: str, name: str) -> ServiceState | None:
        return next((s for s in self._services.values() if (s.namespace, s.name) == (namespace, name)), None)

    def _record_error(self, key: str, text: str) -> None:
        log.warning("kserve %s: %s", key, text)
        self.errors.append(f"{key}: {text}")
        del self.errors[:-50]

    # -- the reconcile loop ---------------------------------------------------------------

    def _reconcile_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                self._reconcile_all(stop)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    self._record_error("list", f"{exc.status} {exc.reason}: {exc.body}")
            except Exception as exc:
                log.exception("kserve reconcile")
                self._record_error("reconcile", repr(exc))
            self._wake.wait(self.poll_seconds)

    def _list(self, version: str, plural: str) -> list[Obj]:
        items: list[Obj] = []
        try:
            if self.namespaces is None:
                resp = self.custom.list_cluster_custom_object(GROUP, version, plural, _preload_content=False)
                items = json.loads(resp.data).get("items", [])
            else:
                for ns in sorted(self.namespaces):
                    resp = self.custom.list_namespaced_custom_object(GROUP, version, ns, plural, _preload_content=False)
                    items += json.loads(resp.data).get("items", [])
        except ApiException as exc:
            if exc.status != 404:  # 404: KServe's CRDs are not installed (yet)
                raise
        return items

    def _terminating_namespaces(self) -> set[str]:
        if self.namespaces is None:
            listing = json.loads(self.core.list_namespace(_preload_content=False).data).get("items", [])
            return {n["metadata"]["name"] for n in listing if n["metadata"].get("deletionTimestamp")}
        out = set()
        for ns in self.namespaces:
            try:
                obj = json.loads(self.core.read_namespace(ns, _preload_content=False).data)
                if obj["metadata"].get("deletionTimestamp"):
                    out.add(ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                out.add(ns)
        return out

    def _reconcile_all(self, stop: threading.Event) -> None:
        terminating = self._terminating_namespaces()
        isvcs, graphs = self._list(ISVC_VERSION, ISVC_PLURAL), self._list(IG_VERSION, IG_PLURAL)
        if stop.is_set():
            return

        def alive(obj: Obj) -> bool:
            md = obj["metadata"]
            return not md.get("deletionTimestamp") and md.get("namespace") not in terminating

        live_isvcs = [o for o in isvcs if alive(o)]
        live_graphs = [o for o in graphs if alive(o)]
        with self._lock:
            for uid in set(self._services) - {o["metadata"]["uid"] for o in live_isvcs}:
                self._forget(self._services.pop(uid))
            for uid in set(self._graphs) - {o["metadata"]["uid"] for o in live_graphs}:
                self._forget(self._graphs.pop(uid))
        for obj, plural, version, reconcile in (
            [(o, ISVC_PLURAL, ISVC_VERSION, self._reconcile_isvc) for o in live_isvcs]
            + [(o, IG_PLURAL, IG_VERSION, self._reconcile_graph) for o in live_graphs]
        ):
            key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            try:
                with self._lock:
                    if stop.is_set():
                        return
                    status = reconcile(obj)
                self._sync_prometheus()
                self._write_status(version, plural, obj, status)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    self._record_error(key, f"{exc.status} {exc.reason}: {exc.body}")
                else:
                    self._wake.set()
            except Exception as exc:
                log.exception("kserve reconcile %s", key)
                self._record_error(key, repr(exc))
        self._sync_prometheus()

    def _forget(self, st: ServiceState | GraphState) -> None:
        """The object is gone: stop its processes and router, drop its state."""
        if isinstance(st, ServiceState):
            for b in st.backends():
                self._retire(b, drain=0.0)
        if st.router is not None:
            st.router.close()
        self._written.pop(st.uid, None)
        with contextlib.suppress(OSError):
            self._state_path(st.uid).unlink()

    def _write_status(self, version: str, plural: str, obj: Obj, status: Obj) -> None:
        md = obj["metadata"]
        sent, stored = self._written.get(md["uid"], (None, None))
        if sent == status and (obj.get("status") or {}) == stored:
            return
        body = {**obj, "status": status}
        resp = self.custom.replace_namespaced_custom_object_status(
            GROUP, version, md["namespace"], plural, md["name"], body, _preload_content=False)
        self._written[md["uid"]] = (status, json.loads(resp.data).get("status") or {})

    # -- state on disk --------------------------------------------------------------------

    def _state_path(self, uid: str) -> Path:
        return self.workdir / "state" / f"{uid}.json"

    def _save(self, st: ServiceState | GraphState) -> None:
        text = st.to_json()
        if text != st.saved:
            path = self._state_path(st.uid)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            st.saved = text

    def _load(self, uid: str) -> Obj | None:
        try:
            return dict(json.loads(self._state_path(uid).read_text()))
        except (OSError, ValueError):
            return None

    def _router_for(self, st: ServiceState | GraphState) -> Router:
        if st.router is None:
            st.router = Router(f"{st.namespace}-{st.name}", st.router_port, self.activation_timeout)
            st.router_port = st.router.port
        return st.router

    # -- InferenceService -----------------------------------------------------------------

    def _reconcile_isvc(self, obj: Obj) -> Obj:
        md = obj["metadata"]
        uid = md["uid"]
        mode = canonical_mode(md.get("annotations"), self.default_deployment_mode)
        st = self._services.get(uid)
        if st is None:
            saved = self._load(uid)
            st = ServiceState.from_json(json.dumps(saved)) if saved and not saved.get("graph") else \
                ServiceState(md["namespace"], md["name"], uid, mode)
            self._services[uid] = st
        if st.mode != mode:  # KServe's webhook refuses this; start over in the new mode
            for b in st.backends():
                self._retire(b, drain=0.0)
            st.revisions, st.deployments = [], {}
            st.latest_ready = st.rolled_out = st.previous = None
            st.mode = mode
        router = self._router_for(st)
        if mode == KNATIVE:
            predictor, conds, model = self._reconcile_knative(st, obj)
        else:
            predictor, conds, model = self._reconcile_standard(st, obj)
        self._save(st)
        conds.append(condition("IngressReady", "True"))
        blocker = all_true(conds)
        conds.append(condition("Ready", "True") if blocker is None else
                     condition("Ready", blocker["status"], blocker.get("reason", ""), blocker.get("message", "")))
        st.ready = blocker is None
        old = obj.get("status") or {}
        predictor.update(url=router.url, address={"url": router.url})
        status: Obj = {
            "observedGeneration": md.get("generation"), "deploymentMode": mode, "url": router.url,
            "address": {"url": router.url}, "components": {"predictor": predictor},
            "conditions": stamp_conditions(conds, old.get("conditions")), "modelStatus": model,
        }
        if mode == STANDARD:
            status["canaryStatuses"] = self._canary_statuses(st, obj)
            if not status["canaryStatuses"]:
                del status["canaryStatuses"]
        return status

    # -- Knative mode ---------------------------------------------------------------------

    def _reconcile_knative(self, st: ServiceState, obj: Obj) -> tuple[Obj, list[Obj], Obj]:
        name = st.name
        predictor = copy.deepcopy(obj["spec"].get("predictor") or {})
        percent = predictor.pop("canaryTrafficPercent", None)
        digest = spec_hash(predictor)
        if not st.revisions or st.revisions[-1].hash != digest:
            st.revisions.append(Revision(f"{name}-predictor-{st.next_number:05d}", st.next_number, digest, predictor))
            st.next_number += 1
        latest = st.revisions[-1]
        self._ensure_revision(st, latest)
        assert latest.backend is not None
        if latest.backend.serving:
            latest.ever_ready = True
            st.latest_ready = latest.name
        # KServe's ksvc reconciler: the traffic it asks of Knative.
        targets: list[tuple[str | None, str | None, int, bool]] = []  # (tag, revision, percent, latestRevision)
        if percent is not None and st.rolled_out:
            remaining = st.rolled_out
            if st.rolled_out == st.latest_ready == latest.name and percent == 0 and st.previous:
                remaining = st.previous  # rollback after a promotion
            targets = [("prev", remaining, 100 - int(percent), False), ("latest", None, int(percent), True)]
        else:
            targets = [(None, None, 100, True)]
        # Knative's route: latestRevision targets follow the latest ready revision.
        resolved = [(tag, rev if rev else st.latest_ready, pct, is_latest) for tag, rev, pct, is_latest in targets]
        resolved = [t for t in resolved if t[1] is not None]
        # KServe's PropagateStatus: what is rolled out.
        for _, rev, pct, is_latest in resolved:
            if rev != st.latest_ready or not is_latest:
                continue
            if st.rolled_out != st.latest_ready:
                if pct == 100:
                    st.previous, st.rolled_out = st.rolled_out, st.latest_ready
            elif st.latest_ready == latest.name and pct == 0 and st.previous:
                st.rolled_out, st.previous = st.previous, None
        merged: dict[str, int] = {}
        tags: dict[str, str] = {}
        for tag, rev, pct, _ in resolved:
            assert rev is not None
            merged[rev] = merged.get(rev, 0) + pct
            if tag and rev not in tags:
                tags[rev] = tag
        by_name = {r.name: r for r in st.revisions}
        for rev_name, pct in merged.items():
            if pct > 0 and rev_name in by_name:
                self._ensure_revision(st, by_name[rev_name])
        keep = {latest.name, *(r for r, p in merged.items() if p > 0)}
        for revision in st.revisions:
            if revision.name not in keep and revision.backend is not None:
                self._retire(revision.backend)
                revision.backend = None
        # forget revisions nothing refers to any more (their specs are not needed again)
        needed = keep | {st.rolled_out, st.previous, st.latest_ready}
        st.revisions = [r for r in st.revisions if r.name in needed]
        router_targets = []
        for revision in st.revisions:
            b = revision.backend
            if b is None:
                continue
            b.weight = merged.get(revision.name, 0) if b.serving or not b.failed else 0
            if b.weight > 0:  # a starting revision's share waits for it at the activator
                router_targets.append(Target(b.pod, b.port, b.weight, ready=b.serving))
        assert st.router is not None
        st.router.set_targets(router_targets)

        traffic = []
        for rev_name, pct in merged.items():
            entry: Obj = {"revisionName": rev_name, "percent": pct, "latestRevision": rev_name == st.latest_ready}
            if len(merged) > 1 and rev_name in tags:
                entry["tag"] = tags[rev_name]
            traffic.append(entry)
        component: Obj = {"latestCreatedRevision": latest.name, "traffic": traffic}
        for key, value in (("latestReadyRevision", st.latest_ready), ("latestRolledoutRevision", st.rolled_out),
                           ("previousRolledoutRevision", st.previous)):
            if value:
                component[key] = value

        b = latest.backend
        config = self._backend_condition("PredictorConfigurationReady", b, knative_revision=latest.name,
                                         configuration=f"{name}-predictor")
        serving_revs = [by_name[r] for r, p in merged.items() if p > 0 and r in by_name]
        if not merged:
            route = condition("PredictorRouteReady", "Unknown", "RevisionMissing",
                              f'Configuration "{name}-predictor" is waiting for a Revision to become ready.')
        else:
            down = [r for r in serving_revs if r.backend is None or not r.backend.serving]
            route = condition("PredictorRouteReady", "True") if not down else condition(
                "PredictorRouteReady", "False" if any(r.backend and r.backend.failed for r in down) else "Unknown",
                "RevisionMissing", f'Revision "{down[0].name}" is not ready.')
        blocker = all_true([config, route])
        predictor_ready = condition("PredictorReady", "True") if blocker is None else condition(
            "PredictorReady", blocker["status"], blocker.get("reason", ""), blocker.get("message", ""))
        latest_ready = condition("LatestDeploymentReady", config["status"], config.get("reason", ""),
                                 config.get("message", ""))
        return component, [config, route, predictor_ready, latest_ready], b.model_status()

    def _ensure_revision(self, st: ServiceState, rev: Revision) -> None:
        if rev.backend is None:
            env = {"PORT": "", "K_REVISION": rev.name, "K_CONFIGURATION": f"{st.name}-predictor",
                   "K_SERVICE": f"{st.name}-predictor"}
            rev.backend = self._new_backend(st, rev.name, f"{rev.name}-deployment-{rev.hash}-{pod_suffix()}",
                                            rev.spec, rev.hash, env, revision=rev.number)

    # -- Standard mode --------------------------------------------------------------------

    def _reconcile_standard(self, st: ServiceState, obj: Obj) -> tuple[Obj, list[Obj], Obj]:
        name = st.name
        predictor = copy.deepcopy(obj["spec"].get("predictor") or {})
        predictor.pop("canaryTrafficPercent", None)
        wanted: dict[str, tuple[str, Obj, int | None, int]] = {"predictor": (f"{name}-predictor", predictor, None, 0)}
        for i, canary in enumerate(obj["spec"].get("canary") or []):
            spec = copy.deepcopy(canary.get("predictor") or {})
            spec.pop("canaryTrafficPercent", None)
            wanted[f"canary-{i}"] = (spec.get("name") or f"{name}-canary-{i}", spec, i,
                                     max(0, min(100, int(canary.get("trafficPercent") or 0))))
        for key in set(st.deployments) - set(wanted):
            dep = st.deployments.pop(key)
            for b in (dep.active, dep.pending):
                if b is not None:
                    self._retire(b)
        conds: list[Obj] = []
        for key, (component_name, spec, index, _) in wanted.items():
            dep = st.deployments.setdefault(key, Deployment(key))
            self._roll(st, dep, component_name, spec, index)
            conds.append(self._backend_condition("PredictorReady", dep.newest, component=component_name,
                                                 rolling=dep.pending is not None))
        canary_share = 0
        for key, (_, _, index, pct) in wanted.items():
            active = st.deployments[key].active
            if index is not None and active is not None:
                active.weight = pct if active.serving else 0
                canary_share += active.weight
        canary_share = min(canary_share, 100)
        main = st.deployments["predictor"].active
        assert main is not None
        main.weight = 100 - canary_share
        for dep in st.deployments.values():
            if dep.pending is not None:
                dep.pending.weight = 0
        assert st.router is not None
        st.router.set_targets([Target(b.pod, b.port, b.weight) for b in
                               (d.active for d in st.deployments.values()) if b is not None and b.serving])
        blocker = all_true(conds)
        predictor_ready = condition("PredictorReady", "True") if blocker is None else blocker
        newest = st.deployments["predictor"].newest
        assert newest is not None
        latest = self._backend_condition("LatestDeploymentReady", newest, component=f"{name}-predictor",
                                         rolling=st.deployments["predictor"].pending is not None)
        component: Obj = {"traffic": [{"revisionName": f"{name}-predictor", "percent": main.weight,
                                       "latestRevision": True}]}
        return component, [predictor_ready, latest], newest.model_status()

    def _roll(self, st: ServiceState, dep: Deployment, component: str, spec: Obj, index: int | None) -> None:
        """The Deployment controller's rolling update for one replica (maxSurge 1, maxUnavailable 0)."""
        digest = spec_hash(spec)

        def make(s: Obj) -> Backend:
            h = spec_hash(s)
            return self._new_backend(st, component, f"{component}-{h}-{pod_suffix()}", s, h,
                                     {"PORT": "", "K_SERVICE": f"{st.name}-predictor"}, canary=index)

        if dep.active is None:
            dep.active = make(dep.spec if dep.spec is not None else spec)  # after a restart: what served
            dep.spec = dep.active.spec
        if dep.active.hash == digest:
            if dep.pending is not None:  # the spec went back: the new ReplicaSet scales down
                self._retire(dep.pending)
                dep.pending = None
            return
        if dep.pending is not None and dep.pending.hash != digest:
            self._retire(dep.pending)
            dep.pending = None
        if dep.pending is None:
            dep.pending = make(spec)
        if dep.pending.serving:
            self._retire(dep.active)
            dep.active, dep.pending, dep.spec = dep.pending, None, spec

    def _canary_statuses(self, st: ServiceState, obj: Obj) -> list[Obj]:
        out = []
        for i, canary in enumerate(obj["spec"].get("canary") or []):
            dep = st.deployments.get(f"canary-{i}")
            if dep is None or dep.active is None:
                continue
            newest = dep.newest
            assert newest is not None
            out.append({"name": (canary.get("predictor") or {}).get("name") or f"{st.name}-canary-{i}",
                        "ready": dep.active.serving, "trafficPercent": dep.active.weight,
                        "modelStatus": newest.model_status()})
        return out

    # -- conditions -----------------------------------------------------------------------

    @staticmethod
    def _backend_condition(ctype: str, b: Backend | None, *, knative_revision: str | None = None,
                           configuration: str | None = None, component: str | None = None,
                           rolling: bool = False) -> Obj:
        if b is not None and b.serving and not rolling:
            return condition(ctype, "True")
        if b is not None and (b.failed or b.unsupported):
            reason = "NoSupportingRuntime" if b.unsupported else "RevisionFailed" if knative_revision else "ModelLoadFailed"
            what = f'Revision "{knative_revision}"' if knative_revision else f'{component} pod "{b.pod}"'
            return condition(ctype, "False", reason, f"{what} failed with message: {b.unsupported or b.failure_text()}.")
        if b is not None and b.waiting:
            return condition(ctype, "Unknown", "CreateContainerConfigError", b.waiting)
        if knative_revision:
            return condition(ctype, "Unknown", "RevisionMissing",
                             f'Configuration "{configuration}" is waiting for a Revision to become ready.')
        return condition(ctype, "Unknown", "Deploying",
                         f'{component}: {"rolling out the new spec" if rolling else "waiting for the model server to be ready"}.')

    # -- InferenceGraph -------------------------------------------------------------------

    def _reconcile_graph(self, obj: Obj) -> Obj:
        md = obj["metadata"]
        ns, uid = md["namespace"], md["uid"]
        st = self._graphs.get(uid)
        if st is None:
            saved = self._load(uid) or {}
            st = GraphState(ns, md["name"], uid, router_port=int(saved.get("router_port") or 0))
            self._graphs[uid] = st
        router = self._router_for(st)
        self._save(st)
        root = ((obj.get("spec") or {}).get("nodes") or {}).get("root")
        targets: list[Target] = []
        problem: Obj | None = None
        if root is None:
            problem = condition("Ready", "False", "InvalidGraph", "the graph has no root node")
        elif root.get("routerType") != "Splitter":
            problem = condition("Ready", "False", "UnsupportedRouterType",
                                f"substrate.kserve routes only Splitter nodes, not {root.get('routerType')}")
        else:
            for i, step in enumerate(root.get("steps") or []):
                weight = int(step.get("weight") or 0)
                if step.get("serviceName"):
                    svc = self._service(ns, step["serviceName"])
                    if svc is None or svc.router is None:
                        problem = problem or condition("Ready", "False", "ServiceNotFound",
                                                       f'InferenceService "{step["serviceName"]}" not found')
                        continue
                    if not svc.ready:
                        problem = problem or condition("Ready", "False", "ServiceNotReady",
                                                       f'InferenceService "{step["serviceName"]}" is not ready')
                    if svc.router.serving():
                        targets.append(Target(f"step-{i}", svc.router.port, weight))
                elif step.get("serviceUrl"):
                    url = urllib.parse.urlsplit(step["serviceUrl"])
                    targets.append(Target(f"step-{i}", url.port or 80, weight, url.hostname or "127.0.0.1"))
        router.set_targets(targets)
        conds = [problem or condition("Ready", "True")]
        return {"observedGeneration": md.get("generation"),
                "deploymentMode": canonical_mode(md.get("annotations"), self.default_deployment_mode),
                "url": router.url, "conditions": stamp_conditions(conds, (obj.get("status") or {}).get("conditions"))}

    # -- processes ------------------------------------------------------------------------

    def _new_backend(self, st: ServiceState, component: str, pod: str, spec: Obj, digest: str, env: dict[str, str],
                     *, revision: int | None = None, canary: int | None = None) -> Backend:
        path = self.workdir / "logs" / st.namespace / f"{pod}.log"
        b = Backend(st.namespace, st.name, component, pod, spec, digest, env, path, revision=revision, canary=canary)
        b.env["PORT"] = str(b.port)
        self._backends.append(b)
        self._logs[(st.namespace, component)] = self._logs[(st.namespace, pod)] = path
        self._launch(b)
        return b

    def _pod_object(self, b: Backend) -> Obj:
        """The stand-in Pod the kubelet code prepares: the predictor's container (with Knative's
        and KServe's env added) and volumes."""
        container = copy.deepcopy((b.spec.get("containers") or [{}])[0])
        container.setdefault("name", "kserve-container")
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in b.env] + [
            {"name": k, "value": v} for k, v in b.env.items()]
        labels = {"serving.kserve.io/inferenceservice": b.isvc, "component": "predictor",
                  "app": b.component}
        if b.revision is not None:
            labels.update({"serving.knative.dev/revision": b.component,
                           "serving.knative.dev/configuration": f"{b.isvc}-predictor",
                           "serving.knative.dev/service": f"{b.isvc}-predictor"})
        return {
            "metadata": {"name": b.pod, "namespace": b.namespace, "uid": hashlib.md5(b.pod.encode()).hexdigest(),
                         "labels": labels, "annotations": dict(b.spec.get("annotations") or {})},
            "spec": {"containers": [container], "volumes": copy.deepcopy(b.spec.get("volumes") or []),
                     "serviceAccountName": b.spec.get("serviceAccountName") or "default"},
        }

    def _launch(self, b: Backend) -> None:
        """Starts (or restarts) the process; failures to start count as failed loads."""
        now = time.monotonic()
        b.ready, b.probe_misses, b.next_probe = False, 0, now + 0.05
        if not b.spec.get("containers"):
            b.unsupported = ("substrate.kserve runs custom containers only (spec.predictor.containers[0]); "
                             "model formats need a ServingRuntime")
            b.failed, b.restart_at = True, float("inf")
            b.last_failure = {"reason": "NoSupportingRuntime", "message": b.unsupported, "time": now_rfc3339()}
            return
        try:
            argv, env, cwd = self.job_runner.prepare_container(
                self._pod_object(b), self.workdir / "pods" / b.namespace / b.pod)
        except ConfigError as err:
            b.waiting, b.restart_at = err.message, now + 1.0
            return
        b.waiting = None
        b.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not argv:
                raise OSError("no command: there are no images here, so the container needs `command`")
            with b.log_path.open("ab") as out:
                b.log_offset = out.seek(0, os.SEEK_END)
                b.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self._failed(b, 128, f"StartError: {exc}")

    def _failed(self, b: Backend, code: int, message: str) -> None:
        now = time.monotonic()
        if b.ready and now - b.ready_since >= BACKOFF_RESET:
            b.backoff = BACKOFF_BASE
        b.popen, b.ready, b.failed = None, False, True
        b.failures += 1
        b.last_failure = {"reason": "ModelLoadFailed", "message": message, "exitCode": code, "time": now_rfc3339()}
        b.restart_at = now + b.backoff
        b.backoff = min(b.backoff * 2, BACKOFF_MAX)

    def _retire(self, b: Backend, drain: float = DRAIN_SECONDS) -> None:
        """Out of the router now; the process is stopped after `drain` (SIGTERM, then SIGKILL)."""
        if not b.stopping:
            b.stopping, b.stop_at, b.weight = True, time.monotonic() + drain, 0

    def _supervise_loop(self, stop: threading.Event) -> None:
        while not stop.wait(0.05):
            try:
                if self._supervise_once():
                    self._wake.set()
            except Exception as exc:
                log.exception("kserve supervise")
                self._record_error("supervise", repr(exc))

    def _supervise_once(self) -> bool:
        """Reaps exits (failed loads), restarts after back-off, probes readiness, stops retired
        processes. Returns whether something changed."""
        changed = False
        now = time.monotonic()
        probes: list[Backend] = []
        with self._lock:
            for b in list(self._backends):
                if b.stopping:
                    if not b.running:
                        self._backends.remove(b)
                        changed = True
                    elif now >= b.stop_at and not b.term_sent:
                        b.term_sent = now
                        b.signal(signal.SIGTERM)
                    elif b.term_sent and now - b.term_sent >= KILL_GRACE:
                        b.signal(signal.SIGKILL)
                    continue
                if b.popen is not None and b.popen.poll() is not None:
                    self._failed(b, exit_code(b.popen.returncode), log_tail(b.log_path, b.log_offset))
                    changed = True
                if b.popen is None and now >= b.restart_at:
                    self._launch(b)
                    changed = True
                if b.running and now >= b.next_probe:
                    probes.append(b)
        results = [(b, self._probe(b.port)) for b in probes]
        with self._lock:
            now = time.monotonic()
            for b, ok in results:
                if b.stopping or not b.running:
                    continue
                if ok:
                    b.probe_misses = 0
                    if not b.ready:
                        b.ready, b.failed, b.ready_since = True, False, now
                        changed = True
                    if now - b.ready_since >= BACKOFF_RESET:
                        b.backoff = BACKOFF_BASE
                elif b.ready:
                    b.probe_misses += 1
                    if b.probe_misses >= 3:
                        b.ready = False
                        changed = True
                b.next_probe = now + (1.0 if b.ready else 0.1)
        return changed

    @staticmethod
    def _probe(port: int) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", READY_PATH)
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    # -- prometheus -----------------------------------------------------------------------

    def _sync_prometheus(self) -> None:
        if self.prometheus is None:
            return
        with self._lock:
            mine = sorted({f"127.0.0.1:{b.port}" for b in self._backends if b.serving})
        if mine == self._prom_targets:
            return
        others = [t for t in self.prometheus.targets if t not in self._prom_targets and t not in mine]
        try:
            self.prometheus.set_targets(others + mine)
        except OSError as exc:  # not running: its config file is written; retried next time
            log.debug("prometheus reload: %r", exc)
            return
        self._prom_targets = mine

