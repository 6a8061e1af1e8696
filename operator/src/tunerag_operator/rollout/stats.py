"""The A/B test's statistics: a two-proportion z-test."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ZTest:
    z: float
    p_value: float
    rate_a: float
    rate_b: float


def two_proportion_z(successes_a: int, n_a: int, successes_b: int, n_b: int) -> ZTest:
    """z for (rate_b - rate_a) with the pooled standard error, and its two-sided p-value."""
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both arms need samples")
    pa, pb = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return ZTest(0.0, 1.0, pa, pb)
    z = (pb - pa) / se
    return ZTest(z, math.erfc(abs(z) / math.sqrt(2)), pa, pb)
