"""Types shared by the four resources: the base model config, conditions, URIs and references."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from tunerag_operator import durations

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
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Label keys, taint keys and resource names: an optional DNS-subdomain prefix (at most 253
# characters, checked apart) and a name of at most 63. Label values: at most 63, may be empty.
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
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


# What each scheme needs after `://` to address anything: a bucket or a model (`s3:///key` names
# none), a claim that can exist (a PersistentVolumeClaim name is a DNS subdomain: `pvc:///etc`,
# `pvc://./x` name none), and for file:// an absolute path other than `/` (`file://x` is relative to
# whatever directory the pod starts in). Each rule is mirrored by `_addresses_something`.
PVC_CLAIM = r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*(/|$)"
URI_RULES = [
    NO_TRAVERSAL,
    {"rule": "!self.matches('^(s3|gs|hf):///')",
     "message": "must name a bucket or a model after the scheme: s3://bucket/key, gs://bucket/key, hf://org/name"},
    {"rule": f"!self.startsWith('pvc://') || self.matches('{PVC_CLAIM}')",
     "message": "must name a PersistentVolumeClaim (a DNS subdomain) after the scheme: pvc://claim/path"},
    {"rule": "!self.startsWith('file://') || self.matches('^file:///[^/]')",
     "message": "must be an absolute path after the scheme: file:///path"},
]


def _addresses_something(value: str) -> str:
    """`URI_RULES` but the `..` rule (the pattern and that rule are applied by pydantic from the
    schema's own `pattern`, and by the workload)."""
    if re.match(r"^(s3|gs|hf):///", value):
        raise ValueError(URI_RULES[1]["message"])
    if value.startswith("pvc://") and not re.match(PVC_CLAIM, value):
        raise ValueError(URI_RULES[2]["message"])
    if value.startswith("file://") and not re.match(r"^file:///[^/]", value):
        raise ValueError(URI_RULES[3]["message"])
    return value


Uri = Annotated[
    str,
    Field(
        pattern=URI_PATTERN,
        max_length=2048,
        json_schema_extra={"x-kubernetes-validations": URI_RULES},
        description="URI: hf://org/name, s3://bucket/key, gs://bucket/key, pvc://claim/path or file:///path.",
    ),
    AfterValidator(_addresses_something),
]
Duration = Annotated[
    str,
    Field(pattern=DURATION, max_length=32, description="Duration such as 30s, 5m or 1h30m."),
]
# Go's time.Duration, which CEL's duration() parses into, stops at about 2562047h; a longer one
# fails the CEL rule below, so the mirror refuses it too.
GO_DURATION_MAX_SECONDS = (2**63 - 1) / 1e9


def _floor_rule(floor: str) -> dict[str, Any]:
    # duration() fails on a longer one than Go's; the API server then shows this message too.
    return {"rule": f"duration(self) >= duration('{floor}')", "message": f"must be at least {floor} (and at most 2562047h)"}


def _at_least(floor: str) -> AfterValidator:
    """Mirrors `_floor_rule(floor)`: a duration that drives a loop (an interval, a pause, a test's
    length) has a floor, so no spec can make the operator spin on it."""
    minimum = durations.seconds(floor)

    def check(value: str) -> str:
        seconds = durations.seconds(value)
        if seconds > GO_DURATION_MAX_SECONDS:
            raise ValueError(f"must be at least {floor} (and at most 2562047h)")
        if seconds < minimum:
            raise ValueError(f"must be at least {floor}")
        return value

    return AfterValidator(check)


def _duration_at_least(floor: str) -> Any:
    return Field(pattern=DURATION, max_length=32, json_schema_extra={"x-kubernetes-validations": [_floor_rule(floor)]},
                 description=f"Duration such as 30s, 5m or 1h30m; at least {floor}.")


DurationAtLeast1s = Annotated[str, _duration_at_least("1s"), _at_least("1s")]
DurationAtLeast10s = Annotated[str, _duration_at_least("10s"), _at_least("10s")]
DurationAtLeast30s = Annotated[str, _duration_at_least("30s"), _at_least("30s")]
DurationAtLeast1m = Annotated[str, _duration_at_least("1m"), _at_least("1m")]

def _mirrored(rule: str, message: str, holds: Callable[[str], bool]) -> tuple[Any, AfterValidator]:
    """A rule on one string value, said once for both sides: the CEL rule the API server applies
    at admission, and `holds`, its mirror in the models, refusing with the same message."""

    def check(value: str) -> str:
        if not holds(value):
            raise ValueError(message)
        return value

    return Field(json_schema_extra={"x-kubernetes-validations": [{"rule": rule, "message": message}]}), AfterValidator(check)


# A blank string where a name or a query is expected means nothing (and fails only later, in a
# Job or a pod).
NonBlank = Annotated[str, *_mirrored("self.matches(r'\\S')", "must not be empty or blank", lambda v: bool(v.strip()))]

# PostgreSQL reserves the pg_ prefix for its own schemas (pg_catalog, pg_toast, pg_temp_*), and
# information_schema is the standard's catalog: tables written there are written into the system.
UserSchema = Annotated[str, *_mirrored(
    "!self.startsWith('pg_') && self != 'information_schema'",
    "must not be a PostgreSQL system schema (pg_catalog, pg_toast, information_schema, any pg_*)",
    lambda v: not v.startswith("pg_") and v != "information_schema")]


class SecretKeyRef(ApiModel):
    """A key of a Secret in the resource's own namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253,
                      description="Name of the Secret, in the same namespace as the resource.")
    key: str = Field(max_length=253, pattern=r"^[.]?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$",  # as Kubernetes: not . and not starting ..
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

    kopf: dict[str, Any] | None = Field(
        default=None,
        description="The operator framework's own bookkeeping (the last handled spec, handler progress); not for users.")
    observed_generation: int | None = Field(default=None, description="The .metadata.generation the status reflects.")
    conditions: list[Condition] = Field(
        default_factory=list, max_length=32,
        description="Current conditions of the resource (Ready, and per-kind ones).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def _check_prefix(value: str, limit: int) -> str:
    """The part before `/` of a qualified name is at most `limit` characters (a regular
    expression cannot say so); mirrored by `_prefix_rule` in CEL."""
    if "/" in value and len(value.split("/")[0]) > limit:
        raise ValueError(f"the prefix before '/' must be at most {limit} characters")
    return value


def _prefix_rule(path: str, limit: int) -> str:
    return f"!{path}.contains('/') || {path}.split('/')[0].size() <= {limit}"


def _label_keys(keys: dict[str, str]) -> dict[str, str]:
    for key in keys:
        if not re.fullmatch(QUALIFIED_NAME, key):
            raise ValueError(f"{key!r} is not a label key: [prefix/]name, name of at most 63 of [-A-Za-z0-9_.]")
        _check_prefix(key, 253)
    return keys


LabelValue = Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]
NodeSelector = Annotated[
    dict[str, LabelValue],
    Field(max_length=64, json_schema_extra={"x-kubernetes-validations": [{
        "rule": f"self.all(k, k.matches(r'{QUALIFIED_NAME}') && ({_prefix_rule('k', 253)}))",
        "message": "keys must be label keys: [prefix/]name, prefix a DNS subdomain of at most 253, "
                   "name at most 63 of [-A-Za-z0-9_.]"}]}),
    AfterValidator(_label_keys),
]
# What a container can request as a GPU: an extended resource, `domain/name`, outside
# kubernetes.io, that is still a qualified name after Kubernetes's quota prefix `requests.`.
EXTENDED_RESOURCE = (r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _extended_resource(value: str) -> str:
    if value.startswith("requests.") or "kubernetes.io/" in value:
        raise ValueError("an extended resource must not start with 'requests.' or lie under kubernetes.io")
    return _check_prefix(value, 244)


class Toleration(ApiModel):
    """A pod toleration, as in a PodSpec; the rules are the PodSpec's own, so a toleration the
    API server admits here is one it admits on the pod."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": f"!has(self.key) || {_prefix_rule('self.key', 253)}",
         "message": "the prefix before '/' must be at most 253 characters", "fieldPath": ".key"},
        {"rule": "has(self.key) || (has(self.operator) && self.operator == 'Exists')",
         "message": "a toleration without a key must use operator Exists", "fieldPath": ".operator"},
        {"rule": "!has(self.value) || self.value == '' || !has(self.operator) || self.operator == 'Equal'",
         "message": "operator Exists takes no value", "fieldPath": ".value"},
        {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
         "message": "tolerationSeconds applies only to effect NoExecute", "fieldPath": ".tolerationSeconds"},
    ]})

    key: str | None = Field(default=None, pattern=QUALIFIED_NAME, max_length=317, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (the default).")
    value: str | None = Field(default=None, pattern=LABEL_VALUE, max_length=63, description="Taint value for the Equal operator.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(default=None, description="Taint effect to match.")
    toleration_seconds: int | None = Field(default=None, ge=0, le=2**31 - 1, description="For NoExecute: how long the pod stays bound after the taint.")

    @model_validator(mode="after")
    def _as_the_pod_spec_requires(self) -> Self:
        if self.key is not None:
            _check_prefix(self.key, 253)
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator Exists")
        if self.value and self.operator == "Exists":
            raise ValueError("operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies only to effect NoExecute")
        return self


# A request and limit of zero (`0`, `0m`, `0.0Gi`) is no quantity a pod can run with: the pattern
# of each field admits only digits, so a non-zero digit is what makes it more than zero.
_POSITIVE = _mirrored("self.matches('[1-9]')", "must be more than zero", lambda v: re.search("[1-9]", v) is not None)
CpuQuantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?m?$", max_length=32), *_POSITIVE]
MemoryQuantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$", max_length=32),
                           *_POSITIVE]


class PodResources(ApiModel):
    """Where and with what the workload pods run."""

    gpus: int = Field(default=0, ge=0, le=16, description="GPUs per pod; more than one trains with torchrun on one node.")
    gpu_resource_name: Annotated[str, AfterValidator(_extended_resource)] = Field(
        default="nvidia.com/gpu", pattern=EXTENDED_RESOURCE, max_length=253,
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "!self.startsWith('requests.') && !self.contains('kubernetes.io/')",
             "message": "an extended resource must not start with 'requests.' or lie under kubernetes.io"},
            {"rule": _prefix_rule("self", 244), "message": "the prefix before '/' must be at most 244 characters"}]},
        description="Extended resource name of the GPU, domain/name, e.g. nvidia.com/gpu.")
    cpu: CpuQuantity | None = Field(default=None, description="CPU request and limit, e.g. 4 or 500m; more than zero.")
    memory: MemoryQuantity | None = Field(default=None, description="Memory request and limit, e.g. 16Gi (binary) or 16G (decimal; kilo is a lowercase k); more than zero.")
    node_selector: NodeSelector = Field(default_factory=dict, description="Node labels the pod must match.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Pod tolerations, as in a PodSpec.")
    priority_class_name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253, description="PriorityClass of the pod.")
    image: str | None = Field(default=None, pattern=r"^[^\s]+$", max_length=512, description="Workload image; defaults to the operator's configured workloads image.")
