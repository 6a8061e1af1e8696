"""A stand-in for the Job controller, the scheduler and a kubelet: runs batch/v1 Jobs as local
processes against the real API server.

The local control plane has no kube-controller-manager, no scheduler and no node, so a Job created
there would never get a Pod. `JobRunner` plays those parts for tests and the quick start. The
operator does not know about it: it creates Jobs and reads their status and their Pods' status,
and sees what it would see in a cluster.

    with JobRunner(api_client, workdir=tmp, env_overrides={"PYTHONPATH": src}) as runner:
        ...                                   # create Jobs; they run and finish
        runner.log_path(namespace, pod_name)  # the Pod's combined stdout/stderr

What is imitated, and how faithfully:

Job controller (pkg/controller/job)
    Pods are created from the template with `generateName: <job>-` (`<job>-<index>-` for Indexed
    Jobs), the `batch.kubernetes.io/job-name`, `job-name`, `batch.kubernetes.io/controller-uid`,
    `controller-uid` labels, a controller ownerReference to the Job and the
    `batch.kubernetes.io/job-tracking` finalizer. Finished Pods are counted exactly once through
    `status.uncountedTerminatedPods` and finalizer removal, like the real controller. A Pod
    deleted before it finished counts as failed at once and is replaced (podReplacementPolicy
    `TerminatingOrFailed`; with `Failed` the replacement waits for the Pod to finish). The Job
    fails with `FailureTarget` then `Failed` (reason `BackoffLimitExceeded` when `status.failed >
    backoffLimit`, `DeadlineExceeded` after `activeDeadlineSeconds`, `PodFailurePolicy` when a
    failed Pod matches a `FailJob` rule), deleting its active Pods and waiting for them to
    terminate; it succeeds with `SuccessCriteriaMet` then `Complete` and
    `completionTime`. `parallelism`, `completions` (NonIndexed and Indexed, with
    `completedIndexes`, the `batch.kubernetes.io/job-completion-index` annotation and label and
    the `JOB_COMPLETION_INDEX` env var), `suspend` (the `Suspended` condition, `startTime` reset
    on resume) are honoured. `podFailurePolicy` rules (`onExitCodes` with In/NotIn and optional
    `containerName`, `onPodConditions`) are matched in order against each failed Pod: `FailJob`
    fails the Job with the real controller's message, `Ignore` removes the Pod's finalizer
    without counting it (the Pod is replaced), `Count` and `FailIndex` count. With a
    podFailurePolicy (or podReplacementPolicy `Failed`) terminating Pods hold their slot.
    Not imitated: successPolicy, backoffLimitPerIndex, `restartPolicy: OnFailure` restarts (treated as Never), the exponential
    pod-creation back-off (off by default, see `backoff_seconds`), managedBy.

Garbage collector
    There is none here, so when a Job is gone (or a namespace is terminating), its Pods are
    deleted and their processes killed by the runner.

Scheduler
    Pods are created already bound (`spec.nodeName` = `node_name`).

Kubelet (one node, `node_name`)
    Only the first container runs, as a local subprocess of `command` + `args` (there are no
    images: the command must be runnable here, for example `python -m ...`), in its own process
    group, in a fresh working folder per Pod (`<workdir>/pods/<ns>/<pod>-<uid>/work`, or the
    mapped `workingDir` when it is a mount). Other containers and init containers are not run.
    `$(VAR)` references in command, args and env values are expanded as the kubelet does.
    The environment is small, like a container's: PATH (from this process), HOME, TMPDIR,
    HOSTNAME, then `envFrom`, `env` (`value`, `secretKeyRef`, `configMapKeyRef`, `fieldRef`,
    `resourceFieldRef`) and last the runner's `env_overrides`, which win. A missing Secret or
    ConfigMap key keeps the Pod Pending with the container waiting in `CreateContainerConfigError`
    (env) or `ContainerCreating` (volumes), and is retried.
    Pod status moves Pending -> Running (startTime, podIP 127.0.0.1, Ready conditions, container
    running with startedAt) -> Succeeded or Failed with the container's `terminated` state
    (exitCode, reason Completed/Error, message, startedAt, finishedAt). A process killed by a
    signal reports 128+signal. A command that cannot start reports exit code 128 and reason
    StartError. The message is the content of the container's `terminationMessagePath` (at most
    4096 bytes); with `terminationMessagePolicy: FallbackToLogsOnError` an empty message on a
    non-zero exit becomes the last 80 lines / 2048 bytes of the log. Each Pod's stdout and
    stderr go to `<workdir>/logs/<namespace>/<pod>.log` (`log_path`).
    The node is registered as a Node object (`node_name`, InternalIP 127.0.0.1, Ready), and its
    kubelet endpoint serves `/containerLogs` (substrate.kubelet), so `kubectl logs` and
    `read_namespaced_pod_log` work through the API server, while the Pod runs and after.
    Deleting a Pod (graceful) kills its process: SIGTERM to the process group, SIGKILL after the
    Pod's `terminationGracePeriodSeconds` capped at 5 s; then the final status is written and the
    Pod is deleted with grace period 0, as a kubelet does.
    Restart safety: after `start()` the runner owns no processes, so Pods on its node that are
    Running are marked Failed (container `ContainerStatusUnknown`, exit code 137) as after a node
    loss, and their Jobs continue by backoff. `stop()` kills all processes and leaves the Pods.

Volumes and paths
    Volumes are materialised under the Pod's folder: `configMap`, `secret` (both with `items`,
    `optional`, modes), `emptyDir`, `downwardAPI` and `projected` (configMap, secret and
    downwardAPI sources) as files; `persistentVolumeClaim` is the shared folder
    `<workdir>/pvc/<namespace>/<claimName>` (so Pods and tests see the same data); `hostPath` is
    the host path itself. Paths such as `/etc/tunerag/spec.json` cannot be created here, so each
    volumeMount's `mountPath` (with `subPath`) is mapped to the local folder, and the container's
    `terminationMessagePath` to a local file; every occurrence of a mapped path as a path prefix
    in command, args, env values and workingDir is rewritten to the local path (also after
    `file://`). A workload that takes its paths from arguments or env vars therefore runs
    unchanged; one that hard-codes a path in its code does not see the mount. The mapping is also
    exported as JSON in the env var `JOBRUNNER_PATH_MAP` for debugging.

One runner should manage a given namespace at a time (two would both create Pods).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import heapq
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from substrate.kubelet import KubeletError, KubeletServer, LogSource, node_object, pump_logs, stamped_path

log = logging.getLogger("tunerag.jobrunner")

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, job name)

LABEL_JOB_NAME = "batch.kubernetes.io/job-name"
LABEL_CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
JOB_TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096  # kubelet: MaxContainerTerminationMessageLength
MAX_LOG_MESSAGE_BYTES = 2048  # kubelet: MaxContainerTerminationMessageLogLength
MAX_LOG_MESSAGE_LINES = 80  # kubelet: MaxContainerTerminationMessageLogLines
MAX_KILL_GRACE = 5.0
POD_IP = "127.0.0.1"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


# ----------------------------------------------------------------------------- small helpers


def now_rfc3339() -> str:
    """The API's timestamp format (second precision, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> float:
    return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


def meta(obj: Obj) -> Obj:
    md: Obj = obj.setdefault("metadata", {})
    return md


def is_true(conditions: Iterable[Obj], ctype: str) -> bool:
    return any(c.get("type") == ctype and c.get("status") == "True" for c in conditions)


def job_finished(job: Obj) -> bool:
    conds = (job.get("status") or {}).get("conditions") or []
    return is_true(conds, "Complete") or is_true(conds, "Failed")


def pod_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pod_deleting(pod: Obj) -> bool:
    return bool(meta(pod).get("deletionTimestamp"))


def pod_index(pod: Obj) -> int | None:
    value = (meta(pod).get("annotations") or {}).get(INDEX_KEY)
    return int(value) if value is not None and value.isdigit() else None


def pod_ready(pod: Obj) -> bool:
    return is_true((pod.get("status") or {}).get("conditions") or [], "Ready")


def set_condition(conditions: list[Obj], ctype: str, status: str, reason: str, message: str) -> bool:
    """Adds or updates a condition the way the controllers do (lastTransitionTime changes only
    with the status). Returns whether anything changed."""
    for cond in conditions:
        if cond.get("type") == ctype:
            if (cond.get("status"), cond.get("reason"), cond.get("message")) == (status, reason, message):
                return False
            if cond.get("status") != status:
                cond["lastTransitionTime"] = now_rfc3339()
            cond.update(status=status, reason=reason, message=message, lastProbeTime=now_rfc3339())
            return True
    if status == "False":
        return False  # like ensureJobConditionStatus: a False condition is not added
    ts = now_rfc3339()
    conditions.append({"type": ctype, "status": status, "reason": reason, "message": message,
                       "lastProbeTime": ts, "lastTransitionTime": ts})
    return True


def only_replace_failed(job: Obj) -> bool:
    """onlyReplaceFailedPods: podReplacementPolicy Failed, implied by a podFailurePolicy."""
    spec = job["spec"]
    return spec.get("podReplacementPolicy") == "Failed" or bool(spec.get("podFailurePolicy"))


def match_pod_failure_policy(job: Obj, pod: Obj) -> tuple[str | None, bool]:
    """The Job controller's matchPodFailurePolicy for a failed Pod: (the FailJob message or None,
    whether the failure counts towards backoffLimit). Rules are tried in order and the first
    match decides; `FailIndex` counts (backoffLimitPerIndex is not imitated); no match counts."""
    policy = job["spec"].get("podFailurePolicy")
    if not policy:
        return None, True
    status = pod.get("status") or {}
    ns, name = meta(pod).get("namespace"), meta(pod).get("name")
    for index, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action")
        if rule.get("onExitCodes") is not None:
            req = rule["onExitCodes"]
            matched = next((cs for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or [])
                            if _exit_code_matches(cs, req)), None)
            if matched is None:
                continue
            what = (f"Container {matched['name']} for pod {ns}/{name} failed with exit code "
                    f"{matched['state']['terminated']['exitCode']}")
        elif rule.get("onPodConditions") is not None:
            patterns = {(p.get("type"), p.get("status", "True")) for p in rule["onPodConditions"]}
            cond = next((c for c in status.get("conditions") or [] if (c.get("type"), c.get("status")) in patterns),
                        None)
            if cond is None:
                continue
            what = f"Pod {ns}/{name} has condition {cond['type']}"
        else:
            continue
        if action == "Ignore":
            return None, False
        if action in ("Count", "FailIndex"):
            return None, True
        if action == "FailJob":
            return f"{what} matching FailJob rule at index {index}", True
    return None, True


def _exit_code_matches(container_status: Obj, req: Obj) -> bool:
    """getMatchingContainerFromList: a terminated container (of `containerName`, if given) with a
    non-zero exit code that is In / NotIn `values`."""
    terminated = (container_status.get("state") or {}).get("terminated")
    if terminated is None or req.get("containerName") not in (None, container_status.get("name")):
        return False
    code = int(terminated.get("exitCode") or 0)
    if code == 0:
        return False
    values = [int(v) for v in req.get("values") or []]
    return {"In": code in values, "NotIn": code not in values}.get(req.get("operator", ""), False)


def parse_indexes(text: str | None) -> set[int]:
    """`"0-2,5"` -> {0, 1, 2, 5} (the completedIndexes format)."""
    out: set[int] = set()
    for part in (text or "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def format_indexes(indexes: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> `"0-2,5"`."""
    parts: list[str] = []
    for _, group in itertools.groupby(enumerate(sorted(indexes)), lambda p: p[1] - p[0]):
        run = [i for _, i in group]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(text: str | int | float) -> float:
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"unsupported quantity {text!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def exit_code(returncode: int) -> int:
    """A container killed by signal N reports 128+N."""
    return 128 - returncode if returncode < 0 else returncode


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand_vars(text: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: known names are replaced, `$$` escapes, unknown stay."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(repl, text)


class PathMap:
    """Rewrites in-container paths (mountPaths, the termination message path) to local paths,
    only where the path is a whole path prefix (`/data` maps `/data/x` but not `/database`)."""

    def __init__(self, mapping: dict[str, Path]) -> None:
        self.mapping = {k.rstrip("/") or "/": v for k, v in mapping.items()}
        alts = "|".join(re.escape(k) for k in sorted(self.mapping, key=len, reverse=True))
        self._re = re.compile(rf"(?:(?<=file://)|(?<![\w.\-/]))({alts})(?=/|$|[^\w.\-])") if alts else None

    def __call__(self, text: str) -> str:
        if self._re is None:
            return text
        return self._re.sub(lambda m: str(self.mapping[m.group(1)]), text)


class ConfigError(Exception):
    """The container cannot be created yet (missing Secret, ConfigMap or key); `reason` is the
    kubelet's waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# ----------------------------------------------------------------------------- work queue


class WorkQueue:
    """A de-duplicating, delaying queue of keys, like client-go's workqueue (one worker)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Key]] = []
        self._due: dict[Key, float] = {}
        self._cv = threading.Condition()
        self._seq = itertools.count()

    def add(self, key: Key, delay: float = 0.0) -> None:
        due = time.monotonic() + max(delay, 0.0)
        with self._cv:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cv.notify()

    def get(self, timeout: float) -> Key | None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                now = time.monotonic()
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded entry
                if self._heap and self._heap[0][0] <= now:
                    _, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    return key
                wait = min(deadline, self._heap[0][0] if self._heap else deadline) - now
                if now >= deadline:
                    return None
                self._cv.wait(max(wait, 0.001))


# ----------------------------------------------------------------------------- processes


@dataclass
class PodProcess:
    """A running (or finished, not yet reported) container process of one Pod."""

    namespace: str
    name: str
    uid: str
    job: Key
    popen: subprocess.Popen[bytes]
    root: Path
    log_path: Path
    termination_path: Path
    termination_policy: str
    container: str
    started_at: str
    grace: float
    pump: threading.Thread | None = None  # copies the output pipe to the log files
    finished_at: str | None = None
    stop_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def terminate(self) -> None:
        """SIGTERM now, SIGKILL after the grace period (a kubelet's KillContainer)."""
        if self.stop_requested:
            return
        self.stop_requested = True
        self.signal(signal.SIGTERM)

        def escalate() -> None:
            if not self.done.wait(self.grace):
                self.signal(signal.SIGKILL)

        threading.Thread(target=escalate, name=f"kill-{self.name}", daemon=True).start()

    def termination_message(self, code: int) -> str:
        """What the kubelet puts in `state.terminated.message`."""
        message = ""
        with contextlib.suppress(OSError):
            message = self.termination_path.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        if not message and code != 0 and self.termination_policy == "FallbackToLogsOnError":
            message = tail_log(self.log_path)
        return message


def tail_log(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    lines = data.splitlines(keepends=True)[-MAX_LOG_MESSAGE_LINES:]
    return b"".join(lines)[-MAX_LOG_MESSAGE_BYTES:].decode(errors="replace")


# ----------------------------------------------------------------------------- the runner


class JobRunner:
    """Runs the batch/v1 Jobs of `namespaces` (all when None) as local processes; see the module
    docstring. `env_overrides` are added to every container's environment (and win);
    `backoff_seconds` > 0 turns on the Job controller's exponential delay before replacing a
    failed Pod (base * 2^(failures-1)); `resync_seconds` is how often everything is re-listed."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespaces: set[str] | None = None,
        workdir: Path | None = None,
        env_overrides: dict[str, str] | None = None,
        *,
        node_name: str = "jobrunner",
        resync_seconds: float = 2.0,
        backoff_seconds: float = 0.0,
    ) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="jobrunner-"))
        self.env_overrides = dict(env_overrides or {})
        self.node_name = node_name
        self.resync_seconds = resync_seconds
        self.backoff_seconds = backoff_seconds
        self._procs: dict[str, PodProcess] = {}  # by Pod uid
        self._lock = threading.RLock()
        self._queue = WorkQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_failure: dict[str, float] = {}  # Job uid -> monotonic time of the last new failure
        self._ns_cache: dict[str, tuple[float, bool]] = {}
        self._kubelet: KubeletServer | None = None
        self.kubelet_port = 0  # the node's kubelet endpoint, kept across stop() / start()
        self.errors: list[str] = []  # reconcile errors, for tests to assert on

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> JobRunner:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the watch, resync and worker threads. The process table starts empty, so Pods
        left Running by an earlier run are treated as lost."""
        if self._threads:
            return
        self._kubelet = KubeletServer(self._log_source, self.workdir / "kubelet", self.kubelet_port)
        self.kubelet_port = self._kubelet.port
        self._register_node()
        self._stop = stop = threading.Event()  # one per run: old watch threads wind down alone
        for ns in sorted(self.namespaces) if self.namespaces is not None else [None]:
            self._spawn(f"watch-jobs-{ns or 'all'}", self._watch_loop, stop, self._job_lister(ns), {},
                        self._on_job_event)
            self._spawn(f"watch-pods-{ns or 'all'}", self._watch_loop, stop, self._pod_lister(ns),
                        {"label_selector": LABEL_CONTROLLER_UID}, self._on_pod_event)
        self._spawn("resync", self._resync_loop, stop)
        self._spawn("worker", self._worker_loop, stop)

    def stop(self) -> None:
        """Stops the threads and kills every process (SIGKILL); Pods are left as they are, as
        when a node goes away."""
        self._stop.set()
        if self._kubelet is not None:
            self._kubelet.close()
            self._kubelet = None
        for thread in self._threads:
            if not thread.name.startswith("jobrunner-watch"):  # those end at their next timeout
                thread.join(timeout=15)
        self._threads.clear()
        with self._lock:
            procs = list(self._procs.values())
            self._procs.clear()
        for proc in procs:
            proc.signal(signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)

    def _register_node(self) -> None:
        """Registers (or updates) the Node, as a kubelet does at start: the object, then its
        status through the status subresource, with the kubelet endpoint the API server proxies
        `pods/log` to."""
        body, status = node_object(self.node_name, self.kubelet_port)
        try:
            try:
                self.core.create_node(body, _preload_content=False)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            self.core.patch_node_status(self.node_name, {"status": status}, _content_type=MERGE_PATCH,
                                        _preload_content=False)
        except ApiException as exc:  # Jobs still run; only `kubectl logs` will not
            self._record_error(("node", self.node_name), f"{exc.status} {exc.reason}: {exc.body}")

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"jobrunner-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- test hooks -----------------------------------------------------------------------

    def log_path(self, namespace: str, pod: str) -> Path:
        """Where the Pod's stdout and stderr are (kept after the Pod finishes)."""
        return self.workdir / "logs" / namespace / f"{pod}.log"

    def claim_path(self, namespace: str, claim: str) -> Path:
        """The local folder that stands for a PersistentVolumeClaim's volume."""
        return self.workdir / "pvc" / namespace / claim

    def prepare_container(self, pod: Obj, root: Path) -> tuple[list[str], dict[str, str], Path]:
        """This kubelet's preparation of a Pod's first container, without running it, for other
        harnesses that run containers (substrate.kserve): the volumes materialised under `root`
        (a persistentVolumeClaim is `claim_path`), the environment as for a Job's Pod (then
        `env_overrides`), the argv with `$(VAR)` expanded, and the working folder, with every
        mounted path mapped to its local folder. Returns (argv, env, cwd); raises `ConfigError`
        while a referenced Secret, ConfigMap or key is missing."""
        container = pod["spec"]["containers"][0]
        root.mkdir(parents=True, exist_ok=True)
        mounts = self._materialise_volumes(pod, container, root)
        declared = self._container_env(pod, container)
        paths = PathMap({**mounts, **self._mount_parents(mounts, root / "rootfs")})
        env = self._process_env(pod, declared, paths)
        argv = [paths(expand_vars(a, env)) for a in (container.get("command") or []) + (container.get("args") or [])]
        return argv, env, self._working_dir(container, paths, root)

    def processes(self) -> dict[tuple[str, str], int]:
        """(namespace, pod) -> pid of the processes running now."""
        with self._lock:
            return {(p.namespace, p.name): p.popen.pid for p in self._procs.values() if p.popen.poll() is None}

    def kill(self, namespace: str, pod: str, sig: int = signal.SIGKILL) -> bool:
        """Sends `sig` to the Pod's process group (to simulate a crash); False if none runs."""
        with self._lock:
            procs = [p for p in self._procs.values() if (p.namespace, p.name) == (namespace, pod)]
        for proc in procs:
            proc.signal(sig)
        return bool(procs)

    def sync(self, namespace: str, job: str) -> None:
        """Asks for a reconcile of one Job now."""
        self._queue.add((namespace, job))

    # -- watching -------------------------------------------------------------------------

    # Listers are lambdas on purpose: kubernetes.watch then yields plain dicts (no model types).
    def _job_lister(self, ns: str | None) -> Callable[..., Any]:
        if ns is None:
            return lambda **kw: self.batch.list_job_for_all_namespaces(**kw)
        return lambda **kw: self.batch.list_namespaced_job(ns, **kw)

    def _pod_lister(self, ns: str | None) -> Callable[..., Any]:
        if ns is None:
            return lambda **kw: self.core.list_pod_for_all_namespaces(**kw)
        return lambda **kw: self.core.list_namespaced_pod(ns, **kw)

    def _watch_loop(
        self, stop: threading.Event, lister: Callable[..., Any], kwargs: Obj, handler: Callable[[str, Obj], None]
    ) -> None:
        """List+watch with resourceVersion bookkeeping; restarts on errors and on 410 Gone."""
        rv: str | None = None
        while not stop.is_set():
            try:
                if rv is None:
                    listing = json.loads(lister(_preload_content=False, **kwargs).data)
                    for item in listing.get("items", []):
                        handler("ADDED", item)
                    rv = listing["metadata"]["resourceVersion"]
                w = watch.Watch()
                for event in w.stream(lister, resource_version=rv, timeout_seconds=5,
                                      _request_timeout=30, **kwargs):
                    if stop.is_set():
                        w.stop()
                        break
                    raw = event.get("raw_object") or {}
                    if event["type"] != "BOOKMARK":
                        handler(event["type"], raw)
                    rv = meta(raw).get("resourceVersion") or rv
            except ApiException as exc:  # an ERROR event (410 Gone: list again) or a failed call
                rv = None if exc.status == 410 else rv
                log.debug("watch error: %s", exc)
                stop.wait(0.5)
            except Exception as exc:
                log.debug("watch error: %r", exc)
                stop.wait(0.5)

    def _on_job_event(self, kind: str, job: Obj) -> None:
        key = (meta(job).get("namespace", ""), meta(job).get("name", ""))
        if kind == "DELETED" or not job_finished(job) or self._owns_processes(key):
            self._queue.add(key)

    def _on_pod_event(self, kind: str, pod: Obj) -> None:
        labels = meta(pod).get("labels") or {}
        name = labels.get(LABEL_JOB_NAME) or labels.get("job-name")
        if name:
            self._queue.add((meta(pod).get("namespace", ""), name))

    def _owns_processes(self, key: Key) -> bool:
        with self._lock:
            return any(p.job == key for p in self._procs.values())

    def _resync_loop(self, stop: threading.Event) -> None:
        """Level-triggered safety net: every Job not finished, every Job that has processes, and
        every Job name that has orphaned Pods is reconciled again."""
        while not stop.wait(self.resync_seconds):
            try:
                self._resync_once()
            except Exception as exc:
                log.debug("resync error: %r", exc)

    def _resync_once(self) -> None:
        jobs = self._list("jobs")
        uids = {meta(j).get("uid") for j in jobs}
        for job in jobs:
            self._on_job_event("RESYNC", job)
        for pod in self._list("pods", label_selector=LABEL_CONTROLLER_UID):
            owner = (meta(pod).get("labels") or {}).get(LABEL_CONTROLLER_UID)
            if owner not in uids or (not pod_terminal(pod) and pod_deleting(pod)):
                self._on_pod_event("RESYNC", pod)
        with self._lock:
            keys = {p.job for p in self._procs.values()}
        for key in keys:
            self._queue.add(key)

    def _list(self, resource: str, **kwargs: Any) -> list[Obj]:
        items: list[Obj] = []
        for ns in sorted(self.namespaces) if self.namespaces is not None else [None]:
            lister = self._job_lister(ns) if resource == "jobs" else self._pod_lister(ns)
            items += json.loads(lister(_preload_content=False, **kwargs).data).get("items", [])
        return items

    def _worker_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key = self._queue.get(timeout=0.2)
            if key is None or stop.is_set():
                continue
            try:
                self._reconcile(key)
            except ApiException as exc:
                benign = exc.status in (404, 409)  # a stale read or an object deleted meanwhile
                if not benign:
                    self._record_error(key, f"{exc.status} {exc.reason}: {exc.body}")
                self._queue.add(key, 0.05 if benign else 0.5)
            except Exception as exc:
                log.exception("reconciling %s/%s", *key)
                self._record_error(key, repr(exc))
                self._queue.add(key, 0.5)

    def _record_error(self, key: Key, text: str) -> None:
        log.warning("reconciling %s/%s: %s", key[0], key[1], text)
        self.errors.append(f"{key[0]}/{key[1]}: {text}")
        del self.errors[:-50]

    # -- API calls (plain dicts) ----------------------------------------------------------

    @staticmethod
    def _json(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        data = fn(*args, _preload_content=False, **kwargs).data
        return json.loads(data) if data else {}

    def _get_job(self, ns: str, name: str) -> Obj | None:
        try:
            return self._json(self.batch.read_namespaced_job, name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _list_pods(self, ns: str, selector: str) -> list[Obj]:
        return list(self._json(self.core.list_namespaced_pod, ns, label_selector=selector).get("items", []))

    def _write_job_status(self, job: Obj, status: Obj) -> Obj:
        body = {**job, "status": status}
        return self._json(self.batch.replace_namespaced_job_status, meta(job)["name"], meta(job)["namespace"], body)

    def _patch_pod_status(self, pod: Obj, status: Obj) -> Obj:
        """Merge-patches the status subresource (lists are replaced whole), like a kubelet."""
        try:
            return self._json(self.core.patch_namespaced_pod_status, meta(pod)["name"], meta(pod)["namespace"],
                              {"status": status}, _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                return {**pod, "status": status}
            raise

    def _delete_pod(self, pod: Obj, grace: int | None = None) -> None:
        body = {"gracePeriodSeconds": grace} if grace is not None else None
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(meta(pod)["name"], meta(pod)["namespace"], body=body,
                                            _preload_content=False)

    def _remove_finalizer(self, pod: Obj) -> Obj:
        finalizers = meta(pod).get("finalizers") or []
        if JOB_TRACKING_FINALIZER not in finalizers:
            return pod
        i = finalizers.index(JOB_TRACKING_FINALIZER)
        patch = [{"op": "test", "path": f"/metadata/finalizers/{i}", "value": JOB_TRACKING_FINALIZER},
                 {"op": "remove", "path": f"/metadata/finalizers/{i}"}]
        try:
            return self._json(self.core.patch_namespaced_pod, meta(pod)["name"], meta(pod)["namespace"], patch,
                              _content_type=JSON_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                return {**pod, "metadata": {**meta(pod), "finalizers": []}}
            raise

    def _event(self, obj: Obj, etype: str, reason: str, message: str, component: str) -> None:
        """Best-effort core/v1 Event, as the controllers record them."""
        ts = now_rfc3339()
        body = {
            "metadata": {"generateName": f"{meta(obj)['name']}.", "namespace": meta(obj)["namespace"]},
            "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", "Pod"),
                               "name": meta(obj)["name"], "namespace": meta(obj)["namespace"],
                               "uid": meta(obj).get("uid")},
            "type": etype, "reason": reason, "message": message[:1024], "count": 1,
            "firstTimestamp": ts, "lastTimestamp": ts, "source": {"component": component},
        }
        with contextlib.suppress(Exception):
            self.core.create_namespaced_event(meta(obj)["namespace"], body, _preload_content=False)

    def _namespace_terminating(self, ns: str) -> bool:
        cached = self._ns_cache.get(ns)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            nsobj = self._json(self.core.read_namespace, ns)
            terminating = bool(meta(nsobj).get("deletionTimestamp"))
        except ApiException as exc:
            if exc.status != 404:
                raise
            terminating = True
        self._ns_cache[ns] = (time.monotonic() + 1.0, terminating)
        return terminating

    # -- reconcile ------------------------------------------------------------------------

    def _reconcile(self, key: Key) -> None:
        """One level-triggered pass over a Job: kubelet work for its Pods, garbage collection of
        Pods that lost their Job, then the Job controller's work."""
        ns, name = key
        job = self._get_job(ns, name)
        gone = job is None or bool(meta(job).get("deletionTimestamp")) or self._namespace_terminating(ns)
        uid = None if gone or job is None else meta(job)["uid"]
        pods: list[Obj] = []
        listed = self._list_pods(ns, f"{LABEL_JOB_NAME}={name}")
        self._kill_vanished(key, {meta(p)["uid"] for p in listed})
        for pod in listed:
            if (meta(pod).get("labels") or {}).get(LABEL_CONTROLLER_UID) == uid:
                pods.append(pod)
            else:
                self._collect_orphan(pod)
        if job is None or uid is None:
            return
        pods = [self._kubelet_sync(p) for p in pods]
        if job_finished(job):
            for pod in pods:
                self._remove_finalizer(pod)
            return
        self._controller_sync(job, pods)

    def _collect_orphan(self, pod: Obj) -> None:
        """What the garbage collector (and the namespace controller) would do to a Pod whose Job
        is gone: delete it; the kubelet part then kills the process."""
        if not pod_deleting(pod) and not pod_terminal(pod):
            self._delete_pod(pod)
            pod = {**pod, "metadata": {**meta(pod), "deletionTimestamp": now_rfc3339()}}
        pod = self._remove_finalizer(pod)
        if pod_terminal(pod):
            self._delete_pod(pod)
        else:
            self._kubelet_sync(pod)

    def _kill_vanished(self, key: Key, live_uids: set[str]) -> None:
        """Processes whose Pod object is gone (force-deleted) are killed and forgotten."""
        with self._lock:
            vanished = [p for p in self._procs.values() if p.job == key and p.uid not in live_uids]
            for proc in vanished:
                self._procs.pop(proc.uid, None)
        for proc in vanished:
            proc.terminate()

    # -- kubelet --------------------------------------------------------------------------

    def _kubelet_sync(self, pod: Obj) -> Obj:
        """A kubelet's pod worker for one Pod on this node; returns the Pod as last written."""
        if (pod.get("spec") or {}).get("nodeName") != self.node_name or pod_terminal(pod):
            if pod_terminal(pod) and pod_deleting(pod):
                self._delete_pod(pod, grace=0)
            return pod
        with self._lock:
            proc = self._procs.get(meta(pod)["uid"])
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if proc is None:
            if phase == "Running":
                pod = self._patch_pod_status(pod, self._lost_status(pod))
            elif not pod_deleting(pod):
                return self._start(pod)
            if pod_deleting(pod):
                self._delete_pod(pod, grace=0)
            return pod
        if proc.done.is_set():
            pod = self._report_exit(pod, proc)
            if pod_deleting(pod):
                self._delete_pod(pod, grace=0)
        elif pod_deleting(pod):
            proc.terminate()
        return pod

    def _report_exit(self, pod: Obj, proc: PodProcess) -> Obj:
        code = exit_code(proc.popen.returncode)
        status = self._terminated_status(pod, proc, code)
        pod = self._patch_pod_status(pod, status)
        with self._lock:
            self._procs.pop(proc.uid, None)
        return pod

    def _start(self, pod: Obj) -> Obj:
        """Creates the sandbox (volumes), resolves the environment and starts the process."""
        ns, name, uid = meta(pod)["namespace"], meta(pod)["name"], meta(pod)["uid"]
        container = pod["spec"]["containers"][0]
        root = self.workdir / "pods" / ns / f"{name}-{uid[:8]}"
        root.mkdir(parents=True, exist_ok=True)
        try:
            mounts = self._materialise_volumes(pod, container, root)
            declared = self._container_env(pod, container)
        except ConfigError as err:
            self._queue.add(self._job_key(pod), 1.0)
            return self._patch_pod_status(pod, self._waiting_status(pod, err.reason, err.message))
        termination_path = root / "termination-log"
        termination_path.write_bytes(b"")
        paths = PathMap({**mounts, **self._mount_parents(mounts, root / "rootfs"),
                         container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH: termination_path})
        env = self._process_env(pod, declared, paths)
        argv = [paths(expand_vars(a, env)) for a in (container.get("command") or []) + (container.get("args") or [])]
        cwd = self._working_dir(container, paths, root)
        log_path = self.log_path(ns, name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started_at = now_rfc3339()
        try:
            if not argv:
                raise OSError("jobrunner runs `command` + `args` and there are none (no image entrypoint here)")
            for path in (log_path, stamped_path(log_path)):
                path.touch()
            popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return self._patch_pod_status(pod, self._start_error_status(pod, started_at, str(exc)))
        grace = pod["spec"].get("terminationGracePeriodSeconds")
        proc = PodProcess(
            namespace=ns, name=name, uid=uid, job=self._job_key(pod), popen=popen, root=root,
            log_path=log_path, termination_path=termination_path,
            termination_policy=container.get("terminationMessagePolicy") or "File",
            container=container["name"], started_at=started_at,
            grace=min(float(grace if grace is not None else 30), MAX_KILL_GRACE),
            pump=pump_logs(popen.stdout, log_path, name) if popen.stdout else None,
        )
        with self._lock:
            self._procs[uid] = proc
        threading.Thread(target=self._reap, args=(proc,), name=f"reap-{name}", daemon=True).start()
        return self._patch_pod_status(pod, self._running_status(pod, proc))

    @staticmethod
    def _mount_parents(mounts: dict[str, Path], rootfs: Path) -> dict[str, Path]:
        """A container sees its mounts inside one filesystem tree, so a path *above* a mount
        (`/mnt/pvc` above `/mnt/pvc/docs`) lists them. Here each pod gets a small tree of
        symlinks, `rootfs`, and such parent paths map into it."""
        parents: dict[str, Path] = {}
        for mount_path, local in mounts.items():
            link = rootfs / mount_path.strip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(local, target_is_directory=local.is_dir())
            for parent in Path(mount_path).parents:
                if str(parent) != "/" and str(parent) not in mounts:
                    parents[str(parent)] = rootfs / str(parent).strip("/")
        return parents

    def _reap(self, proc: PodProcess) -> None:
        proc.popen.wait()
        proc.finished_at = now_rfc3339()
        if proc.pump is not None:
            proc.pump.join(timeout=5)  # the log is complete before the exit is reported
        proc.done.set()
        if not self._stop.is_set():
            self._queue.add(proc.job)

    @staticmethod
    def _job_key(pod: Obj) -> Key:
        labels = meta(pod).get("labels") or {}
        return meta(pod)["namespace"], labels.get(LABEL_JOB_NAME) or labels.get("job-name", "")

    @staticmethod
    def _working_dir(container: Obj, paths: PathMap, root: Path) -> Path:
        wanted = container.get("workingDir")
        if wanted and paths(wanted) != wanted:
            return Path(paths(wanted))
        work = root / "work"
        work.mkdir(parents=True, exist_ok=True)
        return work

    # -- kubelet: logs ---------------------------------------------------------------------

    def _log_source(self, ns: str, name: str, container: str) -> LogSource:
        """The kubelet's getContainerLogs checks: the Pod must be on this node and have the
        container, and the container must have started (only the first one ever does)."""
        try:
            pod = self._json(self.core.read_namespaced_pod, name, ns)
        except ApiException as exc:
            if exc.status == 404:
                raise KubeletError(404, f'pod "{name}" does not exist') from exc
            raise
        if pod["spec"].get("nodeName") != self.node_name:
            raise KubeletError(404, f'pod "{name}" does not exist')
        specs = pod["spec"]["containers"] + (pod["spec"].get("initContainers") or [])
        if container not in {c["name"] for c in specs}:
            raise KubeletError(404, f'container "{container}" not found in pod "{name}"')
        path = stamped_path(self.log_path(ns, name))
        if container != specs[0]["name"] or not path.exists():
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            state = next((s.get("state") or {} for s in statuses if s.get("name") == container), {})
            reason = (state.get("waiting") or {}).get("reason") or "ContainerCreating"
            raise KubeletError(400, f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        uid = meta(pod)["uid"]

        def running() -> bool:
            with self._lock:
                proc = self._procs.get(uid)
            return proc is not None and not proc.done.is_set()

        return LogSource(path, running)

    # -- kubelet: pod status --------------------------------------------------------------

    def _base_status(self, pod: Obj, phase: str, ready: bool, reason: str | None) -> Obj:
        ts = now_rfc3339()
        previous = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}

        def cond(ctype: str, ok: bool, why: str | None = None) -> Obj:
            status = "True" if ok else "False"
            old = previous.get(ctype)
            since = old["lastTransitionTime"] if old and old.get("status") == status else ts
            out = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
            if why and not ok:
                out["reason"] = why
            return out

        running = phase == "Running"
        return {
            "phase": phase,
            "hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}], "podIP": POD_IP, "podIPs": [{"ip": POD_IP}],
            "startTime": (pod.get("status") or {}).get("startTime") or ts,
            "qosClass": (pod.get("status") or {}).get("qosClass") or "BestEffort",
            "conditions": [
                cond("PodReadyToStartContainers", running or phase == "Pending"),
                cond("Initialized", True),
                cond("Ready", ready, reason),
                cond("ContainersReady", ready, reason),
                cond("PodScheduled", True),
            ],
        }

    def _container_statuses(self, pod: Obj, first: Obj) -> list[Obj]:
        """Status for every container: the first is the one that runs; the others never start."""
        out = []
        for i, c in enumerate(pod["spec"]["containers"]):
            base = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "restartCount": 0}
            if i == 0:
                out.append({**base, **first})
            else:
                out.append({**base, "ready": False, "started": False,
                            "state": {"waiting": {"reason": "NotRunByJobRunner",
                                                  "message": "jobrunner runs only the first container"}}})
        return out

    def _running_status(self, pod: Obj, proc: PodProcess) -> Obj:
        status = self._base_status(pod, "Running", ready=True, reason=None)
        status["containerStatuses"] = self._container_statuses(pod, {
            "containerID": f"jobrunner://{proc.popen.pid}", "ready": True, "started": True,
            "state": {"running": {"startedAt": proc.started_at}}})
        return status

    def _terminated_status(self, pod: Obj, proc: PodProcess, code: int) -> Obj:
        status = self._base_status(pod, "Succeeded" if code == 0 else "Failed", ready=False, reason="PodCompleted")
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": proc.started_at, "finishedAt": proc.finished_at or now_rfc3339(),
                      "containerID": f"jobrunner://{proc.popen.pid}"}
        message = proc.termination_message(code)
        if message:
            terminated["message"] = message
        status["containerStatuses"] = self._container_statuses(pod, {
            "containerID": terminated["containerID"], "ready": False, "started": False,
            "state": {"terminated": terminated}})
        return status

    def _start_error_status(self, pod: Obj, at: str, message: str) -> Obj:
        status = self._base_status(pod, "Failed", ready=False, reason="PodCompleted")
        status["containerStatuses"] = self._container_statuses(pod, {
            "ready": False, "started": False,
            "state": {"terminated": {"exitCode": 128, "reason": "StartError", "message": message,
                                     "startedAt": at, "finishedAt": at}}})
        return status

    def _waiting_status(self, pod: Obj, reason: str, message: str) -> Obj:
        status = self._base_status(pod, "Pending", ready=False, reason="ContainersNotReady")
        status["containerStatuses"] = self._container_statuses(pod, {
            "ready": False, "started": False, "state": {"waiting": {"reason": reason, "message": message}}})
        return status

    def _lost_status(self, pod: Obj) -> Obj:
        """A Running Pod whose process this runner does not have (it was restarted): failed as
        after a node loss, with the kubelet's ContainerStatusUnknown container state."""
        status = self._base_status(pod, "Failed", ready=False, reason="PodCompleted")
        old = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]
        started = ((old.get("state") or {}).get("running") or {}).get("startedAt") or status["startTime"]
        status["reason"] = "NodeLost"
        status["message"] = f"jobrunner on node {self.node_name} restarted; the Pod's process is gone"
        status["containerStatuses"] = self._container_statuses(pod, {
            "ready": False, "started": False,
            "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                                     "message": "The container could not be located when the pod was terminated",
                                     "startedAt": started, "finishedAt": now_rfc3339()}}})
        return status

    # -- kubelet: environment -------------------------------------------------------------

    def _read(self, kind: str, ns: str, name: str) -> Obj | None:
        reader = self.core.read_namespaced_secret if kind == "Secret" else self.core.read_namespaced_config_map
        try:
            return self._json(reader, name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _source_data(self, kind: str, ns: str, name: str, optional: bool, reason: str) -> dict[str, bytes] | None:
        """A Secret's or ConfigMap's data as bytes; None if missing and optional."""
        obj = self._read(kind, ns, name)
        if obj is None:
            if optional:
                return None
            raise ConfigError(reason, f'{kind.lower() if kind == "Secret" else "configmap"} "{name}" not found')
        if kind == "Secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def _key_ref(self, kind: str, ns: str, ref: Obj) -> str | None:
        data = self._source_data(kind, ns, ref.get("name", ""), bool(ref.get("optional")), "CreateContainerConfigError")
        if data is None:
            return None
        if ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise ConfigError("CreateContainerConfigError", f"couldn't find key {ref['key']} in {kind} {ns}/{ref.get('name')}")
        return data[ref["key"]].decode(errors="replace")

    @staticmethod
    def _host_env(pod: Obj) -> dict[str, str]:
        """What a container gets without declaring it: PATH and the locale of this machine, and
        the pod's hostname."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": meta(pod)["name"]}
        return env | {var: os.environ[var] for var in ("LANG", "LC_ALL") if var in os.environ}

    def _process_env(self, pod: Obj, declared: dict[str, str], paths: PathMap) -> dict[str, str]:
        """The process environment: this machine's basics, the container's declared variables
        with their in-container paths mapped to local folders, then `env_overrides` and the path
        map. Only what the pod declares is mapped: the basics and the overrides are this
        machine's own paths (the interpreter, the checkout, the cache), which a mount such as an
        emptyDir at /tmp must not rewrite into the pod's folder."""
        mapped = {k: paths(v) for k, v in declared.items()}
        path_map = json.dumps({k: str(v) for k, v in paths.mapping.items()})
        return {**self._host_env(pod), **mapped, **self.env_overrides, "JOBRUNNER_PATH_MAP": path_map}

    def _container_env(self, pod: Obj, container: Obj) -> dict[str, str]:
        """The variables a container declares: envFrom, then env (env wins); `$(VAR)` in a value
        expands against those and the basics (`_host_env`)."""
        ns = meta(pod)["namespace"]
        basics = self._host_env(pod)
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, ref in (("ConfigMap", source.get("configMapRef")), ("Secret", source.get("secretRef"))):
                if ref is None:
                    continue
                data = self._source_data(kind, ns, ref.get("name", ""), bool(ref.get("optional")), "CreateContainerConfigError")
                env.update({prefix + k: v.decode(errors="replace") for k, v in (data or {}).items()})
        for var in container.get("env") or []:
            value = self._env_value(pod, container, var, basics | env)
            if value is not None:
                env[var["name"]] = value
        return env

    def _env_value(self, pod: Obj, container: Obj, var: Obj, env: dict[str, str]) -> str | None:
        source = var.get("valueFrom")
        if source is None:
            return expand_vars(var.get("value", ""), env)
        ns = meta(pod)["namespace"]
        if "secretKeyRef" in source:
            return self._key_ref("Secret", ns, source["secretKeyRef"])
        if "configMapKeyRef" in source:
            return self._key_ref("ConfigMap", ns, source["configMapKeyRef"])
        if "fieldRef" in source:
            return self._field_value(pod, source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            return self._resource_value(pod, container, source["resourceFieldRef"])
        return None

    def _field_value(self, pod: Obj, path: str) -> str:
        """The downward API's fieldRef values; status fields as they will be once Running."""
        md = meta(pod)
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((md.get(match.group(1)) or {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = md.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        values = {
            "metadata.name": md.get("name", ""), "metadata.namespace": md.get("namespace", ""),
            "metadata.uid": md.get("uid", ""), "spec.nodeName": self.node_name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": POD_IP, "status.podIPs": POD_IP, "status.hostIP": POD_IP, "status.hostIPs": POD_IP,
        }
        if path not in values:
            raise ConfigError("CreateContainerConfigError", f"unsupported fieldPath {path!r}")
        return str(values[path])

    def _resource_value(self, pod: Obj, container: Obj, ref: Obj) -> str:
        """resourceFieldRef: the container's request or limit, a limit defaulting to this
        machine's capacity (as to node allocatable), divided by `divisor` and rounded up."""
        target = container
        if ref.get("containerName"):
            target = next((c for c in pod["spec"]["containers"] if c["name"] == ref["containerName"]), container)
        kind, _, resource = ref["resource"].partition(".")
        resources = (target.get("resources") or {}).get("limits" if kind == "limits" else "requests") or {}
        if resource in resources:
            value = parse_quantity(resources[resource])
        elif kind == "limits" or resource == "cpu":
            value = self._capacity(resource) if kind == "limits" else 0.0
        else:
            value = 0.0
        divisor = parse_quantity(ref.get("divisor") or "1")
        return str(math.ceil(value / divisor)) if divisor else "0"

    @staticmethod
    def _capacity(resource: str) -> float:
        if resource == "cpu":
            return float(os.cpu_count() or 1)
        if resource == "memory":
            with contextlib.suppress(ValueError, OSError, AttributeError):
                return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        if resource == "ephemeral-storage":
            return float(shutil.disk_usage("/").total)
        return 0.0

    # -- kubelet: volumes -----------------------------------------------------------------

    def _materialise_volumes(self, pod: Obj, container: Obj, root: Path) -> dict[str, Path]:
        """Writes the Pod's volumes under `root/volumes` and returns mountPath -> local path for
        the container's volumeMounts."""
        ns = meta(pod)["namespace"]
        local: dict[str, Path] = {}
        for vol in pod["spec"].get("volumes") or []:
            local[vol["name"]] = self._volume(pod, container, vol, root / "volumes" / vol["name"], ns)
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            base = local.get(mount["name"])
            if base is None:
                raise ConfigError("CreateContainerConfigError", f"volume {mount['name']!r} not found")
            target = base / mount["subPath"] if mount.get("subPath") else base
            if mount.get("subPath") and not target.exists():
                target.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = target
        return mounts

    def _volume(self, pod: Obj, container: Obj, vol: Obj, path: Path, ns: str) -> Path:
        if "persistentVolumeClaim" in vol:
            claim = self.claim_path(ns, vol["persistentVolumeClaim"]["claimName"])
            claim.mkdir(parents=True, exist_ok=True)
            return claim
        if "hostPath" in vol:
            return Path(vol["hostPath"]["path"])
        path.mkdir(parents=True, exist_ok=True)
        if "configMap" in vol or "secret" in vol:
            self._write_projection(ns, vol, path, vol.get("defaultMode"))
        elif "downwardAPI" in vol:
            self._write_downward(pod, container, vol["downwardAPI"].get("items") or [], path,
                                 vol["downwardAPI"].get("defaultMode"))
        elif "projected" in vol:
            for source in vol["projected"].get("sources") or []:
                if "downwardAPI" in source:
                    self._write_downward(pod, container, source["downwardAPI"].get("items") or [], path,
                                         vol["projected"].get("defaultMode"))
                else:
                    self._write_projection(ns, source, path, vol["projected"].get("defaultMode"))
        return path  # emptyDir and anything else: an empty folder

    def _write_projection(self, ns: str, source: Obj, path: Path, default_mode: int | None) -> None:
        """A configMap or secret volume (or projected source): every key, or `items`."""
        kind, spec = ("Secret", source["secret"]) if "secret" in source else ("ConfigMap", source.get("configMap"))
        if spec is None:
            return
        name = spec.get("secretName") or spec.get("name", "")
        data = self._source_data(kind, ns, name, bool(spec.get("optional")), "ContainerCreating")
        if data is None:
            return
        items = spec.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                if spec.get("optional"):
                    continue
                raise ConfigError("ContainerCreating", f"configmap references non-existent config key: {item['key']}"
                                  if kind == "ConfigMap" else f"references non-existent secret key: {item['key']}")
            write_file(path / item["path"], data[item["key"]], item.get("mode", spec.get("defaultMode", default_mode)))

    def _write_downward(self, pod: Obj, container: Obj, items: list[Obj], path: Path, mode: int | None) -> None:
        for item in items:
            if "fieldRef" in item:
                value = self._field_value(pod, item["fieldRef"]["fieldPath"])
            else:
                value = self._resource_value(pod, container, item["resourceFieldRef"])
            write_file(path / item["path"], value.encode(), item.get("mode", mode))

    # -- Job controller -------------------------------------------------------------------

    def _controller_sync(self, job: Obj, pods: list[Obj]) -> None:
        """One syncJob of the Job controller for a Job that is not finished."""
        job, pods = self._track_finished_pods(job, pods)
        status = copy.deepcopy(job.get("status") or {})
        spec = job["spec"]
        suspended = bool(spec.get("suspend"))
        conds: list[Obj] = status.setdefault("conditions", [])
        if not status.get("startTime") and not suspended:
            status["startTime"] = now_rfc3339()
        active = [p for p in pods if not pod_terminal(p) and not pod_deleting(p)]
        terminating = sum(1 for p in pods if not pod_terminal(p) and pod_deleting(p))
        succeeded, completed = self._succeeded(job, status, pods)

        finishing = self._finishing_condition(job, status, pods, succeeded, len(active))
        if finishing is not None:
            for pod in active:
                self._delete_pod(pod)
            terminating += len(active)
            active = []
            set_condition(conds, *finishing)
            final = {"SuccessCriteriaMet": "Complete", "FailureTarget": "Failed"}[finishing[0]]
            if terminating == 0:
                set_condition(conds, final, "True", finishing[2], finishing[3])
                if final == "Complete":
                    status["completionTime"] = now_rfc3339()
                self._event(job, "Normal" if final == "Complete" else "Warning",
                            "Completed" if final == "Complete" else finishing[2],
                            "Job completed" if final == "Complete" else finishing[3], "job-controller")
        elif suspended:
            for pod in active:
                self._delete_pod(pod)
            terminating += len(active)
            active = []
            if set_condition(conds, "Suspended", "True", "JobSuspended", "Job suspended"):
                status.pop("startTime", None)
        else:
            if set_condition(conds, "Suspended", "False", "JobResumed", "Job resumed"):
                status["startTime"] = now_rfc3339()
            active = self._manage(job, status, active, completed, terminating)
        status["active"] = len(active)
        status["ready"] = sum(1 for p in active if pod_ready(p))
        status["terminating"] = terminating
        if completed is not None:
            status["completedIndexes"] = format_indexes(completed)
        status["succeeded"] = succeeded
        if not conds:
            status.pop("conditions")
        if status != (job.get("status") or {}):
            self._write_job_status(job, status)
        self._schedule_deadline(job, status)

    def _track_finished_pods(self, job: Obj, pods: list[Obj]) -> tuple[Obj, list[Obj]]:
        """Counts finished Pods exactly once: their uids go to uncountedTerminatedPods, then their
        finalizers are removed, then they move into the succeeded/failed counters."""
        status = copy.deepcopy(job.get("status") or {})
        uncounted = status.setdefault("uncountedTerminatedPods", {})
        listed = {u for k in ("succeeded", "failed") for u in uncounted.get(k) or []}
        added = False
        ignored: set[str] = set()  # failures a podFailurePolicy Ignore rule matched: not counted
        for pod in pods:
            uid = meta(pod)["uid"]
            if JOB_TRACKING_FINALIZER not in (meta(pod).get("finalizers") or []) or uid in listed:
                continue
            outcome = self._finished_outcome(job, pod)
            if outcome == "failed" and not match_pod_failure_policy(job, pod)[1]:
                ignored.add(uid)
            elif outcome:
                uncounted.setdefault(outcome, []).append(uid)
                added = True
        if added:
            job = self._write_job_status(job, status)
        status = copy.deepcopy(job.get("status") or {})
        uncounted = status.get("uncountedTerminatedPods") or {}
        pending = {u for k in ("succeeded", "failed") for u in uncounted.get(k) or []}
        pods = [self._remove_finalizer(p) if meta(p)["uid"] in pending | ignored else p for p in pods]
        still_tracked = {meta(p)["uid"] for p in pods if JOB_TRACKING_FINALIZER in (meta(p).get("finalizers") or [])}
        for outcome in ("succeeded", "failed"):
            done = [u for u in uncounted.get(outcome) or [] if u not in still_tracked]
            if done:
                status[outcome] = int(status.get(outcome) or 0) + len(done)
                uncounted[outcome] = [u for u in uncounted[outcome] if u in still_tracked]
                if outcome == "failed":
                    self._last_failure[meta(job)["uid"]] = time.monotonic()
        if uncounted:
            status["uncountedTerminatedPods"] = {k: v for k, v in uncounted.items() if v}
        if not status.get("uncountedTerminatedPods"):
            status.pop("uncountedTerminatedPods", None)
        return {**job, "status": status}, pods

    @staticmethod
    def _finished_outcome(job: Obj, pod: Obj) -> str | None:
        """isPodFailed / succeeded: a Pod deleted before it finished counts as failed, unless
        podReplacementPolicy is Failed or there is a podFailurePolicy (then it counts once its
        phase says so)."""
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Succeeded":
            return "succeeded"
        if phase == "Failed":
            return "failed"
        if pod_deleting(pod) and not only_replace_failed(job):
            return "failed"
        return None

    @staticmethod
    def _succeeded(job: Obj, status: Obj, pods: list[Obj]) -> tuple[int, set[int] | None]:
        """The succeeded count; for Indexed Jobs the set of completed indexes as well (the count
        is then the number of distinct completed indexes)."""
        if job["spec"].get("completionMode") != "Indexed":
            return int(status.get("succeeded") or 0), None
        completed = parse_indexes(status.get("completedIndexes"))
        completions = int(job["spec"].get("completions") or 0)
        for pod in pods:
            index = pod_index(pod)
            if (pod.get("status") or {}).get("phase") == "Succeeded" and index is not None and index < completions:
                completed.add(index)
        return len(completed), completed

    def _finishing_condition(
        self, job: Obj, status: Obj, pods: list[Obj], succeeded: int, active: int
    ) -> tuple[str, str, str, str] | None:
        """The interim condition (type, status, reason, message) the Job has reached, if any, in
        the real controller's order: earlier decisions, a podFailurePolicy FailJob rule
        (getFailJobMessage), backoff limit, deadline, success."""
        conds = status.get("conditions") or []
        for cond in conds:
            if cond.get("type") in ("SuccessCriteriaMet", "FailureTarget") and cond.get("status") == "True":
                return cond["type"], "True", cond.get("reason", ""), cond.get("message", "")
        spec = job["spec"]
        for pod in pods:
            if self._finished_outcome(job, pod) == "failed":
                message = match_pod_failure_policy(job, pod)[0]
                if message:
                    return "FailureTarget", "True", "PodFailurePolicy", message
        if int(status.get("failed") or 0) > int(spec.get("backoffLimit", 6)):
            return "FailureTarget", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        if self._past_deadline(job, status):
            return "FailureTarget", "True", "DeadlineExceeded", "Job was active longer than specified deadline"
        completions = spec.get("completions")
        done = succeeded > 0 if completions is None else succeeded >= int(completions)
        if done and (active == 0 or completions is not None):
            return "SuccessCriteriaMet", "True", "CompletionsReached", "Reached expected number of succeeded pods"
        return None

    @staticmethod
    def _past_deadline(job: Obj, status: Obj) -> bool:
        deadline = job["spec"].get("activeDeadlineSeconds")
        if deadline is None or not status.get("startTime") or job["spec"].get("suspend"):
            return False
        return time.time() >= parse_rfc3339(status["startTime"]) + int(deadline)

    def _schedule_deadline(self, job: Obj, status: Obj) -> None:
        deadline = job["spec"].get("activeDeadlineSeconds")
        if deadline is not None and status.get("startTime"):
            remaining = parse_rfc3339(status["startTime"]) + int(deadline) - time.time()
            self._queue.add((meta(job)["namespace"], meta(job)["name"]), max(remaining, 0) + 0.05)

    def _manage(
        self, job: Obj, status: Obj, active: list[Obj], completed: set[int] | None, terminating: int
    ) -> list[Obj]:
        """manageJob: creates missing Pods (or deletes surplus ones) to reach the wanted number of
        active Pods; returns the active Pods. With onlyReplaceFailedPods, terminating Pods keep
        their place until they have failed."""
        spec = job["spec"]
        parallelism = int(spec.get("parallelism", 1))
        held = terminating if only_replace_failed(job) else 0
        if self._in_backoff(job, status):
            return active
        if completed is not None:
            busy = {pod_index(p) for p in active}
            todo = [i for i in range(int(spec.get("completions") or 0)) if i not in completed and i not in busy]
            for index in todo[: max(parallelism - held - len(active), 0)]:
                active.append(self._create_pod(job, index))
            return [p for p in active if p]
        completions = spec.get("completions")
        succeeded = int(status.get("succeeded") or 0)
        if completions is None:
            want = parallelism if succeeded == 0 else 0
        else:
            want = max(min(parallelism, int(completions) - succeeded), 0)
        for pod in active[want:]:
            self._delete_pod(pod)
        active = active[:want]
        while len(active) < want - held:
            pod = self._create_pod(job, None)
            if not pod:
                break
            active.append(pod)
        return active

    def _in_backoff(self, job: Obj, status: Obj) -> bool:
        failed = int(status.get("failed") or 0)
        last = self._last_failure.get(meta(job)["uid"])
        if not self.backoff_seconds or not failed or last is None:
            return False
        remaining = last + min(self.backoff_seconds * 2 ** (failed - 1), 360.0) - time.monotonic()
        if remaining > 0:
            self._queue.add((meta(job)["namespace"], meta(job)["name"]), remaining)
            return True
        return False

    def _create_pod(self, job: Obj, index: int | None) -> Obj:
        """Creates one Pod from the template (the Job controller's podControl.CreatePods)."""
        body = self.pod_for(job, index, self.node_name)
        try:
            pod = self._json(self.core.create_namespaced_pod, meta(job)["namespace"], body)
        except ApiException as exc:
            self._event(job, "Warning", "FailedCreate", f"Error creating: {exc.body or exc.reason}", "job-controller")
            if exc.status in (403, 422):
                self._queue.add((meta(job)["namespace"], meta(job)["name"]), 2.0)
                return {}
            raise
        self._event(job, "Normal", "SuccessfulCreate", f"Created pod: {meta(pod)['name']}", "job-controller")
        return pod

    @staticmethod
    def pod_for(job: Obj, index: int | None, node_name: str) -> Obj:
        """The Pod the Job controller makes from the Job's template, already bound to the node."""
        template = copy.deepcopy(job["spec"]["template"])
        tmeta = template.get("metadata") or {}
        name, uid = meta(job)["name"], meta(job)["uid"]
        labels = {**(tmeta.get("labels") or {}), LABEL_JOB_NAME: name, "job-name": name,
                  LABEL_CONTROLLER_UID: uid, "controller-uid": uid}
        annotations = dict(tmeta.get("annotations") or {})
        spec = template["spec"]
        prefix = f"{name}-"
        if index is not None:
            labels[INDEX_KEY] = annotations[INDEX_KEY] = str(index)
            prefix = f"{name}-{index}-"
            ref = {"name": "JOB_COMPLETION_INDEX",
                   "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}}
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                c["env"] = [e for e in c.get("env") or [] if e.get("name") != "JOB_COMPLETION_INDEX"] + [ref]
        spec["nodeName"] = node_name
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": prefix[:58], "namespace": meta(job)["namespace"], "labels": labels,
                "annotations": annotations, "finalizers": [JOB_TRACKING_FINALIZER],
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": spec,
        }


def write_file(path: Path, data: bytes, mode: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        with contextlib.suppress(OSError):
            path.chmod(mode | 0o200)  # keep it writable by us so a re-run can replace it

