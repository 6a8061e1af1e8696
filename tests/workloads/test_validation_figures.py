"""The validation figures a FineTuneJob reports beside its gates, fast: perplexity from the loss
(capped, so a diverged run reports a number, not an overflow) and the improvement over the baseline
adapter that the minBaselineImprovement gate reads. The mutation check's gates target runs these
with the gate tests in test_finetune.py."""

from __future__ import annotations

import math

from tunerag_workloads.finetune.evaluate import gate_results, improvement, perplexity
from tunerag_workloads.finetune.spec import Gates


def test_perplexity_is_exp_of_the_loss_capped_at_exp_50() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(1.0) == math.e
    assert perplexity(50.0) == math.exp(50.0)
    assert perplexity(50.5) == perplexity(1e9) == math.exp(50.0)


def test_improvement_is_the_relative_loss_reduction_over_the_baseline() -> None:
    assert improvement(1.5, 2.0) == 0.25
    assert improvement(3.0, 2.0) == -0.5  # worse than the baseline: negative
    assert improvement(2.0, 2.0) == 0.0
    assert improvement(0.0, 4.0) == 1.0
    assert improvement(0.25, 0.5) == 0.5  # a baseline loss below 1 is a loss like any other
    # Not measurable: no figure, and the gate fails (test_finetune.py).
    for loss, base in ((None, 2.0), (1.0, None), (math.inf, 2.0), (1.0, math.inf), (1.0, math.nan), (1.0, 0.0)):
        assert improvement(loss, base) is None, (loss, base)


def test_a_gate_records_its_value_to_6_places() -> None:
    (gate,) = gate_results(Gates(maxValidationLoss=1.0), {"validationLoss": 0.123456789})
    assert gate == {"name": "maxValidationLoss", "value": 0.123457, "threshold": 1.0, "passed": True}
