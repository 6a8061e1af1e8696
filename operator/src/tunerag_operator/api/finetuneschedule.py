"""FineTuneSchedule: recurring training from production feedback, the CronJob of FineTuneJobs.

A FineTuneJob is one immutable run. A schedule stamps out runs from its template when its cron
schedule fires or when enough new feedback has arrived in a RolloutPolicy's exchange log; each run
first turns the feedback into a versioned dataset (a Job), then trains on it (a FineTuneJob).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from tunerag_operator import cron
from tunerag_operator.api.common import DNS_SUBDOMAIN, ApiModel, DurationAtLeast1m, DurationAtLeast1s, StatusBase
from tunerag_operator.api.finetunejob import FineTuneJobSpec

CRON_SHAPE = r"^(@[a-z]+|([0-9A-Za-z*?,/-]+ +){4}[0-9A-Za-z*?,/-]+)$"
# Columns of the exchange log (docs/serving.md) that may be dropped before rows reach a dataset.
# The answer is what the model learns and cannot be dropped; `prompt`/`question` can, unless it is
# the promptField.
DroppableField = Literal[
    "exchange_id", "created_at", "namespace", "service", "adapter_version", "endpoint", "question", "prompt",
    "chunk_ids", "chunk_documents", "latency_ms", "feedback_label", "feedback_comment", "feedback_at",
]
FeedbackLabel = Literal["positive", "negative"]
MAX_NAME = 44  # `<schedule>-<run number>` names a FineTuneJob, whose names stop at 52


def _positive() -> list[FeedbackLabel]:
    return ["positive"]


class FeedbackSelection(ApiModel):
    """Which exchanges of the log become training rows, and how they are mixed."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!(self.promptField in self.dropFields)", "message": "the promptField cannot be dropped",
         "fieldPath": ".dropFields"},
    ]})

    rollout_policy: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="RolloutPolicy (same namespace) whose exchange log feeds the schedule; its spec.feedback names the table, its connectionSecret (or its retrieval VectorIndex's) the database.")
    labels: list[FeedbackLabel] = Field(default_factory=_positive, min_length=1, max_length=2, description="Feedback labels whose exchanges become training rows (the answer as the completion).")
    max_age: DurationAtLeast1m | None = Field(default=None, description="Only exchanges younger than this, e.g. 720h; at least 1m. All when unset.")
    adapter_versions: list[Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]] = Field(default_factory=list, max_length=64, description="Only exchanges answered by these AdapterVersions; all when empty.")
    prompt_field: Literal["prompt", "question"] = Field(default="prompt", description="What becomes the training prompt: prompt (what the model saw, prompt template and retrieved context included, so training matches serving) or question (the user's text alone).")
    drop_fields: list[DroppableField] = Field(default_factory=list, max_length=16, description="Exchange-log columns removed before rows reach a dataset (privacy); the others are kept beside prompt and completion as provenance.")
    mix_ratio: float = Field(default=0.5, gt=0, le=1, description="Share of feedback rows in the training mix; the rest is sampled from the template's train data (1: feedback only).")
    holdout_fraction: float = Field(default=0.2, ge=0.05, le=0.5, description="Share of feedback rows held out for validation, chosen by a hash of the row's content, so a row stays on the same side in every run.")
    max_rows: int = Field(default=100_000, ge=2, le=10_000_000, description="Newest feedback rows read at most.")


class FineTuneTemplate(FineTuneJobSpec):
    """A FineTuneJob spec that each run copies; dataset.train is the original data mixed with the
    feedback. Unlike a FineTuneJob's, it may be edited: the next run uses the new template."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        # Not FineTuneJobSpec's rules: a template is edited (no `self == oldSelf`), and a run's
        # validation set is the held-out feedback (so validationSplit may be 0).
        {"rule": "!has(self.gates.baseline)", "message": "the schedule sets gates.baseline to the version now serving",
         "fieldPath": ".gates.baseline"},
        {"rule": "!has(self.dataset.train.fields.messages)",
         "message": "feedback is mixed as prompt/completion rows: the train data must use prompt and completion fields",
         "fieldPath": ".dataset.train.fields.messages"},
    ]})
    needs_validation_set: ClassVar[bool] = False


# The training mix of a run holds at most (maxRows - 1) / mixRatio rows (one feedback row at least
# is held out; round(n (1 - r) / r) original rows go with n feedback rows): fewer than the
# template's minRows and every run fails its data validation.
MIX_TOO_SMALL = ("feedback.maxRows is too small for template.dataset.rules.minRows: a run's training mix holds at most "
                 "(maxRows - 1) / mixRatio rows, so every run would fail its data validation")


class FineTuneScheduleSpec(ApiModel):
    """Recurring fine-tuning on production feedback."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.schedule) || has(self.minNewSamples)", "message": "set schedule, minNewSamples or both"},
        {"rule": "double(self.feedback.maxRows - 1) / self.feedback.mixRatio + 0.5 >= "
                 "double(self.template.dataset.rules.minRows)",
         "message": MIX_TOO_SMALL, "fieldPath": ".feedback.maxRows"},
    ]})

    schedule: str | None = Field(default=None, max_length=128, pattern=CRON_SHAPE, description="Cron schedule in UTC (minute hour day-of-month month day-of-week, or @hourly, @daily, @weekly, @monthly): start a run at these times.")
    min_new_samples: int | None = Field(default=None, ge=1, le=100_000_000, description="Start a run as soon as this many feedback rows arrived since the data of the last run.")
    check_interval: DurationAtLeast1s = Field(default="1m", description="How often the exchange log is counted for minNewSamples; at least 1s.")
    suspend: bool = Field(default=False, description="Start no new runs (a running one finishes).")
    feedback: FeedbackSelection = Field(description="The feedback source and how it becomes a dataset.")
    template: FineTuneTemplate = Field(description="The FineTuneJob each run creates. Its dataset.train is the original data, mixed with the feedback; a run's validation set is the held-out slice (dataset.validation here is not used) and its gates.baseline the version serving.")
    min_improvement: float = Field(default=0.01, ge=-1, lt=1, description="A run must lower the validation loss on the held-out feedback by at least this share relative to the version now serving (0.01: 1%; below 1, which would need a loss of zero); otherwise its AdapterVersion is Rejected and never rolled out.")
    history_limit: int = Field(default=5, ge=1, le=50, description="Finished runs kept (their FineTuneJobs and Jobs); older ones are deleted. Datasets and AdapterVersions are kept.")

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            cron.parse(value)  # also: one that never fires (`0 0 30 2 *`), which CEL cannot tell
        return value

    @model_validator(mode="after")
    def _mix_can_be_big_enough(self) -> Self:
        most = (self.feedback.max_rows - 1) / self.feedback.mix_ratio + 0.5
        if most < self.template.dataset.rules.min_rows:
            raise ValueError(MIX_TOO_SMALL)
        return self


class ActiveRun(ApiModel):
    """The run in progress."""

    run: str = Field(description="Name of the run: the FineTuneJob it creates.")
    number: int = Field(description="Sequence number of the run.")
    trigger: Literal["Schedule", "Threshold"] = Field(description="What started it.")
    stage: Literal["Dataset", "Training"] = Field(description="Building the dataset, or training.")
    started_at: str = Field(description="When it was triggered.")
    as_of: str = Field(description="Feedback up to this time is used (a retried dataset pod builds the same data).")
    dataset_job: str = Field(description="The Job that builds the dataset.")
    baseline: str | None = Field(default=None, description="The AdapterVersion serving when the run started: the one the candidate must beat.")
    fine_tune_job: str | None = Field(default=None, description="The FineTuneJob, once the dataset is built.")
    dataset_digest: str | None = Field(default=None, description="Content digest of the dataset.")
    rows: dict[str, int] = Field(default_factory=dict, description="Rows of the dataset: feedback, original, validation.")


class RunRecord(ApiModel):
    """A finished run."""

    run: str = Field(description="Name of the run.")
    trigger: str = Field(default="", description="What started it.")
    outcome: Literal["Succeeded", "Rejected", "Failed", "Skipped"] = Field(description="Succeeded (a Validated version), Rejected (gates failed), Failed, or Skipped (nothing new to train on).")
    adapter_version: str | None = Field(default=None, description="The AdapterVersion it registered.")
    dataset_digest: str | None = Field(default=None, description="Content digest of its dataset.")
    time: str = Field(description="When it ended.")
    reason: str = Field(default="", max_length=1024, description="Why it ended so.")


class FineTuneScheduleStatus(StatusBase):
    """Observed state of a FineTuneSchedule."""

    phase: Literal["Pending", "Idle", "BuildingDataset", "Training", "Suspended", "Failed"] | None = Field(default=None, description="Summary of the schedule's state.")
    last_schedule_time: str | None = Field(default=None, description="The cron time of the last run started by the schedule.")
    next_schedule_time: str | None = Field(default=None, description="When the cron schedule fires next.")
    last_check_time: str | None = Field(default=None, description="When the exchange log was last counted.")
    new_samples: int | None = Field(default=None, description="Feedback rows that arrived after the watermark, at the last count.")
    watermark: str | None = Field(default=None, description="Feedback time of the newest row the last dataset used; newer rows count as new.")
    runs: int = Field(default=0, description="Runs started so far (the number of the last one).")
    consecutive_failures: int = Field(default=0, description="Failed runs in a row; the threshold trigger backs off after failures.")
    active: ActiveRun | None = Field(default=None, description="The run in progress; at most one.")
    history: list[RunRecord] = Field(default_factory=list, max_length=50, description="Finished runs, oldest first (historyLimit of them).")
    message: str | None = Field(default=None, description="What the schedule is doing or waiting for.")
