"""Types shared by the four resources: the base model config, conditions, URIs and references."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "tunerag.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# URIs the workloads can read through fsspec. `..` path segments are refused by CEL so a spec can
# never address anything outside the volume or prefix it names.
URI_PATTERN = r"^(hf|s3|gs|pvc|file)://[^\s]+$"
NO_TRAVERSAL = {
    "rule": "!self.matches('(^|/)[.][.](/|$)')",
    "message": "must not contain '..' path segments",
}
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
SQL_IDENTIFIER = r"^[a-z_][a-z0-9_]*$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


class ApiModel(BaseModel):
    """Base for every spec and status model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
    )


Uri = Annotated[
    str,
    Field(
        pattern=URI_PATTERN,
        max_length=2048,
        json_schema_extra={"x-kubernetes-validations": [NO_TRAVERSAL]},
        description="URI: hf://org/name, s3://bucket/key, gs://bucket/key, pvc://claim/path or file:///path.",
    ),
]
Duration = Annotated[
    str,
    Field(pattern=DURATION, max_length=32, description="Duration such as 30s, 5m or 1h30m."),
]


class SecretKeyRef(ApiModel):
    """A key of a Secret in the resource's own namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253,
                      description="Name of the Secret, in the same namespace as the resource.")
    key: str = Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
                     description="Key within the Secret.")


class ResourceRef(ApiModel):
    """A reference to another object in the same namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253,
                      description="Name of the object, in the same namespace as the resource.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A condition in the Kubernetes API convention."""

    type: str = Field(max_length=316, description="Type of condition in CamelCase, e.g. Ready.")
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(max_length=1024, description="Machine-readable CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable message that says what to fix.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, ge=0, description="The .metadata.generation the condition was set for.")


class StatusBase(ApiModel):
    """Fields every status carries."""

    observed_generation: int | None = Field(default=None, description="The .metadata.generation the status reflects.")
    conditions: list[Condition] = Field(
        default_factory=list, max_length=32,
        description="Current conditions of the resource (Ready, and per-kind ones).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class Toleration(ApiModel):
    """A pod toleration, as in a PodSpec."""

    key: str | None = Field(default=None, max_length=316, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value for the Equal operator.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(default=None, description="Taint effect to match.")
    toleration_seconds: int | None = Field(default=None, description="For NoExecute: how long the pod stays bound after the taint.")


class PodResources(ApiModel):
    """Where and with what the workload pods run."""

    gpus: int = Field(default=0, ge=0, le=16, description="GPUs per pod; more than one trains with torchrun on one node.")
    gpu_resource_name: str = Field(default="nvidia.com/gpu", max_length=253, description="Extended resource name of the GPU.")
    cpu: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request and limit, e.g. 4 or 500m.")
    memory: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$", description="Memory request and limit, e.g. 16Gi.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pod must match.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Pod tolerations, as in a PodSpec.")
    priority_class_name: str | None = Field(default=None, max_length=253, description="PriorityClass of the pod.")
    image: str | None = Field(default=None, max_length=512, description="Workload image; defaults to the operator's configured workloads image.")
