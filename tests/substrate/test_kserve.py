"""The KServe harness (substrate.kserve) against the real API server with KServe's real CRDs:
InferenceServices in Knative and Standard mode served by a stand-in predictor
(substrate.stub_predictor), their status as KServe writes it, the routers' traffic split, an
InferenceGraph Splitter, Prometheus targets, deletion and the harness's own restart."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from substrate import kube
from substrate.jobrunner import JobRunner
from substrate.kserve import GROUP, KServeController
from substrate.kube import wait_for
from substrate.prometheus import Prometheus

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]
MERGE = "application/merge-patch+json"


@pytest.fixture(autouse=True)
def no_harness_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test during which the harness hit an API error (a status the CRD refused, say) or
    an exception, even if it recovered."""
    if "kserve" not in request.fixturenames:
        yield
        return
    kserve: KServeController = request.getfixturevalue("kserve")
    before = len(kserve.errors)
    yield
    assert kserve.errors[before:] == []


# ----------------------------------------------------------------------------- helpers


def predictor(version: str, **env: str) -> Obj:
    """A predictor running the stub with VERSION=version (and `env`)."""
    variables = [{"name": "VERSION", "value": version}] + [{"name": k, "value": v} for k, v in env.items()]
    return {"containers": [{"name": "kserve-container", "image": "stub-predictor:latest",
                            "command": ["python", "-m", "substrate.stub_predictor"], "env": variables}]}


def isvc(name: str, mode: str, pred: Obj, **spec: Any) -> Obj:
    return {"apiVersion": f"{GROUP}/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "annotations": {"serving.kserve.io/deploymentMode": mode}},
            "spec": {"predictor": pred, **spec}}


def create(api: client.ApiClient, ns: str, body: Obj) -> Obj:
    version = body["apiVersion"].split("/")[1]
    plural = "inferenceservices" if body["kind"] == "InferenceService" else "inferencegraphs"
    obj: Obj = client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, version, ns, plural, body)
    return obj


def patch(api: client.ApiClient, ns: str, name: str, body: Obj) -> Obj:
    obj: Obj = client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, "v1beta1", ns, "inferenceservices", name, body, _content_type=MERGE)
    return obj


def get(api: client.ApiClient, ns: str, name: str, plural: str = "inferenceservices") -> Obj:
    version = "v1beta1" if plural == "inferenceservices" else "v1alpha1"
    obj: Obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, version, ns, plural, name)
    return obj


def conds(status: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in status.get("conditions") or []}


def settled(obj: Obj) -> Obj | None:
    """The status once it describes the current generation."""
    status: Obj = obj.get("status") or {}
    return status if status.get("observedGeneration") == obj["metadata"]["generation"] else None


def wait_status(api: client.ApiClient, ns: str, name: str, pred: Callable[[Obj], bool], what: str,
                timeout: float = 20, plural: str = "inferenceservices") -> Obj:
    def check() -> Obj | None:
        status = settled(get(api, ns, name, plural))
        return status if status is not None and pred(status) else None

    return wait_for(check, timeout, f"{ns}/{name}: {what}")


def ready(status: Obj) -> bool:
    return conds(status).get("Ready", {}).get("status") == "True"


def traffic(status: Obj) -> dict[str, int]:
    return {t["revisionName"]: t["percent"] for t in status["components"]["predictor"].get("traffic") or []}


def post(url: str, payload: Obj | None = None, path: str = "/v2/models/m/infer") -> Obj:
    data = json.dumps(payload or {"inputs": []}).encode()
    req = urllib.request.Request(url + path, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=90) as resp:
        body: Obj = json.load(resp)
        return body


def versions(url: str, n: int) -> Counter[str]:
    return Counter(post(url)["version"] for _ in range(n))


def pid_gone(pid: int) -> bool:
    """The process has exited (a zombie the harness has not reaped yet counts: it is its child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return True


def refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/", timeout=2)
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, OSError):
        return True
    return False


# ----------------------------------------------------------------------------- Knative mode


def test_knative_canary_rollback_promote_and_rollback_after_promotion(
    api: client.ApiClient, kserve: KServeController, namespace: str
) -> None:
    ns = namespace
    create(api, ns, isvc("m", "Knative", predictor("v1")))
    st = wait_status(api, ns, "m", ready, "Ready")
    rev1, rev2 = "m-predictor-00001", "m-predictor-00002"
    assert st["deploymentMode"] == "Knative"
    pred = st["components"]["predictor"]
    assert pred["traffic"] == [{"revisionName": rev1, "percent": 100, "latestRevision": True}]
    assert (pred["latestCreatedRevision"], pred["latestReadyRevision"], pred["latestRolledoutRevision"]) == (rev1,) * 3
    assert "previousRolledoutRevision" not in pred
    url = kserve.url_of(ns, "m")
    assert url and st["url"] == url and st["address"]["url"] == url and pred["url"] == url
    assert st["modelStatus"]["states"]["activeModelState"] == "Loaded"
    assert st["modelStatus"]["transitionStatus"] == "UpToDate"
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "IngressReady": "True", "LatestDeploymentReady": "True", "PredictorConfigurationReady": "True",
        "PredictorReady": "True", "PredictorRouteReady": "True", "Ready": "True"}
    answer = post(url)
    assert (answer["version"], answer["revision"], answer["service"]) == ("v1", rev1, "m-predictor")

    # A new spec with canaryTrafficPercent: a second revision gets 20 % once ready.
    patch(api, ns, "m", {"spec": {"predictor": {**predictor("v2"), "canaryTrafficPercent": 20}}})
    st = wait_status(api, ns, "m", lambda s: traffic(s) == {rev1: 80, rev2: 20} and ready(s), "80/20")
    assert st["components"]["predictor"]["latestRolledoutRevision"] == rev1
    assert {t["revisionName"]: (t["latestRevision"], t["tag"]) for t in st["components"]["predictor"]["traffic"]} \
        == {rev1: (False, "prev"), rev2: (True, "latest")}
    assert versions(url, 100) == {"v1": 80, "v2": 20}
    assert {c["name"]: c["weight"] for c in kserve.components(ns, "m")} == {rev1: 80, rev2: 20}

    # canaryTrafficPercent 0 rolls back to the rolled-out revision; no new revision.
    patch(api, ns, "m", {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
    st = wait_status(api, ns, "m", lambda s: traffic(s) == {rev1: 100, rev2: 0}, "rollback to rev 1")
    assert st["components"]["predictor"]["latestCreatedRevision"] == rev2
    assert versions(url, 10) == {"v1": 10}

    # Promote: without canaryTrafficPercent the latest revision gets everything.
    rev1_pid = next(c["pid"] for c in kserve.components(ns, "m") if c["name"] == rev1)
    patch(api, ns, "m", {"spec": {"predictor": {"canaryTrafficPercent": None}}})
    st = wait_status(api, ns, "m", lambda s: traffic(s) == {rev2: 100}, "promoted")
    pred = st["components"]["predictor"]
    assert (pred["latestRolledoutRevision"], pred["previousRolledoutRevision"]) == (rev2, rev1)
    assert pred["traffic"] == [{"revisionName": rev2, "percent": 100, "latestRevision": True}]
    assert versions(url, 10) == {"v2": 10}
    wait_for(lambda: [c["name"] for c in kserve.components(ns, "m")] == [rev2], 5, "rev 1 to be stopped")
    wait_for(lambda: pid_gone(rev1_pid), 10, "rev 1's process to exit")

    # canaryTrafficPercent 0 on the promoted revision: KServe rolls back to the previous one,
    # which Knative starts again (requests wait for it, as at the activator).
    patch(api, ns, "m", {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
    st = wait_status(api, ns, "m", lambda s: traffic(s) == {rev1: 100, rev2: 0}, "rollback after promotion")
    pred = st["components"]["predictor"]
    assert pred["latestRolledoutRevision"] == rev1 and "previousRolledoutRevision" not in pred
    assert versions(url, 10) == {"v1": 10}
    assert kserve.url_of(ns, "m") == url


def test_knative_failing_revision_gets_no_traffic(
    api: client.ApiClient, kserve: KServeController, namespace: str
) -> None:
    ns = namespace
    create(api, ns, isvc("f", "Serverless", predictor("v1")))  # the legacy name of the mode
    st = wait_status(api, ns, "f", ready, "Ready")
    assert st["deploymentMode"] == "Knative"
    url = st["url"]
    patch(api, ns, "f", {"spec": {"predictor": predictor("v2", STUB_FAIL="model weights are corrupt")}})
    st = wait_status(api, ns, "f", lambda s: s["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad",
                     "the failed load")
    model = st["modelStatus"]
    assert model["states"]["activeModelState"] == "FailedToLoad"
    failure = model["lastFailureInfo"]
    assert (failure["reason"], failure["exitCode"]) == ("ModelLoadFailed", 3)
    assert "error: model weights are corrupt" in failure["message"] and failure["time"]
    c = conds(st)
    assert (c["Ready"]["status"], c["PredictorReady"]["status"], c["LatestDeploymentReady"]["status"]) == ("False",) * 3
    assert c["PredictorReady"]["reason"] == "RevisionFailed"
    assert "model weights are corrupt" in c["Ready"]["message"]
    pred = st["components"]["predictor"]
    assert (pred["latestCreatedRevision"], pred["latestReadyRevision"]) == ("f-predictor-00002", "f-predictor-00001")
    assert pred["traffic"] == [{"revisionName": "f-predictor-00001", "percent": 100, "latestRevision": True}]
    assert versions(url, 20) == {"v1": 20}
    # It is restarted with back-off (2 s, then 4 s, ...) and keeps failing.
    wait_for(lambda: any(c["name"] == "f-predictor-00002" and c["restarts"] >= 2 for c in kserve.components(ns, "f")),
             10, "a restart of the failing revision")
    log = kserve.log_path(ns, "f-predictor-00002")
    assert log is not None and log.read_text().count("model weights are corrupt") >= 2
    assert versions(url, 5) == {"v1": 5}


# ----------------------------------------------------------------------------- Standard mode


def test_standard_canary_then_promote_without_failed_requests(
    api: client.ApiClient, kserve: KServeController, job_runner: JobRunner, namespace: str
) -> None:
    ns = namespace
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(ns, {"metadata": {"name": "creds"},
                                       "data": {"token": base64.b64encode(b"s3cret").decode()}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"model": "tiny"}})
    claim = job_runner.claim_path(ns, "models")
    claim.mkdir(parents=True, exist_ok=True)
    (claim / "adapter.txt").write_text("trained weights")

    def pred(version: str) -> Obj:
        spec = predictor(version, STUB_READ_FILE="/mnt/models/adapter.txt",
                         STUB_ECHO_ENV="TOKEN,MODEL,POD_NS,POD_NAME,MODEL_DIR")
        spec["containers"][0]["env"] += [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MODEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "model"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MODEL_DIR", "value": "/mnt/models"},
        ]
        spec["containers"][0]["volumeMounts"] = [{"name": "models", "mountPath": "/mnt/models"}]
        spec["volumes"] = [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}]
        return spec

    create(api, ns, isvc("s", "RawDeployment", pred("v1")))
    st = wait_status(api, ns, "s", ready, "Ready")
    assert st["deploymentMode"] == "Standard"
    assert st["components"]["predictor"]["traffic"] == [{"revisionName": "s-predictor", "percent": 100,
                                                         "latestRevision": True}]
    assert "canaryStatuses" not in st and "latestCreatedRevision" not in st["components"]["predictor"]
    url = st["url"]
    answer = post(url)
    assert answer["file"] == "trained weights" and answer["service"] == "s-predictor"
    env = answer["env"]
    assert (env["TOKEN"], env["MODEL"], env["POD_NS"], env["MODEL_DIR"]) == ("s3cret", "tiny", ns, str(claim))
    assert env["POD_NAME"].startswith("s-predictor-") and env["POD_NAME"] == answer["pod"]

    # A canary with 30 %: its own process; the predictor keeps 70 %.
    patch(api, ns, "s", {"spec": {"canary": [{"predictor": pred("v2"), "trafficPercent": 30}]}})
    st = wait_status(api, ns, "s", lambda s: ready(s) and bool(s.get("canaryStatuses")), "canary ready")
    [canary] = st["canaryStatuses"]
    assert (canary["name"], canary["ready"], canary["trafficPercent"]) == ("s-canary-0", True, 30)
    assert canary["modelStatus"]["states"]["activeModelState"] == "Loaded"
    assert traffic(st) == {"s-predictor": 70}
    assert versions(url, 100) == {"v1": 70, "v2": 30}
    assert sorted((c["name"], c["canary"], c["weight"]) for c in kserve.components(ns, "s")) == [
        ("s-canary-0", 0, 30), ("s-predictor", None, 70)]

    # Promote: the predictor takes the canary's spec and the canary goes; requests keep working.
    answers: list[str] = []
    failures: list[str] = []
    done = threading.Event()

    def load() -> None:
        while not done.is_set():
            try:
                answers.append(post(url)["version"])
            except Exception as exc:
                failures.append(repr(exc))
            time.sleep(0.005)

    old_pids = {c["pid"] for c in kserve.components(ns, "s")}
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        patch(api, ns, "s", {"spec": {"predictor": pred("v2"), "canary": None}})
        st = wait_status(api, ns, "s", lambda s: ready(s) and "canaryStatuses" not in s
                         and traffic(s) == {"s-predictor": 100}, "promoted")
        wait_for(lambda: len(answers) > 20 and set(answers[-20:]) == {"v2"}, 20, "v2 to serve everything")
        wait_for(lambda: all(pid_gone(p) for p in old_pids), 10, "the old processes to stop")
    finally:
        done.set()
        thread.join(timeout=30)
    assert failures == []
    assert {"v1", "v2"} <= set(answers)
    [component] = kserve.components(ns, "s")
    assert (component["name"], component["ready"], component["weight"]) == ("s-predictor", True, 100)


def test_standard_failed_rollout_keeps_the_old_process_serving(
    api: client.ApiClient, kserve: KServeController, namespace: str
) -> None:
    ns = namespace
    create(api, ns, isvc("r", "Standard", predictor("v1")))
    url = wait_status(api, ns, "r", ready, "Ready")["url"]
    patch(api, ns, "r", {"spec": {"predictor": predictor("v2", STUB_FAIL="out of memory", STUB_EXIT_CODE="1")}})
    st = wait_status(api, ns, "r", lambda s: conds(s)["Ready"]["status"] == "False", "Ready False")
    assert st["modelStatus"]["lastFailureInfo"]["exitCode"] == 1
    assert conds(st)["Ready"]["reason"] == "ModelLoadFailed" and "out of memory" in conds(st)["Ready"]["message"]
    assert traffic(st) == {"r-predictor": 100}
    assert versions(url, 10) == {"v1": 10}
    # Fixing the spec rolls on.
    patch(api, ns, "r", {"spec": {"predictor": predictor("v3")}})
    wait_status(api, ns, "r", lambda s: ready(s) and s["modelStatus"]["transitionStatus"] == "UpToDate", "Ready")
    assert versions(url, 10) == {"v3": 10}


# ----------------------------------------------------------------------------- InferenceGraph


def test_inference_graph_splitter_and_deletion(
    api: client.ApiClient, kserve: KServeController, namespace: str
) -> None:
    ns = namespace
    create(api, ns, isvc("a", "Standard", predictor("a")))
    create(api, ns, isvc("b", "Knative", predictor("b")))
    create(api, ns, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "InferenceGraph", "metadata": {"name": "g"},
                     "spec": {"nodes": {"root": {"routerType": "Splitter", "steps": [
                         {"serviceName": "a", "name": "a", "weight": 75},
                         {"serviceName": "b", "name": "b", "weight": 25}]}}}})
    st = wait_status(api, ns, "g", ready, "graph Ready", plural="inferencegraphs")
    url = st["url"]
    assert url == kserve.url_of(ns, "g") and url not in (kserve.url_of(ns, "a"), kserve.url_of(ns, "b"))
    assert versions(url, 100) == {"a": 75, "b": 25}

    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, "v1alpha1", ns, "inferencegraphs", "g")
    wait_for(lambda: refused(url), 10, "the graph's router to close")
    b_url = kserve.url_of(ns, "b")
    assert b_url is not None
    pids = [c["pid"] for c in kserve.components(ns, "b")]
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, "v1beta1", ns, "inferenceservices", "b")
    wait_for(lambda: kserve.components(ns, "b") == [] and all(pid_gone(p) for p in pids), 10, "b's process to stop")
    wait_for(lambda: refused(b_url), 10, "b's router to close")
    assert versions(kserve.url_of(ns, "a") or "", 3) == {"a": 3}


# ----------------------------------------------------------------------------- Prometheus, crashes, namespaces


def test_prometheus_targets_crash_restart_and_namespace_deletion(
    api: client.ApiClient, kserve: KServeController, prometheus: Prometheus
) -> None:
    ns = f"t-kserve-prom-{os.urandom(3).hex()}"
    kube.create_namespace(api, ns)
    try:
        create(api, ns, isvc("p", "Knative", predictor("v1")))
        wait_status(api, ns, "p", ready, "Ready")
        [comp] = kserve.components(ns, "p")
        target = f"127.0.0.1:{comp['port']}"
        wait_for(lambda: target in prometheus.targets, 5, "the predictor to be a target")
        for _ in range(3):
            post(kserve.url_of(ns, "p") or "")

        def scraped() -> bool:
            up = prometheus.query(f'up{{instance="{target}"}}')
            served = prometheus.query(f'stub_requests_total{{instance="{target}"}}')
            return bool(up and up[0]["value"][1] == "1" and served and float(served[0]["value"][1]) >= 3)

        wait_for(scraped, 30, "Prometheus to scrape the predictor", interval=0.5)

        # A crash is a failed load: reported, restarted after 2 s, on the same port.
        assert kserve.kill(ns, "p", "p-predictor-00001")
        wait_for(lambda: target not in prometheus.targets, 2, "the crashed predictor to leave the targets",
                 interval=0.02)  # before its restart, 2 s later
        st = wait_status(api, ns, "p", lambda s: "lastFailureInfo" in s["modelStatus"], "the crash")
        assert st["modelStatus"]["lastFailureInfo"]["exitCode"] == 137
        st = wait_status(api, ns, "p", lambda s: ready(s) and s["modelStatus"]["transitionStatus"] == "UpToDate",
                         "Ready again")
        [again] = kserve.components(ns, "p")
        assert (again["port"], again["restarts"]) == (comp["port"], 1) and again["pid"] != comp["pid"]
        wait_for(lambda: target in prometheus.targets, 5, "the restarted predictor to be a target again")
    finally:
        kube.delete_namespace(api, ns)
    # Deleting the namespace (it stays Terminating here) stops everything in it.
    wait_for(lambda: kserve.components(ns, "p") == [] and pid_gone(again["pid"]), 10, "the namespace's processes")
    wait_for(lambda: target not in prometheus.targets, 5, "the target to go")


# ----------------------------------------------------------------------------- the harness's restart


def test_harness_restart_keeps_revisions_traffic_and_url(
    api: client.ApiClient, kserve: KServeController, namespace: str
) -> None:
    ns = namespace
    create(api, ns, isvc("h", "Knative", predictor("v1")))
    url = wait_status(api, ns, "h", ready, "Ready")["url"]
    patch(api, ns, "h", {"spec": {"predictor": {**predictor("v2"), "canaryTrafficPercent": 50}}})
    wait_status(api, ns, "h", lambda s: ready(s) and traffic(s) == {"h-predictor-00001": 50, "h-predictor-00002": 50},
                "50/50")
    pids = [c["pid"] for c in kserve.components(ns, "h")]
    kserve.stop()
    try:
        assert all(pid_gone(p) for p in pids)
        assert refused(url)
    finally:
        kserve.start()
    wait_for(lambda: not refused(url), 10, "the router to come back on its port")
    assert versions(url, 10) == {"v1": 5, "v2": 5}  # the router is back on its port; requests wait for starts
    st = wait_status(api, ns, "h", ready, "Ready")
    assert traffic(st) == {"h-predictor-00001": 50, "h-predictor-00002": 50}
    patch(api, ns, "h", {"spec": {"predictor": {"canaryTrafficPercent": None}}})
    st = wait_status(api, ns, "h", lambda s: traffic(s) == {"h-predictor-00002": 100}, "promoted after restart")
    assert st["components"]["predictor"]["previousRolledoutRevision"] == "h-predictor-00001"


def test_status_is_accepted_by_the_crd_schema(api: client.ApiClient, kserve: KServeController, namespace: str) -> None:
    """What the harness writes survives the API server's pruning unchanged (no unknown fields)."""
    ns = namespace
    create(api, ns, isvc("x", "Standard", predictor("v1"),
                         canary=[{"predictor": {**predictor("v2"), "name": "x-next"}, "trafficPercent": 10}]))
    st = wait_status(api, ns, "x", lambda s: ready(s) and bool(s.get("canaryStatuses")), "Ready")
    assert st["canaryStatuses"][0]["name"] == "x-next"
    assert [c["name"] for c in kserve.components(ns, "x")] == ["x-predictor", "x-next"]
    uid = get(api, ns, "x")["metadata"]["uid"]
    sent, stored = kserve._written[uid]
    assert sent == stored
    # A model-format predictor needs a ServingRuntime, which the harness does not have.
    create(api, ns, isvc("fmt", "Knative", {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "pvc://m/x"}}))
    st = wait_status(api, ns, "fmt", lambda s: conds(s).get("Ready", {}).get("status") == "False", "Ready False")
    assert conds(st)["Ready"]["reason"] == "NoSupportingRuntime"
    assert st["modelStatus"]["lastFailureInfo"]["reason"] == "NoSupportingRuntime"
    with pytest.raises(ApiException) as err:  # and the real CRD is there: bad specs are refused
        create(api, ns, isvc("bad", "Standard", {"canaryTrafficPercent": "lots"}))
    assert err.value.status == 422
