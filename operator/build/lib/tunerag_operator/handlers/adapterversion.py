"""AdapterVersion reconcile."""

from __future__ import annotations

from tunerag_operator import references
from tunerag_operator.api.adapterversion import AdapterVersionSpec
from tunerag_operator.api.kinds import ADAPTERVERSION
from tunerag_operator.handlers.base import register
from tunerag_operator.references import Problem


def check(spec: AdapterVersionSpec, namespace: str) -> list[Problem]:
    problems = references.uri(namespace, spec.artifact.uri, "spec.artifact.uri")
    if spec.quantized is not None:
        problems += references.uri(namespace, spec.quantized.uri, "spec.quantized.uri")
    return problems


register(ADAPTERVERSION, check, initial_phase="Pending")
