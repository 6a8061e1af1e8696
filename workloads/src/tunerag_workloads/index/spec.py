"""The VectorIndex spec as the index workload reads it.

The workloads image does not ship the operator, so this is a small mirror of
`tunerag_operator.api.vectorindex.VectorIndexSpec`: the same camelCase fields, defaults and bounds
for what the workload uses; fields it does not use (refresh, resources, the Secret reference) are
accepted and ignored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from tunerag_workloads.contract import WorkloadError

SQL_IDENTIFIER = r"^[a-z_][a-z0-9_]*$"
Format = Literal["text", "markdown", "html", "pdf"]
FORMATS: tuple[Format, ...] = ("text", "markdown", "html", "pdf")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class Source(_Model):
    uri: str | None = Field(default=None, max_length=2048)
    config_map: dict[str, Any] | None = None
    include: list[str] = Field(default_factory=lambda: ["**/*"], max_length=64)
    exclude: list[str] = Field(default_factory=list, max_length=64)
    formats: list[Format] = Field(default_factory=lambda: list(FORMATS))


class Chunking(_Model):
    strategy: Literal["tokens", "recursive", "markdown"] = "markdown"
    size: int = Field(default=256, ge=16, le=8192)
    overlap: int = Field(default=32, ge=0, le=4096)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Chunking:
        if self.overlap >= self.size:
            raise ValueError("overlap must be smaller than size")
        return self


class Embedding(_Model):
    model: str = Field(default="sentence-transformers/all-MiniLM-L6-v2", max_length=512)
    normalize: bool = True
    batch_size: int = Field(default=64, ge=1, le=4096)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class IndexSettings(_Model):
    type: Literal["hnsw", "ivfflat"] = "hnsw"
    m: int = Field(default=16, ge=2, le=100)
    ef_construction: int = Field(default=64, ge=4, le=1000)
    ef_search: int = Field(default=100, ge=1, le=1000)
    lists: int = Field(default=100, ge=1, le=32768)
    probes: int = Field(default=10, ge=1, le=32768)


class Store(_Model):
    schema_: str = Field(default="public", alias="schema", pattern=SQL_IDENTIFIER, max_length=63)
    table: str = Field(pattern=SQL_IDENTIFIER, max_length=48)
    distance: Literal["cosine", "l2", "ip"] = "cosine"
    index: IndexSettings = Field(default_factory=IndexSettings)


class IndexSpec(_Model):
    source: Source
    chunking: Chunking = Field(default_factory=Chunking)
    embedding: Embedding = Field(default_factory=Embedding)
    store: Store
    parallelism: int = Field(default=1, ge=1, le=64)


def parse_spec(spec: dict[str, Any]) -> IndexSpec:
    """Validates a camelCase VectorIndex spec; a bad spec is a WorkloadError('InvalidSpec')."""
    try:
        return IndexSpec.model_validate(spec)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise WorkloadError("InvalidSpec", f"the VectorIndex spec is invalid: {problems}") from exc


def fingerprint(spec: IndexSpec, model_name: str, dimension: int, chunk_size: int) -> str:
    """What decides the content of a table version: model, normalization and chunking.

    A change of any of these builds a new version; index settings and distance only rebuild the
    ANN index in place, and the source only changes rows."""
    payload = {
        "model": model_name,
        "dimension": dimension,
        "normalize": spec.embedding.normalize,
        "strategy": spec.chunking.strategy,
        "size": chunk_size,
        "overlap": spec.chunking.overlap,
        "chunker": 1,  # bump when the chunking code changes what it produces
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
