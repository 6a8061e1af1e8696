"""The workload's own typed view of a FineTuneJob spec.

The workloads image installs the operator distribution without its dependencies (for the standard-
library `tunerag_operator.report` only), so this mirrors the field names (camelCase on the wire) and
defaults of `tunerag_operator.api.finetunejob`. Unknown fields are ignored here
(the API server already refused them at admission; a newer operator may add fields an older image
does not use). A test checks the defaults agree with the operator's models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from tunerag_workloads.contract import WorkloadError


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True, extra="ignore")


class BaseModelRef(_Model):
    uri: str
    revision: str | None = None


class AdapterTarget(_Model):
    family: str


class FieldMapping(_Model):
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str | None = None


class DatasetSource(_Model):
    uri: str
    format: Literal["jsonl", "csv", "parquet"] = "jsonl"
    fields: FieldMapping = Field(default_factory=FieldMapping)


class ValidationRules(_Model):
    min_rows: int = Field(default=8, ge=1)
    max_tokens: int = Field(default=1024, ge=8)
    drop_empty: bool = True
    dedupe: bool = True


class Dataset(_Model):
    train: DatasetSource
    validation: DatasetSource | None = None
    validation_split: float = Field(default=0.1, ge=0.0, le=0.5)
    retention: DatasetSource | None = None
    rules: ValidationRules = Field(default_factory=ValidationRules)


class LoraSettings(_Model):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, le=0.9)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class QuantizationSettings(_Model):
    bits: Literal[4] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class Method(_Model):
    type: Literal["lora", "qlora"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationSettings | None = None


class Training(_Model):
    epochs: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, le=0.5)
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    max_seq_length: int = Field(default=1024, ge=16)
    packing: bool = True
    seed: int = Field(default=42, ge=0)
    checkpoint_interval: int = Field(default=100, ge=1)


class BaselineGate(_Model):
    adapter_version: str | None = None
    uri: str
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")
    min_improvement: float = Field(default=0.01, ge=-1, le=1)


class Gates(_Model):
    max_validation_loss: float | None = None
    min_exact_match: float | None = None
    max_retention_regression: float = 0.05
    baseline: BaselineGate | None = None


class QuantizeOutput(_Model):
    format: Literal["nf4", "int8"]


class Output(_Model):
    uri: str
    credentials_secret: str | None = None
    quantize: QuantizeOutput | None = None


class Resources(_Model):
    gpus: int = 0


class FineTuneSpec(_Model):
    base_model: BaseModelRef
    adapter: AdapterTarget
    dataset: Dataset
    method: Method = Field(default_factory=Method)
    training: Training = Field(default_factory=Training)
    gates: Gates = Field(default_factory=Gates)
    output: Output
    resources: Resources = Field(default_factory=Resources)


def parse_spec(spec: dict[str, Any]) -> FineTuneSpec:
    try:
        parsed = FineTuneSpec.model_validate(spec)
    except ValidationError as exc:
        raise WorkloadError("InvalidSpec", f"the FineTuneJob spec is not valid: {exc}") from exc
    if parsed.method.type == "qlora" and parsed.method.quantization is None:
        parsed.method.quantization = QuantizationSettings()
    return parsed
