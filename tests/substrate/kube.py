"""Small helpers over the real Kubernetes API for tests and the quick start: CRDs, namespaces,
waiting. Plain dicts in and out."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[2]
# KServe's real CRDs, vendored unchanged with their licence (see the README beside them), so a
# clone tests against them wherever it lives.
KSERVE_CRDS = ROOT / "tests" / "substrate" / "kserve-crds"
T = TypeVar("T")


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def crd_documents(include_kserve: bool = True) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        docs += load_yaml_docs(path)
    if include_kserve:
        kserve = sorted(KSERVE_CRDS.glob("serving.kserve.io_*.yaml"))
        if not kserve:
            raise FileNotFoundError(f"KServe's CRDs are missing from {KSERVE_CRDS}")
        for path in kserve:
            docs += load_yaml_docs(path)
    return docs


def install_crds(api: client.ApiClient, docs: Iterable[dict[str, Any]], timeout: float = 60) -> None:
    """Creates or replaces each CRD (no client-side last-applied annotation, so KServe's 2 MB
    InferenceService CRD fits) and waits until all are Established."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for doc in docs:
        name = doc["metadata"]["name"]
        names.append(name)
        try:
            ext.create_custom_resource_definition(body=doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(name)
            doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion": current.metadata.resource_version}}
            ext.replace_custom_resource_definition(name, body=doc)

    def established() -> bool:
        for name in names:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            if not any(c.type == "Established" and c.status == "True" for c in conds):
                return False
        return True

    wait_for(established, timeout, "CRDs to be Established")


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Polls `predicate` until it returns something truthy; raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except ApiException as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def create_namespace(api: client.ApiClient, name: str, labels: dict[str, str] | None = None) -> None:
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": labels or {}}})


def generate_namespace(api: client.ApiClient, prefix: str) -> str:
    """Creates a namespace named by the API server from `prefix` and returns its name. The server
    picks a suffix that is free, Terminating namespaces included (it retries a taken name), so two
    tests never meet in one namespace however many share a prefix."""
    created = client.CoreV1Api(api).create_namespace({"metadata": {"generateName": prefix}})
    return str(created.metadata.name)


def delete_namespace(api: client.ApiClient, name: str) -> None:
    """Starts the namespace's deletion. No namespace controller runs here, so the Namespace stays
    Terminating and its objects stay in etcd until the control plane stops; tests use a fresh
    namespace each, so nothing leaks from one test into another."""
    try:
        client.CoreV1Api(api).delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
