"""What a run creates, as plain dicts: the dataset Job's WorkloadRun and the child FineTuneJob.

Both are named by the run's number (`<schedule>-<n>-data`, `<schedule>-<n>`), so creating them
again after a restart finds the existing ones instead of starting a second run.
"""

from __future__ import annotations

from typing import Any

from tunerag_operator import durations, references
from tunerag_operator.api.common import API_VERSION, GROUP, PodResources
from tunerag_operator.api.finetuneschedule import ActiveRun, FineTuneScheduleSpec
from tunerag_operator.render.workload import MANAGED_BY, Owner, WorkloadRun, owner_reference
from tunerag_operator.schedule.source import Source

SCHEDULE_LABEL = f"{GROUP}/schedule"
RUN_LABEL = f"{GROUP}/schedule-run"
DATASET_ANNOTATION = f"{GROUP}/dataset"
TRIGGER_ANNOTATION = f"{GROUP}/trigger"


def dataset_prefix(owner: Owner) -> str:
    return f"datasets/{owner.namespace}-{owner.name}"


def dataset_request(spec: FineTuneScheduleSpec, source: Source, active: ActiveRun, owner: Owner) -> dict[str, Any]:
    """The feedback_dataset workload's spec (tunerag_workloads.feedback_dataset.build.Request)."""
    sel, tmpl = spec.feedback, spec.template
    return {
        "table": {"schema": source.schema, "table": source.table},
        "namespace": owner.namespace, "services": list(source.services),
        "labels": list(sel.labels), "adapterVersions": list(sel.adapter_versions),
        "maxAgeSeconds": durations.seconds(sel.max_age) if sel.max_age else None,
        "asOf": active.as_of, "promptField": sel.prompt_field, "dropFields": list(sel.drop_fields),
        "mixRatio": sel.mix_ratio, "holdoutFraction": sel.holdout_fraction, "maxRows": sel.max_rows,
        "seed": tmpl.training.seed, "baselineVersion": active.baseline,
        "original": tmpl.dataset.train.model_dump(mode="json", by_alias=True, exclude_none=True),
        "output": {"uri": tmpl.output.uri, "prefix": dataset_prefix(owner)},
    }


def dataset_run(spec: FineTuneScheduleSpec, source: Source, active: ActiveRun, owner: Owner, image: str) -> WorkloadRun:
    tmpl = spec.template
    return WorkloadRun(
        owner=owner, component="feedback-dataset", module="tunerag_workloads.feedback_dataset",
        spec=dataset_request(spec, source, active, owner), image=tmpl.resources.image or image,
        resources=PodResources(), claims=references.claims_of(tmpl.dataset.train.uri, tmpl.output.uri),
        env=({"name": "TUNERAG_DB_URI", "valueFrom": {"secretKeyRef": {"name": source.secret.name, "key": source.secret.key}}},),
        env_from_secret=tmpl.output.credentials_secret, backoff_limit=2, suffix=f"{active.number}-data",
    )


def fine_tune_job(spec: FineTuneScheduleSpec, active: ActiveRun, result: dict[str, Any], owner: Owner,
                  baseline: dict[str, Any] | None) -> dict[str, Any]:
    """The run's FineTuneJob: the template, trained on the dataset, gated on the baseline (the
    version serving when the run started: its AdapterVersion object, or None)."""
    body = spec.template.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["dataset"]["train"] = {"uri": result["trainUri"], "format": "jsonl"}
    body["dataset"]["validation"] = {"uri": result["validationUri"], "format": "jsonl"}
    if baseline is not None:
        artifact = baseline["spec"]["artifact"]
        body["gates"]["baseline"] = {"adapterVersion": baseline["metadata"]["name"], "uri": artifact["uri"],
                                     "sha256": artifact["sha256"], "minImprovement": spec.min_improvement}
    return {
        "apiVersion": API_VERSION, "kind": "FineTuneJob",
        "metadata": {
            "name": active.run, "namespace": owner.namespace,
            "labels": {**MANAGED_BY, SCHEDULE_LABEL: owner.name, RUN_LABEL: str(active.number)},
            "annotations": {DATASET_ANNOTATION: str(result.get("uri", "")), TRIGGER_ANNOTATION: active.trigger},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": body,
    }
