"""A canary strategy as a flat list of steps (the stepWeight/maxWeight shorthand expanded)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tunerag_operator import durations
from tunerag_operator.api.rolloutpolicy import Canary


@dataclass(frozen=True)
class Step:
    kind: Literal["setWeight", "pause", "analysis"]
    weight: int = 0
    duration: float | None = None  # pause: seconds; None waits for a resume
    metrics: tuple[str, ...] = ()  # analysis: metric names; empty runs them all

    def describe(self) -> str:
        if self.kind == "setWeight":
            return f"setWeight {self.weight}"
        if self.kind == "pause":
            return "pause until resumed" if self.duration is None else f"pause {self.duration:g}s"
        return "analysis" + (f" ({', '.join(self.metrics)})" if self.metrics else "")


def expand(canary: Canary) -> list[Step]:
    """`steps` as written, or `stepWeight` up to `maxWeight`, each weight followed by an analysis;
    promotion (to 100%) follows the last step either way."""
    if canary.steps:
        out = []
        for s in canary.steps:
            if s.set_weight is not None:
                out.append(Step("setWeight", weight=s.set_weight))
            elif s.pause is not None:
                out.append(Step("pause", duration=durations.seconds(s.pause.duration) if s.pause.duration else None))
            elif s.analysis is not None:
                out.append(Step("analysis", metrics=tuple(s.analysis.metrics)))
        return out
    step = canary.step_weight or canary.max_weight
    weights = [*range(step, canary.max_weight, step), canary.max_weight]
    return [s for w in weights for s in (Step("setWeight", weight=w), Step("analysis"))]


def unmeasured_analysis(steps: list[Step], defined: list[str]) -> str | None:
    """Why a canary of these steps could never pass, or None: an analysis step with nothing to
    measure. Written steps that do so are refused at admission; the stepWeight shorthand (and the
    default strategy, stepWeight 20) puts an analysis after each weight, and a policy with no
    metrics would give its candidate traffic and wait at the first analysis for good."""
    for i, step in enumerate(steps):
        if step.kind == "analysis" and not (set(step.metrics or defined) & set(defined)):
            return (f"step {i + 1} ({step.describe()}) has no metric to measure: the policy defines none "
                    "(spec.analysis.metrics); the stepWeight shorthand, and the default strategy, analyse after "
                    "each weight")
    return None


def last_weight(steps: list[Step], upto: int) -> int:
    """The candidate's weight once steps [0, upto) have run."""
    weight = 0
    for s in steps[:upto]:
        if s.kind == "setWeight":
            weight = s.weight
    return weight
