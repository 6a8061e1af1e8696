"""The serving configuration as the operator renders it, read from the environment.

- `TUNERAG_SERVE_CONFIG`: the JSON below (camelCase), validated here;
- `TUNERAG_DATABASE_URL`: libpq URI for retrieval and the feedback log (a secret: never logged);
- `PORT`: the HTTP port (Knative's convention, default 8080).

Nothing here imports torch, so a bad configuration fails in well under a second.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from tunerag_workloads.contract import WorkloadError

SQL_IDENTIFIER = r"^[a-z_][a-z0-9_]*$"
URI = r"^(s3|gs|pvc|file)://[^\s]+$"
BASE_URI = r"^(hf|s3|gs|pvc|file)://[^\s]+$"
BASE = "base"  # the `model` that selects the base model without adapters


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class AdapterRef(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253,
                      description="The AdapterVersion's name: the `model` that selects it and its metric label.")
    uri: str = Field(pattern=URI, max_length=2048, description="Folder of the published adapter (peft format).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The folder's sha256 (AdapterVersion spec.artifact.sha256).")
    format: Literal["peft-lora", "merged-nf4", "merged-int8", "merged-fp16"] = Field(
        default="peft-lora", description="peft-lora: an adapter loaded on the base model; merged-*: the version's merged "
                                         "(quantized) model, spec.quantized, loaded alone instead of the base model.")

    @property
    def merged(self) -> bool:
        return self.format != "peft-lora"


class Retrieval(_Model):
    schema_: str = Field(default="public", alias="schema", pattern=SQL_IDENTIFIER, max_length=63,
                         description="Schema of the VectorIndex's view.")
    table: str = Field(pattern=SQL_IDENTIFIER, max_length=63, description="The VectorIndex's view.")
    top_k: int = Field(default=4, ge=1, le=100, description="Chunks retrieved per request.")
    prompt_template: str = Field(default="Context:\n{context}\n\nQuestion: {question}\nAnswer:", max_length=8192,
                                 description="Prompt with {context} (the chunks) and {question}.")
    ef_search: int = Field(default=100, ge=1, le=1000, description="hnsw.ef_search for the query.")
    probes: int = Field(default=10, ge=1, le=32768, description="ivfflat.probes for the query (an IVFFlat index).")
    hybrid: bool = Field(default=False, description="Fuse full-text and vector rankings.")

    @model_validator(mode="after")
    def _has_question(self) -> Retrieval:
        if "{question}" not in self.prompt_template:
            raise ValueError("promptTemplate must contain {question}")
        return self


class Feedback(_Model):
    schema_: str = Field(default="public", alias="schema", pattern=SQL_IDENTIFIER, max_length=63,
                         description="Schema of the exchange log.")
    table: str = Field(default="tunerag_feedback", pattern=SQL_IDENTIFIER, max_length=63,
                       description="The exchange log table, created on first use.")


class Generation(_Model):
    max_new_tokens: int = Field(default=64, ge=1, le=8192, description="Most tokens generated per request.")


class ServeConfig(_Model):
    namespace: str = Field(min_length=1, max_length=63, description="Namespace: a metric label.")
    service: str = Field(min_length=1, max_length=63, description="The InferenceService: KServe model name, metric label.")
    aliases: list[str] = Field(default_factory=list, max_length=8,
                               description="Other model names answered as `service` is: an A/B test's second service "
                                           "answers to the first one's name, which its clients send through the graph.")
    base_model: str = Field(pattern=BASE_URI, max_length=2048, description="Folder of the base model (transformers format).")
    # The contract spells it loadIn4bit; the RolloutPolicy CRD's generated camelCase is loadIn4Bit: both are read.
    load_in_4bit: bool = Field(default=False, validation_alias=AliasChoices("loadIn4bit", "loadIn4Bit", "load_in_4bit"),
                               description="Load the base model nf4 with bitsandbytes.")
    adapters: list[AdapterRef] = Field(default_factory=list, max_length=32,
                                       description="Adapters to load; the first is the default.")
    retrieval: Retrieval | None = Field(default=None, description="Retrieval-augmented prompting.")
    feedback: Feedback | None = Field(default=None, description="Log exchanges and feedback to PostgreSQL.")
    generation: Generation = Field(default_factory=Generation, description="Generation limits.")

    @model_validator(mode="after")
    def _names(self) -> ServeConfig:
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique: {names}")
        if BASE in names:
            raise ValueError(f"{BASE!r} is reserved for the base model and cannot name an adapter")
        if any(a.merged for a in self.adapters):
            if len(self.adapters) > 1:
                raise ValueError("a merged model (format merged-*) is served alone: it replaces the base model, so no other "
                                 "adapter can share the process")
            if self.load_in_4bit:
                raise ValueError("loadIn4bit quantizes the base model, which a merged model replaces: its own config holds "
                                 "its quantization")
        return self

    @property
    def merged(self) -> AdapterRef | None:
        """The merged model served instead of the base model and adapters, if any."""
        return self.adapters[0] if self.adapters and self.adapters[0].merged else None

    @property
    def default_adapter(self) -> str:
        return self.adapters[0].name if self.adapters else BASE


def load_config(environ: Mapping[str, str]) -> tuple[ServeConfig, str | None, int]:
    """(config, database URL, port) from the environment; WorkloadError('InvalidConfig') if wrong."""
    raw = environ.get("TUNERAG_SERVE_CONFIG")
    if not raw:
        raise WorkloadError("InvalidConfig", "TUNERAG_SERVE_CONFIG is not set")
    try:
        config = ServeConfig.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise WorkloadError("InvalidConfig", f"TUNERAG_SERVE_CONFIG is not JSON: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:10])
        raise WorkloadError("InvalidConfig", f"TUNERAG_SERVE_CONFIG is invalid: {problems}") from exc
    url = environ.get("TUNERAG_DATABASE_URL") or None
    if url is None and (config.retrieval or config.feedback):
        needs = " and ".join(k for k in ("retrieval", "feedback") if getattr(config, k))
        raise WorkloadError("DatabaseUrlMissing", f"{needs} need(s) TUNERAG_DATABASE_URL, which is not set")
    port_text = environ.get("PORT", "8080")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise WorkloadError("InvalidConfig", f"PORT must be a TCP port number, not {port_text!r}")
    return config, url, int(port_text)


def masker(url: str | None) -> Callable[[str], str]:
    """A function for error and log lines: hides the database URL and its password, and puts the
    text on one line (libpq's messages span several)."""
    secrets: list[str] = []
    if url:
        secrets.append(url)
        match = re.search(r"(?:^|[\s?&])password=([^\s&]+)", url) or re.search(r"^[a-z]+://[^:/@]*:([^@]+)@", url)
        if match and len(match.group(1)) >= 3:
            secrets.append(match.group(1))
        try:
            from psycopg.conninfo import conninfo_to_dict

            password = conninfo_to_dict(url).get("password")
            if isinstance(password, str) and len(password) >= 3:
                secrets.append(password)
        except Exception:  # an unparsable URL: the regular expressions did what they could
            pass

    def mask(text: str) -> str:
        for secret in sorted(set(secrets), key=len, reverse=True):
            text = text.replace(secret, "***")
        return " ".join(text.split())

    return mask
