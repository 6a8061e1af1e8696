"""Pure rendering of the serving objects: KServe InferenceServices (both deployment modes) and the
InferenceGraph of an A/B test, as plain dicts.

The desired InferenceService is a function of three things only: the stable adapter, the candidate
(if a rollout is on) and the candidate's weight. So a reconcile that runs twice, or after a crash,
renders the same object, and the rollout's state lives in the RolloutPolicy's status alone.

Knative mode: the predictor is the newest adapter; `canaryTrafficPercent` splits traffic between its
revision and the previously rolled-out one. Promotion removes the field; a rollback sets it to 0 and
leaves the failed candidate's revision parked with no traffic (restoring the old spec would make a
new revision, and until it is ready Knative would route to the latest ready one: the failed
candidate).
Standard mode (KServe >= 0.20): the predictor is the stable adapter and `spec.canary[0]` the
candidate with its `trafficPercent`; promotion makes the candidate the predictor.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from tunerag_operator.api.common import API_VERSION, GROUP, SecretKeyRef
from tunerag_operator.api.rolloutpolicy import Retrieval, Target
from tunerag_operator.references import claims_of
from tunerag_operator.render.workload import (
    CONTAINER_SECURITY,
    MANAGED_BY,
    POD_SECURITY,
    PVC_ROOT,
    container_resources,
)

KSERVE_API = "serving.kserve.io/v1beta1"
GRAPH_API = "serving.kserve.io/v1alpha1"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
ADAPTER_ANNOTATION = f"{GROUP}/adapter-version"
SERVE_CONTAINER = "kserve-container"
HTTP_PORT = 8080


@dataclass(frozen=True)
class ServedAdapter:
    """An AdapterVersion as a predictor loads it: its LoRA adapter (`peft-lora`, on the base model)
    or its merged, quantized model (`merged-nf4`, `merged-int8`, `merged-fp16`: loaded alone)."""

    name: str
    uri: str
    sha256: str
    format: str = "peft-lora"


@dataclass(frozen=True)
class RetrievalBinding:
    schema: str
    table: str
    top_k: int
    prompt_template: str
    ef_search: int
    hybrid: bool
    probes: int | None = None  # IVFFlat's lists searched per query; None: the server's default (10)

    @classmethod
    def of(cls, store: dict[str, Any], retrieval: Retrieval) -> RetrievalBinding:
        """The binding of a policy's retrieval to its VectorIndex's `spec.store`. The index's
        query settings travel with it: efSearch, and IVFFlat's probes where they change the
        answer (an HNSW index, or the default 10, renders the config as before, so an upgraded
        operator restarts no predictor for it)."""
        index = store.get("index") or {}
        probes = int(index.get("probes", 10))
        return cls(schema=store.get("schema", "public"), table=store["table"], top_k=retrieval.top_k,
                   prompt_template=retrieval.prompt_template, ef_search=int(index.get("efSearch", 100)),
                   hybrid=retrieval.hybrid, probes=probes if index.get("type") == "ivfflat" and probes != 10 else None)


@dataclass(frozen=True)
class FeedbackBinding:
    schema: str
    table: str


@dataclass(frozen=True)
class Serving:
    """Everything about a policy's predictors that does not depend on the adapter."""

    namespace: str
    policy: str
    policy_uid: str
    service: str
    target: Target
    image: str
    retrieval: RetrievalBinding | None = None
    feedback: FeedbackBinding | None = None
    database: SecretKeyRef | None = None  # the libpq URI for retrieval and the feedback log


def serve_config(s: Serving, service: str, adapters: list[ServedAdapter]) -> dict[str, Any]:
    """The `TUNERAG_SERVE_CONFIG` document of `tunerag_workloads.serve` (docs/serving.md). A service
    other than the policy's own (an A/B test's `-b`) also answers to the policy's service name:
    clients keep sending `model: <service>` through the A/B graph."""
    r, f = s.retrieval, s.feedback
    return {
        "namespace": s.namespace,
        "service": service,
        "aliases": [s.service] if service != s.service else [],
        "baseModel": s.target.base_model,
        "loadIn4bit": s.target.load_in_4bit,
        # `format` only for a merged model: an adapter's entry stays as it was, so an upgraded
        # operator renders the same predictors (no new revision) for the policies it already serves.
        "adapters": [{"name": a.name, "uri": a.uri, "sha256": a.sha256}
                     | ({"format": a.format} if a.format != "peft-lora" else {}) for a in adapters],
        "retrieval": None if r is None else {
            "schema": r.schema, "table": r.table, "topK": r.top_k, "promptTemplate": r.prompt_template,
            "efSearch": r.ef_search, "hybrid": r.hybrid,
        } | ({"probes": r.probes} if r.probes is not None else {}),
        "feedback": None if f is None else {"schema": f.schema, "table": f.table},
        "generation": {"maxNewTokens": s.target.max_new_tokens},
    }


def _tunerag_predictor(s: Serving, service: str, adapter: ServedAdapter | None) -> dict[str, Any]:
    adapters = [adapter] if adapter else []
    env: list[dict[str, Any]] = [
        {"name": "TUNERAG_SERVE_CONFIG", "value": json.dumps(serve_config(s, service, adapters), sort_keys=True)},
        {"name": "TUNERAG_PVC_ROOT", "value": PVC_ROOT},
        {"name": "KSERVE_OPENAI_ROUTE_PREFIX", "value": ""},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/huggingface"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]
    if s.database is not None:
        env.append({"name": "TUNERAG_DATABASE_URL",
                    "valueFrom": {"secretKeyRef": {"name": s.database.name, "key": s.database.key}}})
    claims = claims_of(s.target.base_model, *(a.uri for a in adapters))
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    for i, claim in enumerate(sorted(set(claims))):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    container: dict[str, Any] = {
        "name": SERVE_CONTAINER,
        "image": s.target.resources.image or s.image,
        "command": ["python", "-m", "tunerag_workloads.serve"],
        "env": env,
        "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT}, "periodSeconds": 5},
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    if resources := container_resources(s.target.resources):
        container["resources"] = resources
    out: dict[str, Any] = {"containers": [container], "volumes": volumes, "securityContext": copy.deepcopy(POD_SECURITY)}
    return out


def _vllm_predictor(s: Serving, adapter: ServedAdapter | None) -> dict[str, Any]:
    """KServe's Hugging Face runtime with vLLM serving the adapter as a LoRA module. The storage
    initializer fetches the base model to /mnt/models; the adapter is read from its own URI. (A
    merged, quantized model is never rendered here: admission refuses spec.target.artifact
    quantized with this runtime, docs/serving.md.)"""
    args = ["--enable-lora", "--max-lora-rank=64"]
    if adapter is not None:
        args.append(f"--lora-modules={adapter.name}={adapter.uri}")
    model: dict[str, Any] = {
        "name": SERVE_CONTAINER,
        "modelFormat": {"name": "huggingface"},
        "storageUri": s.target.base_model,
        "args": args,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    if resources := container_resources(s.target.resources):
        model["resources"] = resources
    if s.target.resources.image:
        model["image"] = s.target.resources.image
    return {"model": model}


def predictor(s: Serving, service: str, adapter: ServedAdapter | None) -> dict[str, Any]:
    """The predictor component serving `adapter` (None: the base model alone)."""
    spec = _vllm_predictor(s, adapter) if s.target.runtime == "vllm" else _tunerag_predictor(s, service, adapter)
    r = s.target.resources
    spec["minReplicas"] = 1
    spec["automountServiceAccountToken"] = False
    spec["annotations"] = {ADAPTER_ANNOTATION: adapter.name if adapter else "base"}
    spec["labels"] = {**MANAGED_BY, f"{GROUP}/rollout-policy": s.policy}
    if r.node_selector:
        spec["nodeSelector"] = dict(r.node_selector)
    if r.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in r.tolerations]
    if r.priority_class_name:
        spec["priorityClassName"] = r.priority_class_name
    return spec


@dataclass(frozen=True)
class Desired:
    """What the InferenceService should serve: `stable` alone, or `candidate` at `weight` percent
    beside it. `parked` (Knative only) is a rolled-back candidate whose revision stays at 0%."""

    stable: ServedAdapter | None
    candidate: ServedAdapter | None = None
    weight: int = 0
    parked: ServedAdapter | None = None


def service_spec(s: Serving, mode: str, d: Desired, service: str | None = None) -> dict[str, Any]:
    """The `spec` of the InferenceService for `d` in deployment `mode`."""
    name = service or s.service
    if mode == "Knative":
        if d.candidate is not None:
            return {"predictor": {**predictor(s, name, d.candidate), "canaryTrafficPercent": d.weight}}
        if d.parked is not None:
            return {"predictor": {**predictor(s, name, d.parked), "canaryTrafficPercent": 0}}
        return {"predictor": predictor(s, name, d.stable)}
    spec: dict[str, Any] = {"predictor": predictor(s, name, d.stable if d.stable is not None else d.candidate)}
    if d.candidate is not None and d.stable is not None:
        spec["canary"] = [{"predictor": predictor(s, name, d.candidate), "trafficPercent": d.weight}]
    return spec


def owner_reference(s: Serving) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "RolloutPolicy", "name": s.policy, "uid": s.policy_uid,
            "controller": True, "blockOwnerDeletion": True}


def inference_service(s: Serving, mode: str, d: Desired, name: str | None = None) -> dict[str, Any]:
    """A whole InferenceService owned by the policy (created when the policy does not adopt one)."""
    name = name or s.service
    return {
        "apiVersion": KSERVE_API,
        "kind": "InferenceService",
        "metadata": {
            "name": name, "namespace": s.namespace,
            "labels": {**MANAGED_BY, f"{GROUP}/rollout-policy": s.policy},
            "annotations": {DEPLOYMENT_MODE: mode},
            "ownerReferences": [owner_reference(s)],
        },
        "spec": service_spec(s, mode, d, name),
    }


def spec_patch(current: dict[str, Any], wanted: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON Patch operations that make `current`'s predictor and canary equal `wanted`'s; empty
    when they already are. The policy owns those two fields of an adopted service, nothing else."""
    ops: list[dict[str, Any]] = []
    cur = current.get("spec") or {}
    if cur.get("predictor") != wanted.get("predictor"):
        ops.append({"op": "add", "path": "/spec/predictor", "value": wanted["predictor"]})
    if "canary" in wanted:
        if cur.get("canary") != wanted["canary"]:
            ops.append({"op": "add", "path": "/spec/canary", "value": wanted["canary"]})
    elif "canary" in cur:
        ops.append({"op": "remove", "path": "/spec/canary"})
    return ops


def ab_graph(s: Serving, stable_service: str, candidate_service: str, split: int) -> dict[str, Any]:
    """The InferenceGraph of an A/B test: a Splitter sending `split`% to the candidate's service."""
    return {
        "apiVersion": GRAPH_API,
        "kind": "InferenceGraph",
        "metadata": {
            "name": f"{s.service}-ab", "namespace": s.namespace,
            "labels": {**MANAGED_BY, f"{GROUP}/rollout-policy": s.policy},
            "ownerReferences": [owner_reference(s)],
        },
        "spec": {"nodes": {"root": {"routerType": "Splitter", "steps": [
            {"name": "stable", "serviceName": stable_service, "weight": 100 - split},
            {"name": "candidate", "serviceName": candidate_service, "weight": split},
        ]}}},
    }
