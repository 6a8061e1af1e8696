"""A FineTuneJob's merged, quantized model (spec.output.quantize) as the operator handles it: registered
on the AdapterVersion from the workload's result, its size ratio in the status, and served instead of
the adapter by a RolloutPolicy with spec.target.artifact quantized. Pure functions, no cluster; the
whole path runs end to end in tests/e2e/test_finetune_pipeline.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from tunerag_operator.api.adapterversion import AdapterVersionSpec
from tunerag_operator.api.rolloutpolicy import RolloutPolicySpec, Target
from tunerag_operator.handlers.adapterversion import quantized_status
from tunerag_operator.handlers.finetunejob import adapter_spec
from tunerag_operator.render import inferenceservice as render
from tunerag_operator.render.inferenceservice import Desired, Serving
from tunerag_operator.rollout.candidates import Blocked, select, version_of, versions

FTJ_SPEC = {"baseModel": {"uri": "pvc://models/tiny"}, "dataset": {"train": {"uri": "pvc://data/train.jsonl"}}}
RESULT = {  # a Validated run's result with output.quantize nf4, as tunerag_workloads.finetune returns it
    "verdict": "Validated", "metrics": {"validationLoss": 0.5},
    "gates": [{"name": "maxRetentionRegression", "value": 0.01, "threshold": 0.05, "passed": True}],
    "adapter": {"uri": "pvc://artifacts/runs/ns-qa-1/adapter", "sha256": "a" * 64, "sizeBytes": 4096, "format": "peft-lora"},
    "quantized": {"uri": "pvc://artifacts/runs/ns-qa-1/quantized", "format": "nf4", "sha256": "c" * 64, "sizeBytes": 700,
                  "fp16SizeBytes": 1000, "ratio": 1.429, "relativeLossDelta": 0.02, "argmaxAgreement": 0.97,
                  "withinTolerance": True},
}


def _av(name: str, version: int, spec: dict[str, Any], phase: str = "Validated") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {**spec, "family": "qa", "version": version}, "status": {"phase": phase}}


def _policy(artifact: str) -> RolloutPolicySpec:
    return RolloutPolicySpec.model_validate({
        "target": {"inferenceService": "qa", "baseModel": "pvc://models/tiny", "artifact": artifact},
        "adapterSelector": {"family": "qa"}, "strategy": {"type": "canary", "canary": {"steps": [{"setWeight": 100}]}},
    })


def test_the_run_registers_its_quantized_model_with_its_figures() -> None:
    spec = adapter_spec(FTJ_SPEC, "qa-1", RESULT)
    assert spec["quantized"] == {
        "uri": "pvc://artifacts/runs/ns-qa-1/quantized", "sha256": "c" * 64, "sizeBytes": 700, "format": "merged-nf4",
        "referenceSizeBytes": 1000, "relativeLossDelta": 0.02, "argmaxAgreement": 0.97, "withinTolerance": True,
    }
    assert spec["metrics"] == {"validationLoss": 0.5, "quantizedRelativeLossDelta": 0.02, "quantizedArgmaxAgreement": 0.97}
    parsed = AdapterVersionSpec.model_validate({**spec, "family": "qa", "version": 1})  # what the CRD's model accepts
    assert quantized_status(parsed) == {"quantized": {"sizeRatio": 0.7}}
    # Verified by hand-registration's Job: the measured size, and the digest.
    assert quantized_status(parsed, {"sha256": "c" * 64, "sizeBytes": 800}) == {
        "quantized": {"sizeRatio": 0.8, "verifiedSha256": "c" * 64}}
    # No quantize (or a Rejected run, which the workload does not quantize): nothing registered.
    bare = adapter_spec(FTJ_SPEC, "qa-1", {k: v for k, v in RESULT.items() if k != "quantized"})
    assert "quantized" not in bare and "quantizedArgmaxAgreement" not in bare["metrics"]
    assert quantized_status(AdapterVersionSpec.model_validate({**bare, "family": "qa", "version": 1})) == {}


def test_a_policy_serving_quantized_models_picks_versions_that_have_one() -> None:
    with_q = adapter_spec(FTJ_SPEC, "qa-1", RESULT)
    without = {k: v for k, v in with_q.items() if k != "quantized"}
    off = {**with_q, "quantized": {**with_q["quantized"], "withinTolerance": False}}
    family = versions([version_of(_av("qa-v1", 1, with_q)), version_of(_av("qa-v2", 2, without)),
                       version_of(_av("qa-v3", 3, off))])
    quantized, adapter = _policy("quantized"), _policy("adapter")

    assert select(adapter, family, None, []).name == "qa-v3"  # type: ignore[union-attr]
    assert select(quantized, family, None, []).name == "qa-v1"  # type: ignore[union-attr]
    # Serving v1: the newer versions have no servable quantized model; the newest says why.
    with pytest.raises(Blocked) as info:
        select(quantized, family, "qa-v1", [])
    assert info.value.reason == "NoQuantizedModel" and "qa-v3" in info.value.message
    pinned = RolloutPolicySpec.model_validate({**quantized.model_dump(by_alias=True, exclude_none=True),
                                               "adapterSelector": {"family": "qa", "version": 2}})
    with pytest.raises(Blocked, match="qa-v2 has no quantized model"):
        select(pinned, family, "qa-v1", [])


def test_the_predictor_loads_the_merged_model_instead_of_the_adapter() -> None:
    v1 = version_of(_av("qa-v1", 1, adapter_spec(FTJ_SPEC, "qa-1", RESULT)))
    serving = Serving(namespace="ns", policy="qa", policy_uid="uid", service="qa", target=_policy("quantized").target,
                      image="example.com/workloads:1")
    spec = render.service_spec(serving, "Standard", Desired(stable=v1.served("quantized")))
    env = {e["name"]: e for e in spec["predictor"]["containers"][0]["env"]}
    config = json.loads(env["TUNERAG_SERVE_CONFIG"]["value"])
    assert config["adapters"] == [{"name": "qa-v1", "uri": "pvc://artifacts/runs/ns-qa-1/quantized", "sha256": "c" * 64,
                                   "format": "merged-nf4"}]
    # Serving the adapter renders what it always did (no `format`): upgrading the operator makes no new revision.
    assert render.serve_config(serving, "qa", [v1.served()])["adapters"] == [
        {"name": "qa-v1", "uri": "pvc://artifacts/runs/ns-qa-1/adapter", "sha256": "a" * 64}]


@pytest.mark.parametrize(("extra", "field"), [({"runtime": "vllm"}, "artifact"), ({"loadIn4Bit": True}, "loadIn4Bit")])
def test_quantized_is_for_the_tunerag_runtime_without_4bit_loading(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Target.model_validate({"inferenceService": "qa", "baseModel": "pvc://models/tiny", "artifact": "quantized", **extra})
