"""AdapterVersion: an immutable registry entry for one fine-tuned adapter."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from tunerag_operator.api.common import DNS_LABEL, ApiModel, StatusBase, Uri

SHA256 = r"^[a-f0-9]{64}$"


class BaseModelLineage(ApiModel):
    """The base model the adapter was trained on."""

    uri: Uri
    revision: str | None = Field(default=None, max_length=128, description="Revision of the base model.")
    digest: str | None = Field(default=None, max_length=128, description="Content digest of the base model weights.")


class Artifact(ApiModel):
    """A stored artifact."""

    uri: Uri
    sha256: str = Field(pattern=SHA256, description="sha256 of the artifact's manifest (the sorted per-file digests).")
    size_bytes: int | None = Field(default=None, ge=0, description="Total size in bytes.")
    format: Literal["peft-lora", "merged-nf4", "merged-int8", "merged-fp16"] = Field(default="peft-lora", description="What the artifact holds.")


class QuantizedArtifact(Artifact):
    """The merged, quantized model: the base with the adapter merged in, quantized with bitsandbytes,
    one transformers folder (config with its quantization, weights, tokenizer) that loads alone."""

    format: Literal["merged-nf4", "merged-int8", "merged-fp16"] = Field(description="What the folder holds: the merged model in nf4 (4 bit), int8, or float16.")
    reference_size_bytes: int | None = Field(default=None, ge=0, description="Size of the same merged model saved in 16 bit (float16), counted as sizeBytes is (every file but the manifest): the baseline of status.quantized.sizeRatio.")
    relative_loss_delta: float | None = Field(default=None, ge=0, description="|quantized - 16-bit| / 16-bit validation loss of the merged model.")
    argmax_agreement: float | None = Field(default=None, ge=0, le=1, description="Share of validation completion tokens whose greedy prediction equals the 16-bit merged model's.")
    within_tolerance: bool | None = Field(default=None, description="Whether both stayed within the training workload's tolerance (loss within 10%, agreement at least 90%). A RolloutPolicy that serves quantized models never picks a version whose model did not.")


class Lineage(ApiModel):
    """Where the adapter came from."""

    fine_tune_job: str | None = Field(default=None, max_length=253, description="The FineTuneJob that trained it; empty when registered by hand.")
    dataset_digests: dict[str, str] = Field(default_factory=dict, description="Content digest of each dataset split it saw.")
    datasets: dict[str, str] = Field(default_factory=dict, description="URI of each dataset split it saw (train, validation, retention).")
    hyper_parameters: dict[str, str] = Field(default_factory=dict, description="Hyper-parameters, as strings.")
    report_uri: str | None = Field(default=None, max_length=2048, description="The training run's HTML report (data, loss curves, metrics, gates).")


class GateResult(ApiModel):
    """The outcome of one model-validation gate."""

    name: str = Field(max_length=128, description="Gate name, e.g. retentionRegression.")
    value: float = Field(description="Measured value.")
    threshold: float = Field(description="Bound the value was compared with.")
    passed: bool = Field(description="Whether the gate passed.")


class AdapterVersionSpec(ApiModel):
    """An immutable, versioned fine-tuned adapter."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": "AdapterVersion spec is immutable; register a new version instead"},
    ]})

    family: str = Field(pattern=DNS_LABEL, max_length=48, description="Adapter family.")
    version: int = Field(ge=1, description="Version number within the family, allocated by the operator.")
    base_model: BaseModelLineage = Field(description="Base model lineage.")
    artifact: Artifact = Field(description="The adapter weights.")
    quantized: QuantizedArtifact | None = Field(default=None, description="The merged, quantized model, when one was made (FineTuneJob spec.output.quantize); a RolloutPolicy with spec.target.artifact quantized serves it.")
    lineage: Lineage = Field(default_factory=Lineage, description="Training lineage.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Validation and retention metrics.")
    gates: list[GateResult] = Field(default_factory=list, max_length=32, description="Gate results; any failed gate makes the version Rejected.")


class QuantizedStatus(ApiModel):
    """What is known of the version's quantized model (spec.quantized)."""

    size_ratio: float | None = Field(default=None, description="The quantized model's size over the same merged model's in 16 bit (spec.quantized sizeBytes, as verified for a hand-registered version, over referenceSizeBytes): below 1 is smaller.")
    verified_sha256: str | None = Field(default=None, description="sha256 the quantized model was verified to have (a hand-registered version's verification Job).")


class AdapterVersionStatus(StatusBase):
    """Observed state of an AdapterVersion."""

    phase: Literal["Pending", "Validated", "Rejected", "Canary", "Serving", "Retired", "RolledBack", "Failed"] | None = Field(default=None, description="Lifecycle phase.")
    served_by: list[str] = Field(default_factory=list, description="RolloutPolicies that currently serve this version.")
    job_name: str | None = Field(default=None, description="The Job that verified a hand-registered artifact.")
    verified_sha256: str | None = Field(default=None, description="sha256 the artifact was verified to have.")
    quantized: QuantizedStatus | None = Field(default=None, description="The quantized model's size against the 16-bit model, and its verification.")
