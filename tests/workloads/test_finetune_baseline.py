"""The baseline gate (gates.baseline): the candidate's validation loss is compared with another
adapter's on the same rows; a candidate that does not improve enough is Rejected. Real training of
the tiny model on CPU, a few steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from e2e.serving_kit import make_adapter
from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.finetune import run_pipeline
from tunerag_workloads.finetune.evaluate import gate_results, improvement
from tunerag_workloads.finetune.spec import Gates
from workloads import finetune_fixtures as ff

QUICK = {"training": {"learningRate": 5e-3, "maxSteps": 20}, "gates": {"minExactMatch": None}}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(tmp_path: Path, baseline: dict[str, Any]) -> dict[str, Any]:
    spec = ff.base_spec(ff.cached_model(), tmp_path / "data", tmp_path / "out",
                        **ff.deep_merge(QUICK, {"gates": {"baseline": baseline}}))
    spec["dataset"].pop("retention")
    spec["gates"].pop("minExactMatch")
    return spec


def test_a_candidate_that_beats_the_baseline_passes_one_that_does_not_is_rejected(tmp_path: Path) -> None:
    # A random adapter knows nothing of the task: 20 steps of training beat it by far.
    weak = tmp_path / "weak"
    sha = make_adapter(weak, seed=1)
    result = run_pipeline({"name": "c1", "spec": _spec(tmp_path / "a", {"adapterVersion": "qa-v1", "uri": f"file://{weak}",
                                                                         "sha256": sha, "minImprovement": 0.1})})
    m = result["metrics"]
    assert m["baselineValidationLoss"] > m["validationLoss"]
    assert m["baselineImprovement"] == pytest.approx((m["baselineValidationLoss"] - m["validationLoss"]) / m["baselineValidationLoss"], rel=1e-4)
    gate = next(g for g in result["gates"] if g["name"] == "minBaselineImprovement")
    assert gate["passed"] and gate["threshold"] == 0.1 and result["verdict"] == "Validated"

    # The candidate itself as the baseline (the same recipe trains the same adapter): no improvement.
    strong = Path(result["adapter"]["uri"].removeprefix("file://"))
    again = run_pipeline({"name": "c2", "spec": _spec(tmp_path / "b", {"uri": f"file://{strong}",
                                                                       "sha256": result["adapter"]["sha256"]})})
    gate = next(g for g in again["gates"] if g["name"] == "minBaselineImprovement")
    assert abs(gate["value"]) < 1e-3 and gate["threshold"] == 0.01 and not gate["passed"]
    assert again["verdict"] == "Rejected"
    # The published candidate holds its own adapter only, not the baseline's.
    from safetensors.torch import load_file

    published = Path(again["adapter"]["uri"].removeprefix("file://"))
    assert not any("baseline" in k for k in load_file(published / "adapter_model.safetensors"))


def test_a_changed_baseline_fails_before_training(tmp_path: Path) -> None:
    weak = tmp_path / "weak"
    make_adapter(weak, seed=1)
    with pytest.raises(WorkloadError) as info:
        run_pipeline({"spec": _spec(tmp_path, {"uri": f"file://{weak}", "sha256": "0" * 64})})
    assert info.value.reason == "BaselineChecksumMismatch"
    with pytest.raises(WorkloadError) as info:
        run_pipeline({"spec": _spec(tmp_path, {"uri": f"file://{tmp_path}/missing", "sha256": "0" * 64})})
    assert info.value.reason == "BaselineNotFound"
    assert not (tmp_path / "out" / "runs" / "local" / "checkpoints").exists()


def test_the_gate_and_its_unmeasurable_case() -> None:
    gates = Gates.model_validate({"baseline": {"uri": "file:///a", "sha256": "a" * 64, "minImprovement": 0.05}})
    assert gate_results(gates, {"baselineImprovement": 0.2}) == [
        {"name": "minBaselineImprovement", "value": 0.2, "threshold": 0.05, "passed": True}]
    assert gate_results(gates, {"baselineImprovement": 0.01})[0]["passed"] is False
    assert gate_results(gates, {})[0] == {"name": "minBaselineImprovement", "value": None, "threshold": 0.05, "passed": False}
    assert improvement(1.0, 2.0) == 0.5 and improvement(3.0, 2.0) == -0.5
    assert improvement(float("nan"), 2.0) is None and improvement(1.0, 0.0) is None
