"""Pure rendering of a workload run: the ConfigMap with the resolved spec and the batch/v1 Job.

Names are deterministic per (resource, generation): creating them twice is harmless (409), so a
reconcile that runs again, or after a crash, never starts a second Job for the same generation.
Pods run with no Kubernetes credentials and meet the `restricted` PodSecurity profile.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tunerag_operator.api.common import API_VERSION, GROUP, PodResources

SPEC_DIR = "/etc/tunerag"
SOURCE_DIR = "/etc/tunerag-source"
PVC_ROOT = "/mnt/pvc"
CONTAINER = "workload"
MANAGED_BY = {"app.kubernetes.io/managed-by": "tunerag"}
TERMINATION_LOG = "/dev/termination-log"
EXIT_USER_ERROR = 2  # the workload contract: a failure the user must fix; retrying cannot help
# A Job's name is also the value of its pods' job-name label (63), and an Indexed Job's pods are
# named `<job>-<index>` (index < 64), a DNS label: room for "-63".
MAX_NAME = 60
# An Indexed Job's pods carry their index in this annotation and label (and $JOB_COMPLETION_INDEX).
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# The `restricted` PodSecurity profile, for every pod tunerag renders.
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class Owner:
    kind: str
    name: str
    namespace: str
    uid: str
    generation: int


@dataclass(frozen=True)
class WorkloadRun:
    owner: Owner
    component: str  # finetune | index
    module: str  # python module run with -m
    spec: dict[str, Any]
    image: str
    resources: PodResources
    claims: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    env_from_secret: str | None = None
    source_config_map: str | None = None
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    suffix: str = ""  # names a run that belongs to no generation ("drop1"): `<name>-<suffix>`
    # An Indexed Job of this many pods, run at once, each with its index in $JOB_COMPLETION_INDEX.
    completions: int | None = None
    request: dict[str, Any] = field(default_factory=dict)  # more fields of the request (beside the spec)


def run_name(owner: Owner, suffix: str = "") -> str:
    """`<name>-g<generation>` for a generation's run; `<name>-<suffix>` for other runs (the API
    server bumps a custom resource's generation when its deletion starts, so a cleanup run must
    not be named by generation).

    Names are at most 52 characters, but the counters only grow (`-g100-r10000` after many
    refreshes): a name that would pass MAX_NAME characters is cut and ends with a hash of the whole."""
    name = f"{owner.name}-{suffix}" if suffix else f"{owner.name}-g{owner.generation}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME - 9].rstrip('-.')}-{digest}"


def finalize_suffix(owner_name: str, shard_job: str) -> str:
    return f"{shard_job.removeprefix(owner_name + '-')}-finalize"


def finalize_name(owner: Owner, shard_job: str) -> str:
    """The finalize Job of a sharded VectorIndex run, `<shard Job>-finalize`: one name per run, so
    it is created at most once (and `kubectl tunerag logs` finds it)."""
    return run_name(owner, finalize_suffix(owner.name, shard_job))


def owner_labels(owner: Owner) -> dict[str, str]:
    return {
        **MANAGED_BY,
        f"{GROUP}/owner-kind": owner.kind,
        f"{GROUP}/owner-name": owner.name,
        f"{GROUP}/generation": str(owner.generation),
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
        "controller": True, "blockOwnerDeletion": True,
    }


def config_map(run: WorkloadRun) -> dict[str, Any]:
    o = run.owner
    request = {**run.request, "kind": o.kind, "namespace": o.namespace, "name": o.name, "generation": o.generation, "spec": run.spec}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": run_name(o, run.suffix), "namespace": o.namespace,
            "labels": {**owner_labels(o), "app.kubernetes.io/component": run.component},
            "ownerReferences": [owner_reference(o)],
        },
        "data": {"spec.json": json.dumps(request, indent=2, sort_keys=True)},
    }


def container_resources(r: PodResources) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if r.cpu:
        requests["cpu"] = limits["cpu"] = r.cpu
    if r.memory:
        requests["memory"] = limits["memory"] = r.memory
    if r.gpus:
        limits[r.gpu_resource_name] = str(r.gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def job(run: WorkloadRun) -> dict[str, Any]:
    o, r = run.owner, run.resources
    name = run_name(o, run.suffix)
    labels = {**owner_labels(o), "app.kubernetes.io/component": run.component, **run.labels}
    mounts = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": name}},
        {"name": "tmp", "emptyDir": {}},
    ]
    for i, claim in enumerate(sorted(set(run.claims))):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{PVC_ROOT}/{claim}"})
    if run.source_config_map:
        volumes.append({"name": "source", "configMap": {"name": run.source_config_map}})
        mounts.append({"name": "source", "mountPath": SOURCE_DIR, "readOnly": True})
    env = [
        {"name": "TUNERAG_SPEC", "value": f"{SPEC_DIR}/spec.json"},
        {"name": "TUNERAG_RUN_ID", "value": f"{o.namespace}-{name}"},
        {"name": "TUNERAG_PVC_ROOT", "value": PVC_ROOT},
        {"name": "TUNERAG_RESULT_PATH", "value": TERMINATION_LOG},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/huggingface"},
        *([{"name": "TUNERAG_SOURCE_DIR", "value": SOURCE_DIR}] if run.source_config_map else []),
        *run.env,
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": run.image,
        "command": ["python", "-m", run.module, f"{SPEC_DIR}/spec.json"],
        "env": env,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    if run.env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": run.env_from_secret}}]
    if resources := container_resources(r):
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY),
        "containers": [container],
        "volumes": volumes,
    }
    if r.node_selector:
        pod_spec["nodeSelector"] = dict(r.node_selector)
    if r.tolerations:
        pod_spec["tolerations"] = [t.model_dump(exclude_none=True) for t in r.tolerations]
    if r.priority_class_name:
        pod_spec["priorityClassName"] = r.priority_class_name
    spec: dict[str, Any] = {
        "backoffLimit": run.backoff_limit,
        # A user error (exit code 2) fails the Job at once; preemption and crashes are retried.
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_USER_ERROR]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]},
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if run.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = run.active_deadline_seconds
    if run.completions is not None:
        spec.update({"completionMode": "Indexed", "completions": run.completions, "parallelism": run.completions})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": o.namespace, "labels": labels, "ownerReferences": [owner_reference(o)]},
        "spec": spec,
    }
