"""Rendering of the serving objects, checked as objects and by KServe's real CRD schema (server-side
dry-run against the local API server, both deployment modes and both runtimes)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client

from tunerag_operator.api.common import PodResources, SecretKeyRef
from tunerag_operator.api.rolloutpolicy import Canary, CanaryStep, Pause, Retrieval, Target
from tunerag_operator.render import inferenceservice as render
from tunerag_operator.render.inferenceservice import Desired, FeedbackBinding, RetrievalBinding, ServedAdapter, Serving
from tunerag_operator.rollout import steps
from tunerag_operator.rollout.stats import two_proportion_z

V1 = ServedAdapter("qa-v1", "pvc://artifacts/runs/ns-qa-1/adapter", "a" * 64)
V2 = ServedAdapter("qa-v2", "pvc://artifacts/runs/ns-qa-2/adapter", "b" * 64)


def _serving(mode: str = "Standard", runtime: str = "tunerag") -> Serving:
    target = Target.model_validate({
        "inferenceService": "qa", "deploymentMode": mode, "runtime": runtime, "baseModel": "pvc://models/tiny",
        "resources": {"gpus": 1, "memory": "8Gi", "nodeSelector": {"pool": "gpu"}},
    })
    return Serving(
        namespace="team-a", policy="qa", policy_uid="0b5d7b9e-0000-4000-8000-000000000001", service="qa",
        target=target, image="example.com/workloads:1",
        retrieval=RetrievalBinding("public", "docs", 4, "{context}\n{question}", 100, False),
        feedback=FeedbackBinding("public", "tunerag_feedback"), database=SecretKeyRef(name="pg", key="uri"),
    )


def _config(predictor: dict[str, Any]) -> dict[str, Any]:
    env = {e["name"]: e for e in predictor["containers"][0]["env"]}
    return json.loads(env["TUNERAG_SERVE_CONFIG"]["value"])  # type: ignore[no-any-return]


def test_standard_mode_serves_stable_as_predictor_and_candidate_as_canary() -> None:
    spec = render.service_spec(_serving(), "Standard", Desired(stable=V1, candidate=V2, weight=20))
    assert [a["name"] for a in _config(spec["predictor"])["adapters"]] == ["qa-v1"]
    assert spec["canary"][0]["trafficPercent"] == 20
    assert [a["name"] for a in _config(spec["canary"][0]["predictor"])["adapters"]] == ["qa-v2"]
    assert "canary" not in render.service_spec(_serving(), "Standard", Desired(stable=V2))


def test_knative_mode_splits_by_canary_traffic_percent_and_parks_a_rolled_back_candidate() -> None:
    s = _serving("Knative")
    spec = render.service_spec(s, "Knative", Desired(stable=V1, candidate=V2, weight=30))
    assert spec["predictor"]["canaryTrafficPercent"] == 30 and _config(spec["predictor"])["adapters"][0]["name"] == "qa-v2"
    assert "canaryTrafficPercent" not in render.service_spec(s, "Knative", Desired(stable=V2))["predictor"]
    parked = render.service_spec(s, "Knative", Desired(stable=V1, parked=V2))["predictor"]
    assert parked["canaryTrafficPercent"] == 0 and _config(parked)["adapters"][0]["name"] == "qa-v2"


def test_the_ab_tests_second_service_answers_to_the_first_ones_model_name() -> None:
    """Clients send `model: qa` through the A/B graph, which hands half of them to `qa-b`."""
    b = render.inference_service(_serving(), "Standard", Desired(stable=V2), name="qa-b")
    config = _config(b["spec"]["predictor"])
    assert (config["service"], config["aliases"]) == ("qa-b", ["qa"])
    assert _config(render.predictor(_serving(), "qa", V1))["aliases"] == []


def test_predictor_has_no_credentials_and_reads_the_database_uri_from_the_secret() -> None:
    p = render.predictor(_serving(), "qa", V1)
    container = p["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["TUNERAG_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "pg", "key": "uri"}}
    assert "value" not in env["TUNERAG_DATABASE_URL"]  # the URI itself never appears in the object
    assert p["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert sorted(v["persistentVolumeClaim"]["claimName"] for v in p["volumes"] if "persistentVolumeClaim" in v) == ["artifacts", "models"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_spec_patch_touches_only_predictor_and_canary() -> None:
    s = _serving()
    current = render.inference_service(s, "Standard", Desired(stable=V1, candidate=V2, weight=10))
    current["spec"]["transformer"] = {"containers": []}  # a user's field on an adopted service
    assert render.spec_patch(current, render.service_spec(s, "Standard", Desired(stable=V1, candidate=V2, weight=10))) == []
    ops = render.spec_patch(current, render.service_spec(s, "Standard", Desired(stable=V2)))
    assert {o["path"] for o in ops} == {"/spec/predictor", "/spec/canary"}
    assert next(o for o in ops if o["path"] == "/spec/canary")["op"] == "remove"


def test_step_shorthand_expands_to_weights_with_analysis() -> None:
    expanded = steps.expand(Canary(step_weight=30, max_weight=80))
    assert [(s.kind, s.weight) for s in expanded] == [
        ("setWeight", 30), ("analysis", 0), ("setWeight", 60), ("analysis", 0), ("setWeight", 80), ("analysis", 0)]
    explicit = steps.expand(Canary(steps=[CanaryStep(set_weight=10), CanaryStep(pause=Pause(duration="1m")),
                                          CanaryStep(pause=Pause()), CanaryStep(set_weight=100)]))
    assert [(s.kind, s.duration) for s in explicit][1:3] == [("pause", 60.0), ("pause", None)]


def test_two_proportion_z_test() -> None:
    # 90/100 vs 70/100: z = 3.54, p = 0.0004 (textbook values).
    z = two_proportion_z(70, 100, 90, 100)
    assert z.z == pytest.approx(3.5355, abs=1e-3)
    assert z.p_value == pytest.approx(0.000407, rel=0.01)
    same = two_proportion_z(50, 100, 50, 100)
    assert same.z == 0 and same.p_value == pytest.approx(1.0)


CASES = [
    ("Standard", "tunerag", Desired(stable=V1, candidate=V2, weight=20)),
    ("Standard", "vllm", Desired(stable=V1, candidate=V2, weight=20)),
    ("Knative", "tunerag", Desired(stable=V1, candidate=V2, weight=20)),
    ("Knative", "vllm", Desired(stable=V1, parked=V2)),
]


@pytest.mark.cluster
@pytest.mark.parametrize(("mode", "runtime", "desired"), CASES, ids=[f"{m}-{r}" for m, r, _ in CASES])
def test_kserve_schema_accepts_rendered_services(api: client.ApiClient, kserve_crds: None, namespace: str,
                                                 mode: str, runtime: str, desired: Desired) -> None:
    s = _serving(mode, runtime)
    s = Serving(**{**s.__dict__, "namespace": namespace})
    body = render.inference_service(s, mode, desired)
    body["metadata"].pop("ownerReferences")
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", namespace, "inferenceservices", body, dry_run="All")
    # Nothing we set was pruned as unknown by the structural schema.
    for key in ("predictor", "canary"):
        if key in body["spec"]:
            assert created["spec"][key] == body["spec"][key], key


@pytest.mark.cluster
def test_kserve_schema_accepts_the_ab_graph(api: client.ApiClient, kserve_crds: None, namespace: str) -> None:
    s = Serving(**{**_serving().__dict__, "namespace": namespace})
    body = render.ab_graph(s, "qa", "qa-b", 30)
    body["metadata"].pop("ownerReferences")
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        "serving.kserve.io", "v1alpha1", namespace, "inferencegraphs", body, dry_run="All")
    assert created["spec"] == body["spec"]


def test_resources_flow_into_the_predictor() -> None:
    assert render.predictor(_serving(), "qa", V1)["nodeSelector"] == {"pool": "gpu"}
    assert PodResources().gpus == 0


@pytest.mark.parametrize(("index", "probes"), [
    ({}, None),  # the store's defaults: HNSW
    ({"type": "hnsw", "probes": 7}, None),  # probes mean nothing to HNSW
    ({"type": "ivfflat"}, None),  # the server's own default, 10: the config as before
    ({"type": "ivfflat", "probes": 10}, None),
    ({"type": "ivfflat", "probes": 7}, 7),
])
def test_the_index_query_settings_reach_the_served_config(index: dict[str, Any], probes: int | None) -> None:
    """The VectorIndex's efSearch and (for IVFFlat) probes are what the model server queries
    with; serving always used probes 10 whatever the index said."""
    store = {"table": "docs", "connectionSecret": {"name": "db", "key": "uri"}, "index": {**index, "efSearch": 150}}
    retrieval = Retrieval.model_validate({"vectorIndex": {"name": "docs"}, "topK": 3})
    binding = RetrievalBinding.of(store, retrieval)
    config = render.serve_config(replace(_serving(), retrieval=binding), "qa", [V1])["retrieval"]
    assert (config["table"], config["topK"], config["efSearch"]) == ("docs", 3, 150)
    assert config.get("probes") == probes
    assert ("probes" in config) == (probes is not None)
