"""VectorIndex reconcile."""

from __future__ import annotations

from tunerag_operator import references
from tunerag_operator.api.kinds import VECTORINDEX
from tunerag_operator.api.vectorindex import VectorIndexSpec
from tunerag_operator.handlers.base import register
from tunerag_operator.references import Problem


def check(spec: VectorIndexSpec, namespace: str) -> list[Problem]:
    ref = spec.store.connection_secret
    problems = references.secret_key(namespace, ref.name, ref.key, "spec.store.connectionSecret")
    if spec.source.config_map is not None:
        problems += references.configmap(namespace, spec.source.config_map.name, "spec.source.configMap")
    if spec.source.uri is not None:
        problems += references.uri(namespace, spec.source.uri, "spec.source.uri")
    return problems


register(VECTORINDEX, check, initial_phase="Pending")
