"""FineTuneJob: a LoRA / QLoRA training pipeline run as a batch Job."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from tunerag_operator.api.common import DNS_LABEL, DNS_SUBDOMAIN, ApiModel, PodResources, StatusBase, Uri

# A module name as peft matches it against the model's named_modules(): a leaf name (q_proj) or a
# dotted suffix of one (layers.0.q_proj), each part a Python identifier or a ModuleList index.
MODULE_NAME = r"^([A-Za-z_][A-Za-z0-9_]*|[0-9]+)([.]([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$"
ModuleName = Annotated[str, Field(pattern=MODULE_NAME, max_length=256)]
# A dataset column: any name, but not none.
ColumnName = Annotated[str, Field(min_length=1, max_length=128)]


class BaseModelRef(ApiModel):
    """The pretrained model the adapter is trained on."""

    uri: Uri
    revision: str | None = Field(default=None, max_length=128, description="Revision (branch, tag or commit) of the base model.")


class AdapterTarget(ApiModel):
    """Where the result is registered."""

    family: str = Field(pattern=DNS_LABEL, max_length=48, description="Adapter family the result is registered under as the next AdapterVersion.")


SAME_FIELD = "prompt and completion must be different fields: the model would learn to repeat its prompt"


class FieldMapping(ApiModel):
    """Which dataset fields hold the example; either prompt/completion or chat messages."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.messages) || self.prompt != self.completion", "message": SAME_FIELD, "fieldPath": ".completion"},
    ]})

    prompt: ColumnName = Field(default="prompt", description="Field with the prompt text.")
    completion: ColumnName = Field(default="completion", description="Field with the completion text the model learns to produce.")
    messages: ColumnName | None = Field(default=None, description="Field with a list of chat messages; when set, the tokenizer's chat template is applied and prompt/completion are ignored.")

    @model_validator(mode="after")
    def _two_fields(self) -> Self:
        if self.messages is None and self.prompt == self.completion:
            raise ValueError(f"completion: {SAME_FIELD}")
        return self


class DatasetSource(ApiModel):
    """One dataset file or prefix."""

    uri: Uri
    format: Literal["jsonl", "csv", "parquet"] = Field(default="jsonl", description="File format.")
    fields: FieldMapping = Field(default_factory=FieldMapping, description="Field mapping.")


class ValidationRules(ApiModel):
    """Data validation rules applied before training."""

    min_rows: int = Field(default=8, ge=1, description="Fewest rows that must remain after cleaning; fewer fails the job.")
    max_tokens: int = Field(default=1024, ge=8, le=131072, description="Rows longer than this many tokens are dropped and counted.")
    drop_empty: bool = Field(default=True, description="Drop rows whose prompt or completion is empty.")
    dedupe: bool = Field(default=True, description="Drop exact duplicate rows.")


class Dataset(ApiModel):
    """Training, validation and retention data."""

    train: DatasetSource = Field(description="Training data.")
    validation: DatasetSource | None = Field(default=None, description="Validation data; when absent, validationSplit of train is held out.")
    validation_split: float = Field(default=0.1, ge=0.0, le=0.5, description="Share of train held out for validation when no validation set is given (then above 0).")
    retention: DatasetSource | None = Field(default=None, description="General-capability reference data for the forgetting check.")
    rules: ValidationRules = Field(default_factory=ValidationRules, description="Validation rules.")


class LoraSettings(ApiModel):
    """LoRA hyper-parameters."""

    r: int = Field(default=16, ge=1, le=512, description="Rank of the update matrices.")
    alpha: int = Field(default=32, ge=1, le=4096, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, le=0.9, description="Dropout on the LoRA input.")
    target_modules: list[ModuleName] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1, max_length=64, description="Module names to adapt, as peft matches them: a module's name (q_proj) or a dotted suffix of its path (layers.0.q_proj); an unknown name fails the run with the list of valid names.")


class QuantizationSettings(ApiModel):
    """4-bit loading of the base model for QLoRA (bitsandbytes)."""

    bits: Literal[4] = Field(default=4, description="Bits per weight of the frozen base (QLoRA uses 4).")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(default="bfloat16", description="dtype of the matmuls.")


class Method(ApiModel):
    """The fine-tuning method."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.type != 'qlora' || has(self.quantization)",
         "message": "qlora requires quantization (4-bit settings)", "fieldPath": ".quantization"},
        {"rule": "self.type == 'qlora' || !has(self.quantization)",
         "message": "quantization applies only to type qlora", "fieldPath": ".quantization"},
    ]})

    type: Literal["lora", "qlora"] = Field(default="lora", description="lora, or qlora (4-bit base).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA hyper-parameters.")
    quantization: QuantizationSettings | None = Field(default=None, description="4-bit settings; required for qlora.")


class Training(ApiModel):
    """Optimisation settings."""

    epochs: float | None = Field(default=None, gt=0, le=100, description="Passes over the training data; ignored when maxSteps is set.")
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000, description="Optimizer steps to run.")
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate.")
    scheduler: Literal["cosine", "linear", "constant"] = Field(default="cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(default=0.03, ge=0, le=0.5, description="Share of steps spent warming up.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Sequences per device per micro-batch.")
    gradient_accumulation: int = Field(default=1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(default=1024, ge=16, le=131072, description="Longest packed sequence in tokens.")
    packing: bool = Field(default=True, description="Pack variable-length examples without cross-example attention.")
    seed: int = Field(default=42, ge=0, description="Random seed.")
    checkpoint_interval: int = Field(default=100, ge=1, description="Optimizer steps between checkpoints; a restarted pod resumes from the latest.")


class BaselineGate(ApiModel):
    """An adapter to beat: the candidate's validation loss must be lower than this adapter's, on
    the same validation set, by minImprovement. A FineTuneSchedule sets it to the version serving."""

    adapter_version: str | None = Field(default=None, max_length=253, description="Name of the AdapterVersion the baseline is (for the record).")
    uri: Uri
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$", description="sha256 of the baseline adapter folder (its AdapterVersion's spec.artifact.sha256); checked before it is loaded.")
    min_improvement: float = Field(default=0.01, ge=-1, lt=1, description="Smallest relative reduction of validation loss, (baseline - candidate) / baseline, below 1 (1 would need a loss of zero); negative values tolerate a regression.")


class Gates(ApiModel):
    """Model-validation thresholds; a candidate that fails one is registered Rejected."""

    max_validation_loss: float | None = Field(default=None, gt=0, description="Highest acceptable validation loss.")
    min_exact_match: float | None = Field(default=None, ge=0, le=1, description="Lowest acceptable exact-match on the validation set.")
    max_retention_regression: float = Field(default=0.05, ge=0, le=10, description="Largest acceptable relative increase of retention-set loss over the base model (0.05 = 5%).")
    baseline: BaselineGate | None = Field(default=None, description="Compare with a baseline adapter on the validation set (gate minBaselineImprovement).")


class QuantizeOutput(ApiModel):
    """Merge the adapter into the base and quantize the merged model."""

    format: Literal["nf4", "int8"] = Field(description="Quantization format of the merged model.")


class Output(ApiModel):
    """Where artifacts are written."""

    uri: Uri
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253, description="Secret (same namespace) whose keys become the workload's environment for the artifact store, e.g. AWS_ACCESS_KEY_ID.")
    quantize: QuantizeOutput | None = Field(default=None, description="Optional quantized merged model.")


NO_VALIDATION_SET = ("without dataset.validation, validationSplit must be above 0: the run needs a validation set "
                     "for its metrics and gates")


class FineTuneJobSpec(ApiModel):
    """A LoRA / QLoRA fine-tuning run. Like a batch Job's template, the spec is immutable: a run
    is a record of what was trained; create a new FineTuneJob to train again."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": "FineTuneJob spec is immutable; create a new FineTuneJob to train again"},
        {"rule": "has(self.dataset.validation) || self.dataset.validationSplit > 0.0",
         "message": NO_VALIDATION_SET, "fieldPath": ".dataset.validationSplit"},
    ]})
    # A FineTuneSchedule's template validates on the held-out feedback instead (its own rules).
    needs_validation_set: ClassVar[bool] = True

    base_model: BaseModelRef = Field(description="The base model.")
    adapter: AdapterTarget = Field(description="Adapter family of the result.")
    dataset: Dataset = Field(description="Datasets and validation rules.")
    method: Method = Field(default_factory=Method, description="LoRA or QLoRA settings.")
    training: Training = Field(default_factory=Training, description="Optimisation settings.")
    gates: Gates = Field(default_factory=Gates, description="Model-validation gates.")
    output: Output = Field(description="Artifact store.")
    resources: PodResources = Field(default_factory=PodResources, description="Pod resources and placement.")
    backoff_limit: int = Field(default=3, ge=0, le=100, description="Pod retries (e.g. after preemption); training resumes from the latest checkpoint.")
    active_deadline_seconds: int | None = Field(default=None, ge=60, description="Wall-clock limit of the whole Job.")

    @model_validator(mode="after")
    def _has_a_validation_set(self) -> Self:
        if self.needs_validation_set and self.dataset.validation is None and self.dataset.validation_split <= 0:
            raise ValueError(f"dataset.validationSplit: {NO_VALIDATION_SET}")
        return self


class DataReport(ApiModel):
    """What data validation kept and dropped."""

    rows_read: int = Field(default=0, description="Rows read.")
    rows_kept: int = Field(default=0, description="Rows kept after cleaning.")
    dropped: dict[str, int] = Field(default_factory=dict, description="Rows dropped, by reason.")
    digest: str | None = Field(default=None, description="sha256 of the kept data.")


class Progress(ApiModel):
    """Training progress."""

    step: int = Field(default=0, description="Optimizer steps done.")
    total_steps: int = Field(default=0, description="Optimizer steps planned.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    tokens_per_second: float | None = Field(default=None, description="Real (non-padding) tokens per second.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds left.")
    resumed_from_step: int | None = Field(default=None, description="Checkpoint step the last pod resumed from (after a preemption or crash).")


class QuantizedResult(ApiModel):
    """The merged, quantized model a run made (spec.output.quantize); its AdapterVersion's
    spec.quantized registers it with its digest and quality figures."""

    uri: str = Field(max_length=2048, description="Where it was published (the run folder's quantized/).")
    format: Literal["merged-nf4", "merged-int8"] = Field(description="What the folder holds.")
    size_bytes: int = Field(ge=0, description="Its size (every file but the manifest).")
    size_ratio: float | None = Field(default=None, description="Its size over the same merged model's in 16 bit: below 1 is smaller.")
    within_tolerance: bool | None = Field(default=None, description="Whether its validation loss and greedy predictions stayed within tolerance of the 16-bit merged model's.")


class FineTuneJobStatus(StatusBase):
    """Observed state of a FineTuneJob."""

    phase: Literal["Pending", "ValidatingData", "Training", "Evaluating", "Publishing", "Succeeded", "Rejected", "Failed"] | None = Field(default=None, description="Summary of the pipeline's state.")
    job_name: str | None = Field(default=None, description="The batch Job running this generation.")
    data_report: DataReport | None = Field(default=None, description="Data validation report.")
    progress: Progress | None = Field(default=None, description="Training progress.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Validation and retention metrics.")
    adapter_version: str | None = Field(default=None, description="Name of the AdapterVersion this run registered.")
    quantized: QuantizedResult | None = Field(default=None, description="The merged, quantized model the run made, when spec.output.quantize was set.")
    report_uri: str | None = Field(default=None, max_length=2048, description="The run's HTML report in the artifact store: data, loss curves, metrics against the gates, retention against the base model, hyper-parameters, lineage (report.json beside it holds the same as JSON).")
    start_time: str | None = Field(default=None, description="When the run started.")
    completion_time: str | None = Field(default=None, description="When the run finished.")
