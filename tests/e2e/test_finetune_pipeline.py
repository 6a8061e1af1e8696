"""A FineTuneJob end to end on CPU: the operator runs the training Job through the harness, the
status follows it, and the result is registered as an AdapterVersion that loads with peft (and, with
output.quantize, a merged nf4 model registered beside it that the serving workload serves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from substrate.controlplane import free_port
from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import GROUP, VERSION
from workloads import finetune_fixtures as ff
from workloads import serve_fixtures as sf

GOOD = {"training": {"learningRate": 1e-3, "maxSteps": 60},
        "gates": {"minExactMatch": 0.3, "maxValidationLoss": 1.5, "maxRetentionRegression": 3.0}}
QUANTIZE = {"output": {"quantize": {"format": "nf4"}}}
OVERFIT = ff.deep_merge(GOOD, {"training": {"learningRate": 3e-2, "maxSteps": 80, "warmupRatio": 0.0, "scheduler": "constant"}})


def _get(api: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, plural, name
    )


def _run(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec,
    })

    def finished() -> dict[str, Any] | None:
        obj = _get(api, namespace, "finetunejobs", name)
        return obj if (obj.get("status") or {}).get("phase") in ("Succeeded", "Rejected", "Failed") else None

    return wait_for(finished, 420, f"FineTuneJob {name} to finish", interval=0.5)


def test_finetunejob_trains_validates_and_registers(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    spec = ff.base_spec(ff.cached_model(), tmp_path / "data", tmp_path / "out", **ff.deep_merge(GOOD, QUANTIZE))
    obj = _run(api, namespace, "colors-1", spec)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert status["adapterVersion"] == "colors-v1"
    assert status["dataReport"]["rowsKept"] == 200 and status["dataReport"]["digest"]
    metrics = status["metrics"]
    assert metrics["exactMatch"] > metrics["baseExactMatch"]
    assert status["progress"]["step"] > 0
    report = status["reportUri"]  # the run's HTML report, in the run folder beside the adapter
    assert report.startswith(f"file://{tmp_path}/out/runs/") and report.endswith("/report.html")
    assert "Loss curves" in Path(report.removeprefix("file://")).read_text()

    av = _get(api, namespace, "adapterversions", "colors-v1")
    assert av["spec"]["family"] == "colors" and av["spec"]["version"] == 1
    assert av["spec"]["lineage"]["fineTuneJob"] == "colors-1"
    assert av["spec"]["lineage"]["datasetDigests"]["train"] == status["dataReport"]["digest"]
    assert av["spec"]["lineage"]["reportUri"] == report
    assert av["metadata"]["labels"]["tunerag.dev/fine-tune-job-uid"] == obj["metadata"]["uid"]
    assert "ownerReferences" not in av["metadata"]  # the registry outlives the run
    av_status = wait_for(lambda: (s := _get(api, namespace, "adapterversions", "colors-v1").get("status") or {})
                         .get("phase") == "Validated" and s, 30, "AdapterVersion Validated")

    # The artifact on disk is what the registry says, and it loads with peft onto the base.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunerag_workloads.contract import resolve_uri
    from tunerag_workloads.finetune.publish import build_manifest, verify_manifest

    adapter_dir = Path(resolve_uri(av["spec"]["artifact"]["uri"]))
    assert verify_manifest(adapter_dir)
    assert build_manifest(adapter_dir)["sha256"] == av["spec"]["artifact"]["sha256"]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(ff.cached_model())), str(adapter_dir))

    # The merged nf4 model (output.quantize) is registered beside the adapter: its URI, the digest of
    # the bytes on disk, its size and format, and how it compares with the same model in 16 bit.
    quantized = av["spec"]["quantized"]
    quantized_dir = Path(resolve_uri(quantized["uri"]))
    assert quantized_dir.parent == adapter_dir.parent and quantized["format"] == "merged-nf4"
    assert verify_manifest(quantized_dir) and build_manifest(quantized_dir)["sha256"] == quantized["sha256"]
    assert quantized["sizeBytes"] == sum(p.stat().st_size for p in quantized_dir.iterdir() if p.name != "manifest.json")
    assert quantized["withinTolerance"] is True and 0 < quantized["sizeBytes"] < quantized["referenceSizeBytes"]
    ratio = av_status["quantized"]["sizeRatio"]
    assert ratio == round(quantized["sizeBytes"] / quantized["referenceSizeBytes"], 4) and ratio < 1
    assert av["spec"]["metrics"]["quantizedArgmaxAgreement"] >= 0.9
    assert status["quantized"] == {"uri": quantized["uri"], "format": "merged-nf4", "sizeBytes": quantized["sizeBytes"],
                                   "sizeRatio": ratio, "withinTolerance": True}

    # It serves: the predictor a RolloutPolicy with target.artifact quantized renders for this version
    # loads the merged model alone (no base model, no peft) and answers under the version's name.
    from tunerag_operator.api.rolloutpolicy import Target
    from tunerag_operator.render.inferenceservice import Serving, serve_config
    from tunerag_operator.rollout.candidates import version_of

    target = Target.model_validate({"inferenceService": "colors", "baseModel": spec["baseModel"]["uri"],
                                    "artifact": "quantized", "maxNewTokens": 4})
    serving = Serving(namespace=namespace, policy="colors", policy_uid="uid", service="colors", target=target, image="")
    config = serve_config(serving, "colors", [version_of(av).served(target.artifact)])
    assert config["adapters"] == [{"name": "colors-v1", "uri": quantized["uri"], "sha256": quantized["sha256"],
                                   "format": "merged-nf4"}]
    server = sf.Server("quantized", config, free_port(), tmp_path / "serve").start()
    try:
        http = server.ready()
        for row in ff.task_rows()[200:204]:
            answer = http.post("/v1/completions", json={"model": "colors", "prompt": row["prompt"], "max_tokens": 4}).json()
            assert answer["tunerag"]["adapterVersion"] == "colors-v1", answer
            assert answer["choices"][0]["text"].split()[0] in ff.LABELS, answer  # the task learned, in nf4
        assert http.post("/v1/completions", json={"model": "base", "prompt": "count : one"}).status_code == 404
    finally:
        server.stop()
    assert "merged-nf4" in server.output()

    # bitsandbytes' notice that the optional `kernels` package (a download from a hub at run time) is
    # not installed is expected library noise on CPU: it stays out of the workloads' output.
    pod = next(p.metadata.name for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items
               if p.metadata.name.startswith("colors-1-"))
    for output in (job_runner.log_path(namespace, pod).read_text(), server.output()):
        assert "TUNERAG_PROGRESS" in output or "tunerag serve" in output
        assert "kernels-community" not in output and "No module named 'kernels'" not in output

    events = [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items if e.involved_object.name == "colors-1"]
    assert any(e.reason == "Succeeded" and "colors-v1" in e.message for e in events)


def test_forgetting_gate_rejects_and_registers_as_rejected(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    spec = ff.base_spec(ff.cached_model(), tmp_path / "data", tmp_path / "out", **OVERFIT)
    obj = _run(api, namespace, "colors-overfit", spec)
    status = obj["status"]
    assert status["phase"] == "Rejected", status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "GateFailed" and "maxRetentionRegression" in ready["message"]
    assert status["metrics"]["retentionRegression"] > 3.0
    av = wait_for(lambda: (a := _get(api, namespace, "adapterversions", status["adapterVersion"]))
                  .get("status", {}).get("phase") == "Rejected" and a, 30, "AdapterVersion Rejected")
    assert av["spec"]["version"] == 1


def test_too_few_rows_fails_once_with_the_reason(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    spec = ff.base_spec(ff.cached_model(), tmp_path / "data", tmp_path / "out",
                        dataset={"rules": {"minRows": 5000}}, **GOOD)
    obj = _run(api, namespace, "colors-small", spec)
    status = obj["status"]
    assert status["phase"] == "Failed"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InsufficientData" and "5000" in ready["message"]
    assert "adapterVersion" not in status  # nothing half-registered
    assert client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions")["items"] == []


def test_a_killed_training_pod_is_retried_and_resumes_from_its_checkpoint(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    import signal

    spec = ff.base_spec(ff.cached_model(), tmp_path / "data", tmp_path / "out",
                        **ff.deep_merge(GOOD, {"training": {"maxSteps": 400, "checkpointInterval": 10}}))
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": "colors-preempted"}, "spec": spec,
    })

    def checkpointed_pod() -> str | None:
        for pod in client.CoreV1Api(api).list_namespaced_pod(namespace).items:
            log = job_runner.log_path(namespace, pod.metadata.name)
            if log.exists() and '"event":"checkpoint","step":20' in log.read_text():
                return str(pod.metadata.name)
        return None

    # While it trains, the status shows the progress the operator reads from the pod's log.
    training = wait_for(lambda: (s := _get(api, namespace, "finetunejobs", "colors-preempted").get("status") or {})
                        .get("phase") == "Training" and (s.get("progress") or {}).get("step") and s, 300, "progress")
    assert training["progress"]["totalSteps"] == 400 and training["progress"]["step"] >= 1
    pod = wait_for(checkpointed_pod, 300, "a checkpoint at step 20", interval=0.2)
    assert job_runner.kill(namespace, pod, signal.SIGKILL)  # a preempted GPU node, as the pod sees it
    obj = wait_for(lambda: (o := _get(api, namespace, "finetunejobs", "colors-preempted")).get("status", {}).get("phase")
                   in ("Succeeded", "Rejected", "Failed") and o, 420, "the run to finish", interval=0.5)
    progress = obj["status"]["progress"]
    # 400 steps overfit this tiny task, so the verdict may be Rejected: either way the run finished.
    assert obj["status"]["phase"] in ("Succeeded", "Rejected") and obj["status"]["adapterVersion"], obj["status"]
    assert progress["resumedFromStep"] >= 20 and progress["step"] == 400
    job = client.BatchV1Api(api).read_namespaced_job("colors-preempted-g1", namespace)
    assert job.status.failed == 1 and job.status.succeeded == 1
