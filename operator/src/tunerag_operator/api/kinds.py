"""The resource kinds: names, models and printer columns, in one table."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunerag_operator.api.adapterversion import AdapterVersionSpec, AdapterVersionStatus
from tunerag_operator.api.common import ApiModel
from tunerag_operator.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from tunerag_operator.api.finetuneschedule import MAX_NAME, FineTuneScheduleSpec, FineTuneScheduleStatus
from tunerag_operator.api.rolloutpolicy import RolloutPolicySpec, RolloutPolicyStatus
from tunerag_operator.api.vectorindex import VectorIndexSpec, VectorIndexStatus

CATEGORY = "tunerag"


@dataclass(frozen=True)
class Column:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[ApiModel]
    status: type[ApiModel]
    description: str
    columns: tuple[Column, ...] = field(default_factory=tuple)
    max_name: int = 52  # child Jobs, ConfigMaps and Services append a suffix and must stay within 63
    # CEL rules on the whole object (the only place that sees metadata.name with the spec).
    root_rules: tuple[dict[str, str], ...] = ()

    @property
    def singular(self) -> str:
        return self.kind.lower()


PHASE = Column("Phase", ".status.phase", description="Summary of the state.")
AGE = Column("Age", ".metadata.creationTimestamp", "date")

FINETUNEJOB = Kind(
    "FineTuneJob", "finetunejobs", ("ftj",), FineTuneJobSpec, FineTuneJobStatus,
    "A LoRA / QLoRA fine-tuning pipeline run as a batch Job.",
    (
        PHASE,
        Column("Family", ".spec.adapter.family"),
        Column("Method", ".spec.method.type"),
        Column("Step", ".status.progress.step", "integer"),
        Column("Loss", ".status.progress.loss", "number"),
        Column("Adapter", ".status.adapterVersion"),
        AGE,
        Column("Base", ".spec.baseModel.uri", priority=1),
    ),
)
ADAPTERVERSION = Kind(
    "AdapterVersion", "adapterversions", ("av",), AdapterVersionSpec, AdapterVersionStatus,
    "An immutable registry entry for one fine-tuned adapter with its lineage and metrics.",
    (
        Column("Family", ".spec.family"),
        Column("Version", ".spec.version", "integer"),
        PHASE,
        Column("Base", ".spec.baseModel.uri"),
        AGE,
        Column("Job", ".spec.lineage.fineTuneJob", priority=1),
        Column("SHA256", ".spec.artifact.sha256", priority=1),
    ),
)
VECTORINDEX = Kind(
    "VectorIndex", "vectorindexes", ("vidx",), VectorIndexSpec, VectorIndexStatus,
    "An incremental indexing pipeline: documents chunked, embedded and upserted into pgvector.",
    (
        PHASE,
        Column("Documents", ".status.documents", "integer"),
        Column("Chunks", ".status.chunks", "integer"),
        Column("Model", ".status.embeddingModel"),
        Column("Last-Indexed", ".status.lastIndexedTime", "date"),
        AGE,
        Column("Table", ".status.tableVersion", priority=1),
    ),
    root_rules=({
        "rule": "!has(self.spec.parallelism) || self.spec.parallelism <= 1 || !self.metadata.name.contains('.')",
        "message": "with spec.parallelism > 1, metadata.name must not contain dots: the shards' pods are named "
                   "<name>-g<generation>-<index>, which must be a DNS label",
        "fieldPath": ".spec.parallelism",
    },),
)
ROLLOUTPOLICY = Kind(
    "RolloutPolicy", "rolloutpolicies", ("rp",), RolloutPolicySpec, RolloutPolicyStatus,
    "Progressive delivery of adapter versions on KServe: canary steps or A/B tests with metric analysis.",
    (
        PHASE,
        Column("Stable", ".status.stable"),
        Column("Candidate", ".status.candidate"),
        Column("Weight", ".status.canaryWeight", "integer"),
        Column("Step", ".status.currentStep", "integer"),
        AGE,
        Column("Service", ".spec.target.inferenceService", priority=1),
    ),
)

FINETUNESCHEDULE = Kind(
    "FineTuneSchedule", "finetuneschedules", ("fts",), FineTuneScheduleSpec, FineTuneScheduleStatus,
    "Recurring fine-tuning on production feedback: runs FineTuneJobs on a cron schedule or a feedback threshold.",
    (
        PHASE,
        Column("Schedule", ".spec.schedule"),
        Column("Threshold", ".spec.minNewSamples", "integer"),
        Column("New-Samples", ".status.newSamples", "integer"),
        Column("Active", ".status.active.run"),
        Column("Runs", ".status.runs", "integer"),
        AGE,
        Column("Last-Schedule", ".status.lastScheduleTime", "date", priority=1),
        Column("Policy", ".spec.feedback.rolloutPolicy", priority=1),
    ),
    max_name=MAX_NAME,
)

ALL_KINDS: tuple[Kind, ...] = (FINETUNEJOB, ADAPTERVERSION, VECTORINDEX, ROLLOUTPOLICY, FINETUNESCHEDULE)
