"""VectorIndex: an incremental chunk-embed-upsert pipeline into PostgreSQL + pgvector."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from tunerag_operator.api.common import (
    DNS_SUBDOMAIN,
    SQL_IDENTIFIER,
    ApiModel,
    DurationAtLeast1s,
    NonBlank,
    PodResources,
    ResourceRef,
    SecretKeyRef,
    StatusBase,
    Uri,
    UserSchema,
)

Format = Literal["text", "markdown", "html", "pdf"]
FORMATS: tuple[Format, ...] = ("text", "markdown", "html", "pdf")


# A glob is matched against every path of the source: bounded, so a spec cannot make a run spend
# its time in pattern matching.
Glob = Annotated[str, Field(min_length=1, max_length=512)]

class Source(ApiModel):
    """Where the documents are."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.uri) != has(self.configMap)", "message": "set exactly one of uri or configMap"},
    ]})

    uri: Uri | None = None
    config_map: ResourceRef | None = Field(default=None, description="A ConfigMap whose keys are documents.")
    include: list[Glob] = Field(default_factory=lambda: ["**/*"], min_length=1, max_length=64, description="Glob patterns of files to index; at least one (none would index nothing).")
    exclude: list[Glob] = Field(default_factory=list, max_length=64, description="Glob patterns of files to skip.")
    formats: list[Format] = Field(default_factory=lambda: list(FORMATS), min_length=1, description="Formats to read; others are skipped. At least one (none would index nothing).")
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253, description="Secret (same namespace) whose keys become the indexing pods' environment for an object-store source, e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL. Without it the pods use what their node or ServiceAccount provides.")


class Chunking(ApiModel):
    """How documents are split."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.overlap < self.size", "message": "overlap must be smaller than size", "fieldPath": ".overlap"},
    ]})

    strategy: Literal["tokens", "recursive", "markdown"] = Field(default="markdown", description="tokens: fixed token windows; recursive: paragraph/sentence boundaries; markdown: keep headings with their sections.")
    size: int = Field(default=256, ge=16, le=8192, description="Chunk size in tokens of the embedding model's tokenizer.")
    overlap: int = Field(default=32, ge=0, le=4096, description="Tokens shared by consecutive chunks.")


class Embedding(ApiModel):
    """The sentence-transformers model."""

    model: NonBlank = Field(default="sentence-transformers/all-MiniLM-L6-v2", min_length=1, max_length=512, description="Model name or local path.")
    normalize: bool = Field(default=True, description="L2-normalize embeddings.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Texts per embedding batch.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Device to embed on.")


class IndexSettings(ApiModel):
    """The approximate-nearest-neighbour index."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.type != 'hnsw' || self.efConstruction >= 2 * self.m",
         "message": "HNSW: efConstruction must be at least 2 * m (pgvector refuses to build the index otherwise)",
         "fieldPath": ".efConstruction"},
    ]})

    type: Literal["hnsw", "ivfflat"] = Field(default="hnsw", description="pgvector index type.")
    m: int = Field(default=16, ge=2, le=100, description="HNSW: links per node.")
    ef_construction: int = Field(default=64, ge=4, le=1000, description="HNSW: candidate list size while building; at least 2 * m.")
    ef_search: int = Field(default=100, ge=1, le=1000, description="HNSW: candidate list size at query time (pgvector's default 40 loses recall).")
    lists: int = Field(default=100, ge=1, le=32768, description="IVFFlat: number of lists.")
    probes: int = Field(default=10, ge=1, le=32768, description="IVFFlat: lists searched at query time.")

    @model_validator(mode="after")
    def _buildable(self) -> Self:
        if self.type == "hnsw" and self.ef_construction < 2 * self.m:
            raise ValueError("HNSW: efConstruction must be at least 2 * m (pgvector refuses to build the index otherwise)")
        return self


class Store(ApiModel):
    """PostgreSQL + pgvector."""

    connection_secret: SecretKeyRef = Field(description="Secret key holding the libpq connection URI; never copied into status or logs.")
    schema_: UserSchema = Field(default="public", alias="schema", pattern=SQL_IDENTIFIER, max_length=63, description="Schema of the table; not a PostgreSQL system schema (pg_*, information_schema).")
    table: str = Field(pattern=SQL_IDENTIFIER, max_length=48, description="Base name of the table (versions get a suffix).")
    distance: Literal["cosine", "l2", "ip"] = Field(default="cosine", description="Distance of the index and of searches.")
    index: IndexSettings = Field(default_factory=IndexSettings, description="ANN index settings.")
    deletion_policy: Literal["Retain", "Delete"] = Field(default="Retain", description="On deletion of the VectorIndex: keep the tables, or drop them.")


class Refresh(ApiModel):
    """Periodic re-indexing."""

    interval: DurationAtLeast1s | None = Field(default=None, description="Re-index this long after the last run ended, e.g. 1h; at least 1s. Unset: no refresh.")


class VectorIndexSpec(ApiModel):
    """An incremental indexing pipeline."""

    source: Source = Field(description="Documents to index.")
    chunking: Chunking = Field(default_factory=Chunking, description="Chunking strategy.")
    embedding: Embedding = Field(default_factory=Embedding, description="Embedding model.")
    store: Store = Field(description="Vector store.")
    refresh: Refresh = Field(default_factory=Refresh, description="Periodic refresh; at most one run at a time.")
    parallelism: int = Field(default=1, ge=1, le=64, description="Indexing pods, each taking a shard of the documents by a hash of their path (an Indexed Job); above 1, a finalize Job then builds the indexes and switches the version.")
    resources: PodResources = Field(default_factory=PodResources, description="Pod resources and placement.")


class RunCounts(ApiModel):
    """What the last run changed."""

    added: int = Field(default=0, description="Documents added.")
    updated: int = Field(default=0, description="Documents re-embedded because their content changed.")
    deleted: int = Field(default=0, description="Documents removed from the source.")
    unchanged: int = Field(default=0, description="Documents left as they were.")
    skipped: int = Field(default=0, description="Files that could not be read, with reasons in the run report.")


class VectorIndexStatus(StatusBase):
    """Observed state of a VectorIndex."""

    phase: Literal["Pending", "Indexing", "Ready", "Failed"] | None = Field(default=None, description="Summary of the index's state.")
    job_name: str | None = Field(default=None, description="The current or last indexing Job.")
    documents: int | None = Field(default=None, description="Documents in the live table version.")
    chunks: int | None = Field(default=None, description="Chunks in the live table version.")
    last_run: RunCounts | None = Field(default=None, description="What the last run changed.")
    embedding_model: str | None = Field(default=None, description="Model of the live table version.")
    dimension: int | None = Field(default=None, description="Embedding dimension of the live table version.")
    source_digest: str | None = Field(default=None, description="Digest over the indexed documents' paths and content hashes.")
    table_version: str | None = Field(default=None, description="Name of the live table version.")
    last_indexed_time: str | None = Field(default=None, description="When the last run finished.")
    refreshes: int = Field(default=0, description="Periodic refresh runs started for this generation.")
