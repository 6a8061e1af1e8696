"""AdapterVersion reconcile: the registry entry's phase from its gates and references."""

from __future__ import annotations

from typing import Any

import kopf

from tunerag_operator import references
from tunerag_operator.api.adapterversion import AdapterVersionSpec
from tunerag_operator.api.kinds import ADAPTERVERSION
from tunerag_operator.config import OperatorConfig
from tunerag_operator.handlers.base import register
from tunerag_operator.references import Problem

SERVING_PHASES = ("Canary", "Serving", "Retired")


def check(spec: AdapterVersionSpec, namespace: str) -> list[Problem]:
    problems = references.uri(namespace, spec.artifact.uri, "spec.artifact.uri")
    if spec.quantized is not None:
        problems += references.uri(namespace, spec.quantized.uri, "spec.quantized.uri")
    return problems


def decide(spec: AdapterVersionSpec, body: kopf.Body, config: OperatorConfig) -> dict[str, Any]:
    """Validated when every recorded gate passed, Rejected when one failed. A version registered
    by hand without gate results stays Pending until its artifact is verified. Phases set by a
    rollout (Canary, Serving, Retired) are left alone."""
    if body.status.get("phase") in SERVING_PHASES:
        return {}
    failed = [g for g in spec.gates if not g.passed]
    if failed:
        detail = "; ".join(f"{g.name} {g.value:.4g} vs {g.threshold:.4g}" for g in failed)
        return {"phase": "Rejected", "ready": ("False", "GateFailed", f"Failed gates: {detail}. Never served.")}
    if spec.gates:
        return {"phase": "Validated", "ready": ("True", "Ready", f"All {len(spec.gates)} gates passed.")}
    return {}


register(ADAPTERVERSION, check, initial_phase="Pending", act=decide)
