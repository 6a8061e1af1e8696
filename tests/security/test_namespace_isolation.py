"""Namespace isolation: a resource refers only to Secrets, ConfigMaps, PersistentVolumeClaims and
VectorIndexes in its own namespace. The API has no field that could name another namespace, and
a same-named object in another namespace is never used: the condition says it is missing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from security.conftest import condition, create, get, jobs, pvc, secret, vectorindex_spec, wait_condition
from substrate import kube
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import DNS_SUBDOMAIN

SCHEMAS = {d["spec"]["names"]["kind"]: d["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
           for d in kube.crd_documents(include_kserve=False)}
CROSS_NAMESPACE = {"namespace", "namespaces", "namespaceSelector", "clusterScope", "crossNamespace"}


def _properties(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", sub
        yield from _properties(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _properties(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _properties(schema["additionalProperties"], f"{path}{{}}")


# Every field that names another object, by kind: a reference added later must be added here
# (and reviewed) for the test to pass.
REFERENCES = {
    "VectorIndex": {"spec.source.configMap", "spec.source.credentialsSecret", "spec.store.connectionSecret"},
    "FineTuneJob": {"spec.output.credentialsSecret"},
    "AdapterVersion": set(),
    "RolloutPolicy": {"spec.retrieval.vectorIndex", "spec.feedback.connectionSecret", "spec.target.inferenceService"},
    "FineTuneSchedule": {"spec.feedback.rolloutPolicy", "spec.template.output.credentialsSecret"},
}


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_the_api_has_no_cross_namespace_reference(kind: str) -> None:
    spec = SCHEMAS[kind]["properties"]["spec"]
    paths = dict(_properties(spec, "spec"))
    assert not [p for p in paths if p.rsplit(".", 1)[-1] in CROSS_NAMESPACE], "a field could name another namespace"
    # Every reference is a name (an object of name and key, or a string), in the same namespace.
    found = set()
    for path, sub in paths.items():
        props = set(sub.get("properties") or {})
        if props and props <= {"name", "key"} and "name" in props:
            found.add(path)
            assert "same namespace" in sub["properties"]["name"]["description"], path
            assert sub["properties"]["name"]["pattern"] == DNS_SUBDOMAIN, path  # no "ns/name"
        elif sub.get("type") == "string" and "same namespace" in sub.get("description", "") \
                and path.rsplit(".", 1)[0] not in found:
            found.add(path)
    assert found == REFERENCES[kind]


@pytest.fixture
def other_namespace(api: client.ApiClient, namespace: str) -> Iterator[str]:
    """A second namespace holding every object the first one's resources name."""
    name = f"{namespace[:50]}-o{uuid.uuid4().hex[:4]}"
    kube.create_namespace(api, name)
    secret(api, name, "db", {"uri": "postgresql://u:p@127.0.0.1:9/x"})
    secret(api, name, "store", {"AWS_SECRET_ACCESS_KEY": "x"})
    client.CoreV1Api(api).create_namespaced_config_map(name, {"metadata": {"name": "docs"}, "data": {"a.md": "# A"}})
    pvc(api, name, "docs")
    pvc(api, name, "models")
    idle = vectorindex_spec()
    idle["store"]["connectionSecret"]["name"] = "absent"  # exists, but starts no Job
    create(api, name, "VectorIndex", "handbook", idle)
    yield name
    kube.delete_namespace(api, name)


def test_same_named_objects_in_another_namespace_are_not_used(
    operator: OperatorProcess, api: client.ApiClient, namespace: str, other_namespace: str
) -> None:
    ns = namespace
    create(api, ns, "VectorIndex", "by-secret", vectorindex_spec(uri="file:///docs"))
    cm_spec = vectorindex_spec()
    cm_spec["source"] = {"configMap": {"name": "docs"}}
    create(api, ns, "VectorIndex", "by-configmap", cm_spec)
    create(api, ns, "VectorIndex", "by-claim", vectorindex_spec(uri="pvc://docs/handbook"))
    create(api, ns, "FineTuneJob", "by-store", {
        "baseModel": {"uri": "pvc://models/base"}, "adapter": {"family": "demo"},
        "dataset": {"train": {"uri": "file:///data/train.jsonl"}},
        "output": {"uri": "file:///artifacts", "credentialsSecret": "store"},
    })
    create(api, ns, "RolloutPolicy", "by-index", {
        "target": {"inferenceService": "svc", "baseModel": "file:///models/base"},
        "adapterSelector": {"family": "demo"},
        "retrieval": {"vectorIndex": {"name": "handbook"}},
    })

    expected = {
        ("VectorIndex", "by-secret"): ("SecretNotFound", [f"Secret {ns}/db"]),
        ("VectorIndex", "by-configmap"): ("SecretNotFound", [f"Secret {ns}/db", f"ConfigMap {ns}/docs"]),
        ("VectorIndex", "by-claim"): ("SecretNotFound", [f"Secret {ns}/db", f"PersistentVolumeClaim {ns}/docs"]),
        ("FineTuneJob", "by-store"): ("PersistentVolumeClaimNotFound", [f"PersistentVolumeClaim {ns}/models", f"Secret {ns}/store"]),
        ("RolloutPolicy", "by-index"): ("VectorIndexNotFound", [f"VectorIndex {ns}/handbook"]),
    }
    for (kind, name), (reason, fragments) in expected.items():
        cond = wait_condition(api, ns, kind, name, "Accepted", "False", timeout=30)
        assert cond["reason"] == reason, (name, cond)
        for fragment in fragments:
            assert fragment in cond["message"], (name, cond["message"])
        assert other_namespace not in cond["message"]
    assert not jobs(api, ns)

    # The same references resolve once the objects exist here: only the own namespace counts.
    secret(api, ns, "db", {"uri": "postgresql://u:p@127.0.0.1:9/x"})
    wait_condition(api, ns, "VectorIndex", "by-secret", "Accepted", "True", timeout=30)
    assert condition(get(api, ns, "VectorIndex", "by-configmap"), "Accepted")["status"] == "False"  # type: ignore[index]
