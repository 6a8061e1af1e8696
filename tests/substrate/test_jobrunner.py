"""The JobRunner against the real API server: Jobs run as local processes, and Job and Pod status
look like the Job controller's and a kubelet's (the API server validates the Job status
transitions)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from substrate.controlplane import ControlPlane
from substrate.jobrunner import (
    JOB_TRACKING_FINALIZER,
    JobRunner,
    format_indexes,
    match_pod_failure_policy,
    parse_indexes,
)
from substrate.kube import wait_for

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]


@pytest.fixture(autouse=True)
def no_runner_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test whose Jobs made the runner hit API errors (a rejected status transition,
    say), even if it recovered."""
    if not {"job_runner", "namespace"} <= set(request.fixturenames):
        yield
        return
    runner, ns = request.getfixturevalue("job_runner"), request.getfixturevalue("namespace")
    yield
    assert [e for e in runner.errors if e.startswith(f"{ns}/")] == []


def make_job(api: client.ApiClient, ns: str, name: str, script: str, **spec: Any) -> Obj:
    """Creates a Job whose only container runs `python -c script`; `spec` overrides Job spec
    fields, `pod_spec` / `container` keys are merged into the template's."""
    container: Obj = {"name": "main", "image": "python:3.11-slim", "command": ["python", "-c", textwrap.dedent(script)]}
    container.update(spec.pop("container", {}))
    pod_spec: Obj = {"restartPolicy": "Never", "containers": [container], "terminationGracePeriodSeconds": 2}
    pod_spec.update(spec.pop("pod_spec", {}))
    body = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}, **spec},
    }
    job: Obj = client.ApiClient().sanitize_for_serialization(client.BatchV1Api(api).create_namespaced_job(ns, body))
    return job


def job_status(api: client.ApiClient, ns: str, name: str) -> Obj:
    job = client.BatchV1Api(api).read_namespaced_job(name, ns)
    return client.ApiClient().sanitize_for_serialization(job.status) or {}


def conditions(status: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in status.get("conditions") or [] if c["status"] == "True"}


def wait_finished(api: client.ApiClient, ns: str, name: str, timeout: float = 20) -> Obj:
    def finished() -> Obj | None:
        status = job_status(api, ns, name)
        return status if {"Complete", "Failed"} & set(conditions(status)) else None

    return wait_for(finished, timeout, f"Job {ns}/{name} to finish")


def pods_of(api: client.ApiClient, ns: str, name: str) -> list[Obj]:
    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={name}")
    out = client.ApiClient().sanitize_for_serialization(pods.items)
    return sorted(out, key=lambda p: p["metadata"]["creationTimestamp"])


def terminated(pod: Obj) -> Obj:
    state: Obj = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return state


def running_pod(api: client.ApiClient, runner: JobRunner, ns: str, name: str) -> Obj:
    """The Job's Pod that is Running with a live process."""

    def find() -> Obj | None:
        for pod in pods_of(api, ns, name):
            key = (ns, pod["metadata"]["name"])
            if pod["status"].get("phase") == "Running" and key in runner.processes():
                return pod
        return None

    return wait_for(find, 15, f"a running Pod of {ns}/{name}")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_job_reads_configmap_and_secret_and_completes(api: client.ApiClient, namespace: str, job_runner: JobRunner) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "spec"}, "data": {"spec.json": '{"rows": 3}'}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    script = """
        import json, os
        spec = json.load(open("/etc/tunerag/spec.json"))
        result = {"rows": spec["rows"], "token": os.environ["TOKEN"], "pod": os.environ["POD_NAME"]}
        print("working", flush=True)
        open("/dev/termination-log", "w").write(json.dumps(result))
    """
    make_job(api, namespace, "ok", script, container={
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "volumeMounts": [{"name": "spec", "mountPath": "/etc/tunerag"}],
    }, pod_spec={"volumes": [{"name": "spec", "configMap": {"name": "spec"}}]})

    status = wait_finished(api, namespace, "ok")

    conds = conditions(status)
    assert {"SuccessCriteriaMet", "Complete"} <= set(conds), status
    assert conds["Complete"]["reason"] == "CompletionsReached"
    assert status["succeeded"] == 1 and not status.get("failed") and not status.get("active")
    assert status["completionTime"] >= status["startTime"]
    [pod] = pods_of(api, namespace, "ok")
    assert pod["status"]["phase"] == "Succeeded"
    state = terminated(pod)
    assert (state["exitCode"], state["reason"]) == (0, "Completed")
    assert json.loads(state["message"]) == {"rows": 3, "token": "s3cret", "pod": pod["metadata"]["name"]}
    assert JOB_TRACKING_FINALIZER not in (pod["metadata"].get("finalizers") or [])
    labels = pod["metadata"]["labels"]
    assert labels["batch.kubernetes.io/job-name"] == "ok" and labels["job-name"] == "ok"
    [owner] = pod["metadata"]["ownerReferences"]
    assert owner["kind"] == "Job" and owner["controller"] is True
    assert labels["batch.kubernetes.io/controller-uid"] == owner["uid"]
    assert job_runner.log_path(namespace, pod["metadata"]["name"]).read_text() == "working\n"


def test_host_paths_the_harness_adds_are_not_mapped_into_mounts(
    api: client.ApiClient, namespace: str, job_runner: JobRunner
) -> None:
    """A checkout or cache under a path a pod also mounts (an emptyDir at /tmp, with the checkout
    under /tmp): the harness's own PATH and PYTHONPATH are this machine's and stay as they are, so
    the pod runs this interpreter with the project importable; what the pod itself declares is
    still mapped."""
    checkout = str(Path(__file__).resolve().parents[2])
    interpreter_root = str(Path(sys.executable).parents[1])
    script = """
        import json, os, sys
        import tunerag_workloads
        print(json.dumps({"python": sys.executable, "declared": os.environ["SCRATCH_FILE"]}), flush=True)
    """
    make_job(api, namespace, "host-paths", script, container={
        "env": [{"name": "SCRATCH_FILE", "value": f"{checkout}/scratch.txt"}],
        "volumeMounts": [{"name": "checkout", "mountPath": checkout}, {"name": "venv", "mountPath": interpreter_root}],
    }, pod_spec={"volumes": [{"name": "checkout", "emptyDir": {}}, {"name": "venv", "emptyDir": {}}]})

    status = wait_finished(api, namespace, "host-paths")

    [pod] = pods_of(api, namespace, "host-paths")
    log = job_runner.log_path(namespace, pod["metadata"]["name"]).read_text()
    assert "Complete" in conditions(status), log
    seen = json.loads(log.splitlines()[-1])
    assert Path(seen["python"]).parent == Path(sys.executable).parent, seen
    # The pod's own value names its mount, so it is the pod's folder, not the checkout.
    assert seen["declared"].endswith("/scratch.txt") and not seen["declared"].startswith(f"{checkout}/"), seen


def test_failing_job_retries_until_backoff_limit(api: client.ApiClient, namespace: str, job_runner: JobRunner) -> None:
    script = """
        import sys
        open("/dev/termination-log", "w").write("bad input: row 7")
        sys.exit(3)
    """
    make_job(api, namespace, "bad", script, backoffLimit=1)

    status = wait_finished(api, namespace, "bad")

    conds = conditions(status)
    assert {"FailureTarget", "Failed"} <= set(conds) and "Complete" not in conds
    assert conds["Failed"]["reason"] == "BackoffLimitExceeded"
    assert conds["Failed"]["message"] == "Job has reached the specified backoff limit"
    assert status["failed"] == 2 and not status.get("succeeded") and not status.get("active")
    pods = pods_of(api, namespace, "bad")
    assert [p["status"]["phase"] for p in pods] == ["Failed", "Failed"]
    for pod in pods:
        state = terminated(pod)
        assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", "bad input: row 7")


def test_fallback_to_logs_on_error(api: client.ApiClient, namespace: str, job_runner: JobRunner) -> None:
    script = """
        import sys
        for i in range(100):
            print(f"line {i}")
        sys.exit(1)
    """
    make_job(api, namespace, "logs", script, container={"terminationMessagePolicy": "FallbackToLogsOnError"})
    wait_finished(api, namespace, "logs")
    [pod] = pods_of(api, namespace, "logs")
    message = terminated(pod)["message"]
    assert message.splitlines()[0] == "line 20" and message.endswith("line 99\n")


def test_active_deadline_kills_the_process(api: client.ApiClient, namespace: str, job_runner: JobRunner) -> None:
    make_job(api, namespace, "slow", "import time; time.sleep(60)", activeDeadlineSeconds=3, backoffLimit=3)
    pod = running_pod(api, job_runner, namespace, "slow")
    pid = job_runner.processes()[(namespace, pod["metadata"]["name"])]

    status = wait_finished(api, namespace, "slow", timeout=15)

    conds = conditions(status)
    assert {"FailureTarget", "Failed"} <= set(conds)
    assert conds["Failed"]["reason"] == "DeadlineExceeded"
    assert conds["Failed"]["message"] == "Job was active longer than specified deadline"
    assert not status.get("active") and not status.get("terminating")
    assert gone(pid)
    assert pods_of(api, namespace, "slow") == []  # deleted by the controller, finalised by the kubelet


def test_deleting_the_running_pod_kills_it_and_replaces_it(
    api: client.ApiClient, namespace: str, job_runner: JobRunner
) -> None:
    # the first attempt leaves a marker on the shared claim and waits; the second one succeeds
    client.CoreV1Api(api).create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "work"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    script = """
        import os, sys, time
        marker = "/work/attempted"
        if os.path.exists(marker):
            sys.exit(0)
        open(marker, "w").close()
        time.sleep(60)
    """
    make_job(api, namespace, "retry", script, backoffLimit=2,
             container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
             pod_spec={"volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "work"}}]})
    first = running_pod(api, job_runner, namespace, "retry")
    wait_for((job_runner.claim_path(namespace, "work") / "attempted").exists, 10, "the first attempt's marker")
    pid = job_runner.processes()[(namespace, first["metadata"]["name"])]

    client.CoreV1Api(api).delete_namespaced_pod(first["metadata"]["name"], namespace)

    wait_for(lambda: gone(pid), 10, "the deleted Pod's process to die")
    status = wait_finished(api, namespace, "retry")
    assert "Complete" in conditions(status)
    assert (status["failed"], status["succeeded"]) == (1, 1)
    names = [p["metadata"]["name"] for p in pods_of(api, namespace, "retry")]
    assert first["metadata"]["name"] not in names and len(names) == 1  # the deleted one is gone


def test_crash_via_kill_hook_counts_as_failure(api: client.ApiClient, namespace: str, job_runner: JobRunner) -> None:
    make_job(api, namespace, "crash", "import time; time.sleep(60)")
    pod = running_pod(api, job_runner, namespace, "crash")

    assert job_runner.kill(namespace, pod["metadata"]["name"], signal.SIGKILL)

    status = wait_finished(api, namespace, "crash")
    assert conditions(status)["Failed"]["reason"] == "BackoffLimitExceeded"
    [pod] = pods_of(api, namespace, "crash")
    assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (137, "Error")


def test_indexed_job_runs_every_index(api: client.ApiClient, namespace: str, job_runner: JobRunner) -> None:
    script = 'import os; open("/dev/termination-log", "w").write(os.environ["JOB_COMPLETION_INDEX"])'
    make_job(api, namespace, "idx", script, completionMode="Indexed", completions=3, parallelism=3)

    status = wait_finished(api, namespace, "idx")

    assert "Complete" in conditions(status)
    assert (status["succeeded"], status["completedIndexes"]) == (3, "0-2")
    messages = sorted(terminated(p)["message"] for p in pods_of(api, namespace, "idx"))
    assert messages == ["0", "1", "2"]


def test_missing_secret_waits_then_runs(api: client.ApiClient, namespace: str, job_runner: JobRunner) -> None:
    make_job(api, namespace, "later", "import os; assert os.environ['K'] == 'v'",
             container={"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "late", "key": "k"}}}]})

    def waiting() -> Obj | None:
        for pod in pods_of(api, namespace, "later"):
            state = (pod["status"].get("containerStatuses") or [{}])[0].get("state") or {}
            waiting: Obj = state.get("waiting") or {}
            if waiting.get("reason") == "CreateContainerConfigError":
                return waiting
        return None

    assert wait_for(waiting, 10, "CreateContainerConfigError")["message"] == 'secret "late" not found'
    client.CoreV1Api(api).create_namespaced_secret(namespace, {"metadata": {"name": "late"}, "stringData": {"k": "v"}})
    assert "Complete" in conditions(wait_finished(api, namespace, "later"))


def test_deleting_the_job_kills_processes_and_deletes_pods(
    api: client.ApiClient, namespace: str, job_runner: JobRunner
) -> None:
    make_job(api, namespace, "doomed", "import time; time.sleep(60)")
    pod = running_pod(api, job_runner, namespace, "doomed")
    pid = job_runner.processes()[(namespace, pod["metadata"]["name"])]

    client.BatchV1Api(api).delete_namespaced_job("doomed", namespace, propagation_policy="Background")

    wait_for(lambda: gone(pid) and not pods_of(api, namespace, "doomed"), 15, "process and Pods to go")


def test_suspend_and_resume(api: client.ApiClient, namespace: str, job_runner: JobRunner) -> None:
    make_job(api, namespace, "susp", "pass", suspend=True)
    wait_for(lambda: conditions(job_status(api, namespace, "susp")).get("Suspended"), 10, "Suspended condition")
    assert pods_of(api, namespace, "susp") == []

    client.BatchV1Api(api).patch_namespaced_job("susp", namespace, {"spec": {"suspend": False}})

    status = wait_finished(api, namespace, "susp")
    assert "Complete" in conditions(status)
    assert next(c for c in status["conditions"] if c["type"] == "Suspended")["reason"] == "JobResumed"


def test_restarted_runner_fails_orphaned_running_pods(
    api: client.ApiClient, namespace: str, job_runner: JobRunner
) -> None:
    script = """
        import os, sys, time
        if os.path.exists("/work/attempted"):
            sys.exit(0)
        open("/work/attempted", "w").close()
        time.sleep(60)
    """
    make_job(api, namespace, "survivor", script, backoffLimit=1,
             container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
             pod_spec={"volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "work"}}]})
    first = running_pod(api, job_runner, namespace, "survivor")
    wait_for((job_runner.claim_path(namespace, "work") / "attempted").exists, 10, "the first attempt's marker")

    job_runner.stop()  # the node goes away: processes die, Pods stay Running
    job_runner.start()

    status = wait_finished(api, namespace, "survivor")
    assert "Complete" in conditions(status) and (status["failed"], status["succeeded"]) == (1, 1)
    lost = next(p for p in pods_of(api, namespace, "survivor") if p["metadata"]["name"] == first["metadata"]["name"])
    assert lost["status"]["phase"] == "Failed"
    assert terminated(lost)["reason"] == "ContainerStatusUnknown"


ATTEMPTS = """
    import pathlib, sys
    counter = pathlib.Path("/work/attempts")
    n = int(counter.read_text() or 0) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    sys.exit(CODES[n - 1])
"""


def make_attempts_job(api: client.ApiClient, ns: str, name: str, codes: list[int], **spec: Any) -> Obj:
    """A Job whose n-th Pod exits with codes[n-1] (a counter on a shared claim)."""
    return make_job(api, ns, name, f"CODES = {codes}\n" + textwrap.dedent(ATTEMPTS),
                    container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                    pod_spec={"volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": name}}]}, **spec)


def test_pod_failure_policy_fail_job(api: client.ApiClient, namespace: str, job_runner: JobRunner) -> None:
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}}]}
    make_attempts_job(api, namespace, "pfp", [1, 2, 0], backoffLimit=3, podFailurePolicy=policy)

    status = wait_finished(api, namespace, "pfp")

    conds = conditions(status)
    assert {"FailureTarget", "Failed"} <= set(conds) and "Complete" not in conds
    codes = {terminated(p)["exitCode"]: p["metadata"]["name"] for p in pods_of(api, namespace, "pfp")}
    assert sorted(codes) == [1, 2]  # 1 was retried, 2 failed the Job (creation order: same second)
    assert conds["Failed"]["reason"] == conds["FailureTarget"]["reason"] == "PodFailurePolicy"
    assert conds["Failed"]["message"] == (
        f"Container main for pod {namespace}/{codes[2]} failed with exit code 2 "
        "matching FailJob rule at index 0")
    assert status["failed"] == 2 and not status.get("active")


def test_pod_failure_policy_ignore(api: client.ApiClient, namespace: str, job_runner: JobRunner) -> None:
    policy = {"rules": [{"action": "Ignore", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}},
                        {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [3]}}]}
    make_attempts_job(api, namespace, "ign", [3, 3, 0], backoffLimit=0, podFailurePolicy=policy)

    status = wait_finished(api, namespace, "ign")

    assert "Complete" in conditions(status), status
    assert not status.get("failed") and status["succeeded"] == 1
    pods = pods_of(api, namespace, "ign")
    assert sorted(terminated(p)["exitCode"] for p in pods) == [0, 3, 3]
    assert all(JOB_TRACKING_FINALIZER not in (p["metadata"].get("finalizers") or []) for p in pods)


def test_pod_failure_policy_matching() -> None:
    def pod(code: int, container: str = "main", conds: list[Obj] | None = None) -> Obj:
        return {"metadata": {"namespace": "ns", "name": "p"},
                "status": {"conditions": conds or [], "containerStatuses": [
                    {"name": container, "state": {"terminated": {"exitCode": code}}}]}}

    def job(*rules: Obj) -> Obj:
        return {"spec": {"podFailurePolicy": {"rules": list(rules)}}}

    fail_42 = {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}
    assert match_pod_failure_policy(job(fail_42), pod(42)) == (
        "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 0", True)
    assert match_pod_failure_policy(job(fail_42), pod(42, container="side")) == (None, True)
    not_in = {"action": "Ignore", "onExitCodes": {"operator": "NotIn", "values": [1]}}
    assert match_pod_failure_policy(job(not_in), pod(137)) == (None, False)
    assert match_pod_failure_policy(job(not_in), pod(1)) == (None, True)
    disruption = {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert match_pod_failure_policy(job({"action": "Count", "onExitCodes": {"operator": "In", "values": [2]}},
                                        disruption),
                                    pod(137, conds=[{"type": "DisruptionTarget", "status": "True"}])) == (
        "Pod ns/p has condition DisruptionTarget matching FailJob rule at index 1", True)
    assert match_pod_failure_policy({"spec": {}}, pod(1)) == (None, True)


def test_pod_logs_through_the_api_server(
    api: client.ApiClient, namespace: str, job_runner: JobRunner, control_plane: ControlPlane
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "work"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    script = """
        import os, sys, time
        for i in range(3):
            print(f"line {i}", flush=True)
        while not os.path.exists("/work/go"):
            time.sleep(0.05)
        print("line 3", flush=True)
        print("line 4", file=sys.stderr, flush=True)
    """
    make_job(api, namespace, "chatty", script,
             container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
             pod_spec={"volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "work"}}],
                       "containers": [{"name": "main", "image": "python:3.11-slim",
                                       "command": ["python", "-c", textwrap.dedent(script)],
                                       "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                                      {"name": "side", "image": "busybox", "command": ["true"]}]})
    name = running_pod(api, job_runner, namespace, "chatty")["metadata"]["name"]

    def tail(**kwargs: Any) -> str:
        # kubernetes-client 36 returns the repr of the bytes for `str` responses
        # (kubernetes-client/python#2596), so read the body raw
        resp = core.read_namespaced_pod_log(name, namespace, container="main", _preload_content=False, **kwargs)
        return str(resp.data.decode())

    wait_for(lambda: tail(tail_lines=2) == "line 1\nline 2\n", 10, "the running Pod's last 2 lines")
    stamped = tail(timestamps=True, tail_lines=1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z line 2\n", stamped), stamped
    assert tail(limit_bytes=8) == "line 0\nl"
    with pytest.raises(ApiException) as waiting:
        core.read_namespaced_pod_log(name, namespace, container="side")
    assert waiting.value.status == 400 and "is waiting to start: NotRunByJobRunner" in waiting.value.body
    follow = core.read_namespaced_pod_log(name, namespace, container="main", follow=True, _preload_content=False)

    (job_runner.claim_path(namespace, "work") / "go").touch()

    assert follow.data.decode() == "".join(f"line {i}\n" for i in range(5))  # until the container exits
    wait_finished(api, namespace, "chatty")
    assert tail(tail_lines=2) == "line 3\nline 4\n"
    out = subprocess.run(["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "-n", namespace, "logs", name,
                          "-c", "main", "--tail=3"], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout == "line 2\nline 3\nline 4\n"


def test_index_format_round_trips() -> None:
    assert format_indexes({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert parse_indexes("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}
    assert parse_indexes("") == set()
