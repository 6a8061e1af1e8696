"""Rendering of workload runs: pure functions, checked as objects and against the real API server."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tunerag_operator.api.common import PodResources, Toleration
from tunerag_operator.render.workload import Owner, WorkloadRun, config_map, job

OWNER = Owner("FineTuneJob", "ticket-router-1", "team-a", "0b5d7b9e-0000-4000-8000-000000000001", 3)


def _run(**kw: Any) -> WorkloadRun:
    args: dict[str, Any] = {
        "owner": OWNER, "component": "finetune", "module": "tunerag_workloads.finetune",
        "spec": {"adapter": {"family": "ticket-router"}}, "image": "example.com/workloads:1",
        "resources": PodResources(gpus=2, memory="16Gi", node_selector={"pool": "gpu"},
                                  tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]),
        "claims": ("data", "data", "models"),
        "env_from_secret": "s3-creds",
    }
    return WorkloadRun(**{**args, **kw})


def test_names_are_deterministic_per_generation() -> None:
    assert job(_run())["metadata"]["name"] == "ticket-router-1-g3"
    assert config_map(_run())["metadata"]["name"] == "ticket-router-1-g3"
    assert job(_run()) == job(_run())


def test_job_is_owned_and_restricted() -> None:
    rendered = job(_run())
    ref = rendered["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("FineTuneJob", OWNER.uid, True)
    pod = rendered["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/etc/tunerag", "/tmp", "/mnt/pvc/data", "/mnt/pvc/models"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def test_user_errors_fail_the_job_without_retries() -> None:
    rules = job(_run())["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]


@pytest.mark.parametrize("enforce", ["restricted"])
def test_rendered_objects_pass_the_real_api_server(api: client.ApiClient, namespace: str, enforce: str) -> None:
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": enforce}}})
    owner = Owner(OWNER.kind, OWNER.name, namespace, OWNER.uid, OWNER.generation)
    run = _run(owner=owner)
    client.CoreV1Api(api).create_namespaced_config_map(namespace, config_map(run), dry_run="All")
    client.BatchV1Api(api).create_namespaced_job(namespace, job(run), dry_run="All")
    # The pod the Job controller would create must pass PodSecurity `restricted` too.
    template = job(run)["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", **template["metadata"]}, "spec": template["spec"]}
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod, dry_run="All")
