"""The Jobs of a sharded VectorIndex run (`spec.parallelism` > 1): an Indexed Job of shards, then
one finalize Job whose name derives from the shard Job's; shard results read per index."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from tunerag_operator.api.vectorindex import VectorIndexSpec
from tunerag_operator.handlers.vectorindex import INDEX_STEP, finalize_name, finalize_run, shard_results, workload_run
from tunerag_operator.render.workload import Owner, config_map, job

IMAGE = "example.com/workloads:1"


def _spec(parallelism: int, **resources: Any) -> VectorIndexSpec:
    return VectorIndexSpec.model_validate({
        "source": {"uri": "pvc://docs/handbook"}, "parallelism": parallelism,
        "store": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "handbook"},
        "resources": {"gpus": 1, **resources},
    })


def _owner(namespace: str = "team-a", name: str = "handbook") -> Owner:
    return Owner("VectorIndex", name, namespace, "0b5d7b9e-0000-4000-8000-000000000002", 4)


def test_parallelism_renders_an_indexed_job_and_one_finalize_job() -> None:
    single = job(workload_run(_spec(1), _owner(), IMAGE))["spec"]
    assert "completionMode" not in single and "completions" not in single
    shards = job(workload_run(_spec(3), _owner(), IMAGE))
    assert (shards["spec"]["completionMode"], shards["spec"]["completions"], shards["spec"]["parallelism"]) == ("Indexed", 3, 3)
    assert shards["metadata"]["name"] == "handbook-g4" and shards["metadata"]["labels"][INDEX_STEP] == "shards"

    results = [{"shard": i, "added": 1, "tableVersion": "handbook_v1"} for i in range(3)]
    run = finalize_run(_spec(3), _owner(), IMAGE, "handbook-g4", results)
    final = job(run)
    assert final["metadata"]["name"] == finalize_name(_owner(), "handbook-g4") == "handbook-g4-finalize"
    assert "completionMode" not in final["spec"] and final["metadata"]["labels"][INDEX_STEP] == "finalize"
    container = final["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "tunerag_workloads.index.finalize"]
    assert "nvidia.com/gpu" not in json.dumps(container.get("resources") or {})  # no model is loaded
    assert not [v for v in final["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    request = json.loads(config_map(run)["data"]["spec.json"])
    assert request["shards"] == results and request["spec"]["parallelism"] == 3
    # refresh runs and long names: still one deterministic finalize name of at most 63 characters
    assert finalize_name(_owner(), "handbook-g4-r12") == "handbook-g4-r12-finalize"
    long = _owner(name="x" * 52)
    shard_job = job(workload_run(_spec(2), long, IMAGE, refresh=10_000))["metadata"]["name"]
    name = finalize_name(long, shard_job)
    assert len(name) <= 63 and name == finalize_name(long, shard_job) != shard_job
    assert job(finalize_run(_spec(2), long, IMAGE, shard_job, []))["metadata"]["name"] == name


def _pod(index: int, phase: str, finished: str, result: dict[str, Any] | None) -> dict[str, Any]:
    terminated = {"exitCode": 0 if phase == "Succeeded" else 3, "finishedAt": finished,
                  "message": json.dumps(result) if result is not None else "boom"}
    return {"metadata": {"name": f"p{index}-{finished}", "creationTimestamp": finished,
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "status": {"phase": phase, "containerStatuses": [{"state": {"terminated": terminated}}]}}


def test_shard_results_take_each_index_newest_succeeded_pod() -> None:
    pods = [
        _pod(0, "Failed", "t1", {"ok": False, "reason": "DatabaseConnectionLost"}),
        _pod(0, "Succeeded", "t2", {"ok": True, "shard": 0, "added": 2}),
        _pod(1, "Succeeded", "t1", {"ok": True, "shard": 1, "added": 5}),
        _pod(1, "Failed", "t3", None),
    ]
    results, missing = shard_results(pods, 3)
    assert results == [{"shard": 0, "added": 2}, {"shard": 1, "added": 5}] and missing == [2]


def test_rendered_shard_and_finalize_jobs_pass_the_real_api_server(api: client.ApiClient, namespace: str) -> None:
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    owner = _owner(namespace)
    for run in (workload_run(_spec(3), owner, IMAGE), finalize_run(_spec(3), owner, IMAGE, "handbook-g4", [])):
        client.CoreV1Api(api).create_namespaced_config_map(namespace, config_map(run), dry_run="All")
        client.BatchV1Api(api).create_namespaced_job(namespace, job(run), dry_run="All")
