"""The adapter registry: race-free version numbers, idempotent registration, and verification of
adapters registered by hand."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from substrate.controlplane import ControlPlane
from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator import registry
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_workloads.finetune.publish import build_manifest

SPEC = {"baseModel": {"uri": "file:///models/base"},
        "artifact": {"uri": "file:///artifacts/x", "sha256": "c" * 64, "format": "peft-lora"}}


def test_concurrent_registrations_get_distinct_versions(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))  # the operator's API layer, in this process

    def register(i: int) -> dict[str, Any]:
        return registry.register(namespace, "fam", f"job-{i}", f"uid-{i}", SPEC)

    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(register, range(8)))
    assert sorted(a["spec"]["version"] for a in created) == list(range(1, 9))
    # Registering the same FineTuneJob again (a retry, or after a crash) finds its version.
    again = register(3)
    assert again["metadata"]["name"] == created[3]["metadata"]["name"]
    assert registry.next_version(namespace, "fam") == 9



def test_numbers_follow_the_family_and_skip_names_taken(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    assert registry.next_version(namespace, "fam") == 1  # an empty family starts at 1
    assert registry.register(namespace, "fam", "job-a", "uid-a", SPEC)["metadata"]["name"] == "fam-v1"
    # fam-v2 registered by hand (no family label): the operator's next number collides, takes v3.
    _create(api, namespace, "fam-v2", "file:///artifacts/y", "e" * 64, family="fam", version=2)
    assert registry.next_version(namespace, "fam") == 2
    third = registry.register(namespace, "fam", "job-b", "uid-b", SPEC)
    assert (third["metadata"]["name"], third["spec"]["version"]) == ("fam-v3", 3)
    assert third["metadata"]["labels"] == {registry.FAMILY: "fam", registry.JOB_NAME: "job-b", registry.JOB_UID: "uid-b"}
    assert third["spec"]["family"] == "fam" and third["spec"]["artifact"] == SPEC["artifact"]
    # Another family counts from 1; the first one's registrations are found again by uid.
    assert registry.register(namespace, "other", "job-c", "uid-c", SPEC)["spec"]["version"] == 1
    assert registry.find_for_job(namespace, "uid-b")["metadata"]["name"] == "fam-v3"  # type: ignore[index]
    assert registry.find_for_job(namespace, "uid-none") is None
    assert registry.next_version(namespace, "fam") == 4


def test_a_refused_registration_is_not_retried_and_collisions_are_bounded(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    bad = {**SPEC, "artifact": {**SPEC["artifact"], "sha256": "not-a-digest"}}
    with pytest.raises(ApiException) as refused:
        registry.register(namespace, "fam", "job-a", "uid-a", bad)
    assert refused.value.status == 422
    with pytest.raises(ApiException) as missing:  # any refusal but a name taken is raised at once
        registry.register(f"{namespace}-gone", "fam", "job-a", "uid-a", SPEC)
    assert missing.value.status == 404
    for n in (1, 2):
        _create(api, namespace, f"busy-v{n}", "file:///artifacts/y", "e" * 64, family="busy", version=n)
    monkeypatch.setattr(registry, "MAX_ATTEMPTS", 2)
    with pytest.raises(RuntimeError, match="could not allocate a version of busy after 2 attempts"):
        registry.register(namespace, "busy", "job-b", "uid-b", SPEC)
    monkeypatch.setattr(registry, "MAX_ATTEMPTS", 3)
    assert registry.register(namespace, "busy", "job-b", "uid-b", SPEC)["metadata"]["name"] == "busy-v3"

def _adapter(folder: Path) -> str:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(2048))
    return str(build_manifest(folder)["sha256"])


def _merged(folder: Path) -> str:
    """A merged nf4 model's folder as the training workload publishes one (its bytes do not matter here)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"quantization_config": {"load_in_4bit": true, "bnb_4bit_quant_type": "nf4"}}')
    (folder / "model.safetensors").write_bytes(os.urandom(1000))
    return str(build_manifest(folder)["sha256"])


def _create(api: client.ApiClient, namespace: str, name: str, uri: str, sha: str, family: str = "external",
            version: int | None = None, quantized: dict[str, Any] | None = None) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "AdapterVersion", "metadata": {"name": name},
        "spec": {"family": family, "version": version or int(name.rsplit("v", 1)[1]), "baseModel": {"uri": "file:///models/base"},
                 "artifact": {"uri": uri, "sha256": sha}, **({"quantized": quantized} if quantized else {})},
    })


def _settled(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions", name)
        return obj if (obj.get("status") or {}).get("phase") in ("Validated", "Failed") else None

    return wait_for(done, 120, f"AdapterVersion {name} to be verified", interval=0.5)  # type: ignore[no-any-return]


def test_hand_registered_adapters_are_verified(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str
) -> None:
    for claim in ("artifacts", "models"):
        client.CoreV1Api(api).create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        })
    root = job_runner.claim_path(namespace, "artifacts")
    good = _adapter(root / "external" / "1")
    # A merged nf4 model beside it, on another claim (the verification Job mounts both).
    merged = _merged(job_runner.claim_path(namespace, "models") / "external-1-nf4")
    quantized = {"uri": "pvc://models/external-1-nf4", "sha256": merged, "format": "merged-nf4", "referenceSizeBytes": 3000}
    _create(api, namespace, "external-v1", "pvc://artifacts/external/1", good)
    _create(api, namespace, "external-v2", "pvc://artifacts/external/1", "d" * 64)
    _create(api, namespace, "external-v3", "pvc://artifacts/external/1", good, quantized=quantized)
    _create(api, namespace, "external-v4", "pvc://artifacts/external/1", good, quantized={**quantized, "sha256": "d" * 64})

    ok = _settled(api, namespace, "external-v1")["status"]
    assert ok["phase"] == "Validated" and ok["verifiedSha256"] == good and "quantized" not in ok
    bad = _settled(api, namespace, "external-v2")["status"]
    ready = next(c for c in bad["conditions"] if c["type"] == "Ready")
    assert bad["phase"] == "Failed" and ready["reason"] == "ChecksumMismatch" and good in ready["message"]
    # The quantized model is verified like the adapter: its digest, and its size against the 16-bit model's.
    size = sum(p.stat().st_size for p in (job_runner.claim_path(namespace, "models") / "external-1-nf4").iterdir())
    ok = _settled(api, namespace, "external-v3")["status"]
    assert ok["phase"] == "Validated" and ok["quantized"] == {"verifiedSha256": merged, "sizeRatio": round(size / 3000, 4)}
    bad = _settled(api, namespace, "external-v4")["status"]
    ready = next(c for c in bad["conditions"] if c["type"] == "Ready")
    assert bad["phase"] == "Failed" and ready["reason"] == "ChecksumMismatch" and "spec.quantized" in ready["message"]
