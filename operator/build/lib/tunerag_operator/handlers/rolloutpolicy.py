"""RolloutPolicy reconcile."""

from __future__ import annotations

from tunerag_operator import references
from tunerag_operator.api.kinds import ROLLOUTPOLICY, VECTORINDEX
from tunerag_operator.api.rolloutpolicy import RolloutPolicySpec
from tunerag_operator.handlers.base import register
from tunerag_operator.references import Problem


def check(spec: RolloutPolicySpec, namespace: str) -> list[Problem]:
    problems = references.uri(namespace, spec.target.base_model, "spec.target.baseModel")
    if spec.retrieval is not None:
        problems += references.custom(namespace, VECTORINDEX.plural, VECTORINDEX.kind,
                                      spec.retrieval.vector_index.name, "spec.retrieval.vectorIndex")
    return problems


register(ROLLOUTPOLICY, check, initial_phase="Idle")
