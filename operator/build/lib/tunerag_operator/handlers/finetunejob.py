"""FineTuneJob reconcile."""

from __future__ import annotations

from tunerag_operator import references
from tunerag_operator.api.finetunejob import FineTuneJobSpec
from tunerag_operator.api.kinds import FINETUNEJOB
from tunerag_operator.handlers.base import register
from tunerag_operator.references import Problem


def check(spec: FineTuneJobSpec, namespace: str) -> list[Problem]:
    problems = references.uri(namespace, spec.base_model.uri, "spec.baseModel.uri")
    ds = spec.dataset
    for name, source in (("train", ds.train), ("validation", ds.validation), ("retention", ds.retention)):
        if source is not None:
            problems += references.uri(namespace, source.uri, f"spec.dataset.{name}.uri")
    problems += references.uri(namespace, spec.output.uri, "spec.output.uri")
    if spec.output.credentials_secret:
        problems += references.secret(namespace, spec.output.credentials_secret, "spec.output.credentialsSecret")
    return problems


register(FINETUNEJOB, check, initial_phase="Pending")
