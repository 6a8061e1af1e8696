"""The operator gives every resource a status with conditions, and says what to fix when a
reference is missing; it heals once the user fixes it."""

from __future__ import annotations

import base64
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from substrate.controlplane import ControlPlane
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import ALL_KINDS

ROOT = Path(__file__).resolve().parents[2]
PLURALS = [k.plural for k in ALL_KINDS]


def _get(api: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, plural, name
    )


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def _events(api: client.ApiClient, namespace: str, name: str) -> list[Any]:
    items = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [e for e in items if e.involved_object.name == name]


def test_examples_get_status_with_conditions(
    control_plane: ControlPlane, operator: OperatorProcess, api: client.ApiClient, namespace: str
) -> None:
    subprocess.run(
        ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "-n", namespace, "apply", "-f", str(ROOT / "examples")],
        check=True, capture_output=True,
    )
    expected = {
        "vectorindexes": ("handbook", "Indexing"),
        "finetunejobs": ("ticket-router-1", "Pending"),
        "adapterversions": ("ticket-router-v1", "Pending"),
        "rolloutpolicies": ("ticket-router", "Idle"),
        "finetuneschedules": ("ticket-router", "Idle"),
    }
    for plural, (name, phase) in expected.items():
        obj = wait_for(
            lambda p=plural, n=name: (o := _get(api, namespace, p, n)).get("status", {}).get("observedGeneration") and o,
            30, f"{plural}/{name} status",
        )
        status = obj["status"]
        assert status["phase"] == phase
        assert status["observedGeneration"] == obj["metadata"]["generation"]
        accepted = _condition(obj, "Accepted")
        assert accepted and accepted["status"] == "True", f"{plural}/{name}: {status}"
        assert accepted["lastTransitionTime"]
        assert _condition(obj, "Ready") is not None
    # The two pipelines got their Job (one per generation), owned by the resource.
    batch = client.BatchV1Api(api)
    for plural, (name, _) in expected.items():
        if plural in ("vectorindexes", "finetunejobs"):
            job = batch.read_namespaced_job(f"{name}-g1", namespace)
            assert job.metadata.owner_references[0].name == name
            assert _get(api, namespace, plural, name)["status"]["jobName"] == f"{name}-g1"


def test_missing_secret_is_reported_then_heals(operator: OperatorProcess, api: client.ApiClient, namespace: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": "docs"},
        "spec": {
            "source": {"uri": "file:///docs"},
            "store": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "docs"},
        },
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", body)

    def reported() -> dict[str, Any] | None:
        cond = _condition(_get(api, namespace, "vectorindexes", "docs"), "Accepted")
        return cond if cond and cond["status"] == "False" else None

    cond = wait_for(reported, 30, "Accepted=False")
    assert cond["reason"] == "SecretNotFound"
    assert f"Secret {namespace}/db" in cond["message"] and "create it" in cond["message"]
    event = wait_for(lambda: [e for e in _events(api, namespace, "docs") if e.reason == "SecretNotFound"], 15, "event")[0]
    assert event.type == "Warning"

    # A Secret without the key: a different, precise reason.
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "db"}, "data": {"other": base64.b64encode(b"x").decode()}})
    wait_for(lambda: (c := reported()) and c["reason"] == "SecretKeyNotFound", 60, "SecretKeyNotFound")

    core.patch_namespaced_secret("db", namespace, {"data": {"uri": base64.b64encode(b"postgresql://u:p@h/d").decode()}})
    healed = wait_for(
        lambda: (c := _condition(_get(api, namespace, "vectorindexes", "docs"), "Accepted")) and c["status"] == "True" and c,
        60, "Accepted=True after the Secret was fixed",
    )
    assert healed["reason"] == "Accepted"
    status = _get(api, namespace, "vectorindexes", "docs")["status"]
    assert "postgresql://" not in str(status), "the connection string must never reach status"


def test_missing_vectorindex_and_pvc_are_named(operator: OperatorProcess, api: client.ApiClient, namespace: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "RolloutPolicy", "metadata": {"name": "svc"},
        "spec": {
            "target": {"inferenceService": "svc", "baseModel": "pvc://models/base"},
            "adapterSelector": {"family": "demo"},
            "retrieval": {"vectorIndex": {"name": "nowhere"}},
        },
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "rolloutpolicies", body)
    cond = wait_for(
        lambda: (c := _condition(_get(api, namespace, "rolloutpolicies", "svc"), "Accepted")) and c["status"] == "False" and c,
        30, "Accepted=False",
    )
    assert cond["reason"] == "PersistentVolumeClaimNotFound"
    assert f"PersistentVolumeClaim {namespace}/models" in cond["message"]
    assert f"VectorIndex {namespace}/nowhere" in cond["message"]


def test_metrics_endpoint_counts_reconciles(operator: OperatorProcess, api: client.ApiClient, namespace: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": "m"},
        "spec": {
            "baseModel": {"uri": "file:///m"}, "adapter": {"family": "f"},
            "dataset": {"train": {"uri": "file:///t.jsonl"}}, "output": {"uri": "file:///o"},
        },
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    wait_for(lambda: _get(api, namespace, "finetunejobs", "m").get("status", {}).get("phase"), 30, "status")
    text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    assert 'tunerag_reconcile_total{kind="FineTuneJob",result="ok"}' in text
    assert "tunerag_reconcile_duration_seconds_bucket" in text
