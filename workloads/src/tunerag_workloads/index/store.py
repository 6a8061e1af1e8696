"""PostgreSQL + pgvector: versioned chunk tables behind a view, bookkeeping, binary COPY, ANN indexes.

Layout for `spec.store.schema` S and `spec.store.table` T:

- `S.T_v<N>`: one table per version (id, document, chunk_index, content, metadata, content_hash,
  embedding vector(d), indexed_at); a version's content is decided by the embedding model, its
  dimension, normalization and chunking (`spec.fingerprint`).
- `S.T_versions`: one row per version (fingerprint, settings, state building | live | retired).
- `S.T_documents`: per version, the documents it holds (path, content hash, chunk count); written
  in the same transaction as their chunks, so it always tells exactly what the table holds.
- `S.T`: a view over the live version, replaced in the same transaction that marks a new version
  live, so readers see one version or the other, never a mix.

Identifiers are always composed with psycopg.sql; the connection URI never enters a message.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tunerag_workloads.contract import WorkloadError

OPCLASS = {"cosine": "vector_cosine_ops", "l2": "vector_l2_ops", "ip": "vector_ip_ops"}
OPERATOR = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}
MEMORY = re.compile(r"^[0-9]+\s*(kB|MB|GB)$")
COPY_COLUMNS = ("document", "chunk_index", "content", "metadata", "content_hash", "embedding")
COPY_TYPES = ("text", "int4", "text", "jsonb", "text", "vector")


# --- connecting -----------------------------------------------------------------------------

def _classify(message: str) -> str:
    text = message.lower()
    if "password authentication failed" in text or "authentication failed" in text or "no password supplied" in text:
        return "authentication failed"
    if "does not exist" in text and "database" in text:
        return "database does not exist"
    if "could not translate host name" in text or "name or service not known" in text:
        return "host name not resolvable"
    if "refused" in text:
        return "connection refused"
    if "timeout" in text or "timed out" in text:
        return "connection timed out"
    if "ssl" in text:
        return "TLS negotiation failed"
    return "connection failed"


def sanitize(message: str, uri: str) -> str:
    """Removes the URI and its host, user and password from a message."""
    secrets = [uri]
    try:
        info = psycopg.conninfo.conninfo_to_dict(uri)
        secrets += [str(info[k]) for k in ("password", "user", "host", "hostaddr") if info.get(k)]
    except psycopg.Error:
        pass
    for secret in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
        message = message.replace(secret, "***")
    return re.sub(r"postgres(ql)?://\S+", "***", message)


def connect(uri: str, budget_s: float | None = None) -> psycopg.Connection[Any]:
    """Connects with exponential backoff for at most `budget_s` seconds
    ($TUNERAG_DB_CONNECT_BUDGET_SECONDS, default 120); then WorkloadError('DatabaseUnreachable')."""
    if not uri:
        raise WorkloadError("DatabaseUriMissing", "the database connection URI is empty (TUNERAG_DB_URI from the Secret)")
    if budget_s is None:
        budget_s = float(os.environ.get("TUNERAG_DB_CONNECT_BUDGET_SECONDS", "120"))
    start = time.monotonic()
    delay, attempts = 0.25, 0
    while True:
        attempts += 1
        remaining = budget_s - (time.monotonic() - start)
        try:
            return psycopg.connect(
                uri, autocommit=True, connect_timeout=max(2, min(10, int(remaining))),
                application_name="tunerag-index", keepalives=1, keepalives_idle=30,
            )
        except psycopg.ProgrammingError:
            raise WorkloadError("InvalidDatabaseUri", "the database URI in the Secret is not a valid libpq URI") from None
        except psycopg.OperationalError as exc:
            kind = _classify(str(exc))
            if kind in ("authentication failed", "database does not exist"):
                raise WorkloadError("DatabaseUnreachable", f"the database refused the connection: {kind}; check the Secret's URI") from None
            elapsed = time.monotonic() - start
            if elapsed + delay >= budget_s:
                raise WorkloadError(
                    "DatabaseUnreachable",
                    f"could not connect to the database after {attempts} attempts in {elapsed:.1f}s ({kind}); "
                    "check that the server in the Secret's URI is up and reachable from the cluster",
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def identifier(*parts: str) -> str:
    """A Postgres identifier (at most 63 bytes), shortened with a hash when needed."""
    name = "_".join(parts)
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"


@dataclass
class Version:
    number: int
    table: str
    fingerprint: str
    state: str
    settings: dict[str, Any]


@dataclass
class WriteItem:
    document: str
    content_hash: str
    format: str
    rows: list[tuple[int, str, dict[str, Any], str]]  # chunk_index, content, metadata, content hash
    embeddings: np.ndarray


class Store:
    def __init__(self, conn: psycopg.Connection[Any], schema: str, table: str) -> None:
        self.conn = conn
        self.schema = schema
        self.table = table
        self.versions = identifier(table, "versions")
        self.documents_table = identifier(table, "documents")

    def ident(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    # --- setup ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Extension, schema and bookkeeping tables; registers pgvector's types. In one transaction
        under an advisory lock: the shards of a sharded run prepare the same objects at once."""
        from pgvector.psycopg import register_vector

        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                              (f"tunerag-index-target:{self.schema}.{self.table}",))
            have = self.conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
            if not have:
                try:
                    self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except psycopg.errors.InsufficientPrivilege:
                    raise WorkloadError("PgvectorMissing", "the pgvector extension is not installed and this user may not create it; run CREATE EXTENSION vector as an administrator") from None
                except psycopg.errors.FeatureNotSupported:
                    raise WorkloadError("PgvectorMissing", "the pgvector extension is not available on the database server") from None
            self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            self.conn.execute(sql.SQL("""
                CREATE TABLE IF NOT EXISTS {} (
                    version integer PRIMARY KEY,
                    table_name text NOT NULL,
                    fingerprint text NOT NULL,
                    state text NOT NULL CHECK (state IN ('building', 'live', 'retired')),
                    settings jsonb NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    live_at timestamptz
                )""").format(self.ident(self.versions)))
            self.conn.execute(sql.SQL("""
                CREATE TABLE IF NOT EXISTS {} (
                    version integer NOT NULL,
                    document text NOT NULL,
                    content_hash text NOT NULL,
                    format text NOT NULL,
                    chunks integer NOT NULL,
                    indexed_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (version, document)
                )""").format(self.ident(self.documents_table)))
            kind = self.conn.execute(
                "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                (self.schema, self.table),
            ).fetchone()
            if kind and kind[0] != "v":
                raise WorkloadError(
                    "TableConflict",
                    f"{self.schema}.{self.table} exists and is not the view tunerag maintains; choose another spec.store.table or move that relation away",
                )
        register_vector(self.conn)

    def lock(self, wait_s: float = 60.0, *, shared: bool = False) -> None:
        """At most one run per index (a session advisory lock, released if the process dies).

        `shared`: the shards of one sharded run write concurrently, so each takes the lock shared;
        a whole run (parallelism 1) and a sharded run's finalize step take it exclusive, so neither
        ever overlaps a shard."""
        key = f"tunerag-index:{self.schema}.{self.table}"
        deadline = time.monotonic() + wait_s
        function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        while not self.conn.execute(sql.SQL("SELECT {}(hashtextextended(%s, 0))").format(sql.SQL(function)), (key,)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise WorkloadError("IndexBusy", f"another run is indexing {self.schema}.{self.table}; try again when it has finished")
            time.sleep(1.0)

    # --- versions ------------------------------------------------------------------------------

    def _versions(self) -> list[Version]:
        rows = self.conn.execute(sql.SQL(
            "SELECT version, table_name, fingerprint, state, settings FROM {} ORDER BY version"
        ).format(self.ident(self.versions))).fetchall()
        return [Version(*row) for row in rows]

    def live(self) -> Version | None:
        return next((v for v in self._versions() if v.state == "live"), None)

    def target(self, fingerprint: str, settings: dict[str, Any], dimension: int, *,
               drop_stale: bool = True) -> tuple[Version, Version | None]:
        """The version this run writes (the live one, a building one to resume, or a new one) and
        the live version it replaces, if any.

        Decided under a transaction-scoped advisory lock, so concurrent shards of one run (same
        fingerprint) all get the same version: the first creates it, the others find it. A shard
        passes `drop_stale=False`: abandoned builds for other settings are dropped by the next
        exclusive holder of the index lock (a whole run, or a finalize step), never while another
        run's shard might still write to them."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                              (f"tunerag-index-target:{self.schema}.{self.table}",))
            versions = self._versions()
            live = next((v for v in versions if v.state == "live"), None)
            if live and live.fingerprint == fingerprint:
                return live, None
            building = next((v for v in versions if v.state == "building" and v.fingerprint == fingerprint), None)
            if drop_stale:
                for stale in versions:  # abandoned builds for other settings
                    if stale.state == "building" and stale is not building:
                        self.drop_version(stale)
            if building is None:
                number = max((v.number for v in versions), default=0) + 1
                building = Version(number, identifier(self.table, f"v{number}"), fingerprint, "building", settings)
                self.conn.execute(sql.SQL(
                    "INSERT INTO {} (version, table_name, fingerprint, state, settings) VALUES (%s, %s, %s, 'building', %s)"
                ).format(self.ident(self.versions)), (number, building.table, fingerprint, Jsonb(settings)))
            self.create_table(building.table, dimension)
        return building, live

    def version_named(self, table: str) -> Version | None:
        """The version whose table is `table` (a sharded run's finalize step finds the shards' version)."""
        return next((v for v in self._versions() if v.table == table), None)

    def drop_abandoned(self, keep: Version) -> list[str]:
        """Drops building versions older than `keep` (builds for settings no longer asked for).
        Newer ones are left: they belong to a newer run, which may not have finalized yet."""
        dropped = []
        for version in self._versions():
            if version.state == "building" and version.number < keep.number:
                self.drop_version(version)
                dropped.append(version.table)
        return dropped

    def create_table(self, table: str, dimension: int) -> None:
        exists = self.conn.execute("SELECT to_regclass(%s)", [sql.Identifier(self.schema, table).as_string(self.conn)]).fetchone()
        if exists is not None and exists[0] is not None:
            return  # a build resumed, or another shard created it: no ALTER (and its lock) again
        self.conn.execute(sql.SQL("""
            CREATE TABLE IF NOT EXISTS {} (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                document text NOT NULL,
                chunk_index integer NOT NULL,
                content text NOT NULL,
                metadata jsonb NOT NULL DEFAULT '{{}}',
                content_hash text NOT NULL,
                embedding vector({}) NOT NULL,
                indexed_at timestamptz NOT NULL DEFAULT now(),
                UNIQUE (document, chunk_index)
            )""").format(self.ident(table), sql.Literal(int(dimension))))
        # pgvector stores vectors out of line (EXTERNAL) once a row passes ~2 KB, which a 384-d
        # vector (1.5 KB) and a chunk's text do: every distance of a scan then fetches a TOAST row.
        # MAIN keeps the vector in the row and lets the text go out of line first.
        self.conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN embedding SET STORAGE MAIN").format(self.ident(table)))

    def check_dimension(self, table: str, dimension: int, model: str) -> None:
        row = self.conn.execute(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attname = 'embedding' AND NOT a.attisdropped",
            (sql.Identifier(self.schema, table).as_string(self.conn),),
        ).fetchone()
        expected = f"vector({dimension})"
        if row is None:
            raise WorkloadError("DimensionMismatch", f"table {self.schema}.{table} exists without an embedding column; drop it or choose another spec.store.table")
        if row[0] != expected:
            raise WorkloadError(
                "DimensionMismatch",
                f"table {self.schema}.{table} stores {row[0]} embeddings but the model {model!r} produces {expected}; "
                "drop or rename that table, or choose another spec.store.table",
            )

    def drop_version(self, version: Version) -> None:
        with self.conn.transaction():
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.ident(version.table)))
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(self.ident(self.documents_table)), (version.number,))
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(self.ident(self.versions)), (version.number,))

    def drop_all(self) -> list[str]:
        """Drops the view, every version and the bookkeeping tables (deletionPolicy: Delete), in one
        transaction: afterwards nothing of the index is left, or all of it is."""
        dropped: list[str] = []
        with self.conn.transaction():
            exists = self.conn.execute("SELECT to_regclass(%s)", (f'"{self.schema}"."{self.versions}"',)).fetchone()
            tables = [v.table for v in self._versions()] if exists and exists[0] else []
            self.conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(self.ident(self.table)))
            for name in [*tables, self.documents_table, self.versions]:
                self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.ident(name)))
                dropped.append(f"{self.schema}.{name}")
        return dropped

    def drop_retired(self) -> list[str]:
        dropped = []
        for version in self._versions():
            if version.state == "retired":
                self.drop_version(version)
                dropped.append(version.table)
        return dropped

    def switch(self, version: Version) -> None:
        """Points the view at `version` and marks it live, in one transaction."""
        view = self.ident(self.table)
        with self.conn.transaction():
            self.conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(self.ident(self.versions)))
            self.conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(view))
            self.conn.execute(sql.SQL(
                "CREATE VIEW {} AS SELECT id, document, chunk_index, content, metadata, content_hash, embedding, "
                "indexed_at, {}::text AS table_version FROM {}"
            ).format(view, sql.Literal(version.table), self.ident(version.table)))
            self.conn.execute(sql.SQL(
                "UPDATE {} SET state = 'retired' WHERE state = 'live'"
            ).format(self.ident(self.versions)))
            self.conn.execute(sql.SQL(
                "UPDATE {} SET state = 'live', live_at = now() WHERE version = %s"
            ).format(self.ident(self.versions)), (version.number,))
        version.state = "live"

    # --- documents and chunks ------------------------------------------------------------------

    def documents(self, version: Version) -> dict[str, str]:
        rows = self.conn.execute(sql.SQL(
            "SELECT document, content_hash FROM {} WHERE version = %s"
        ).format(self.ident(self.documents_table)), (version.number,)).fetchall()
        return dict(rows)

    def delete_documents(self, version: Version, paths: Sequence[str]) -> None:
        if not paths:
            return
        with self.conn.transaction():
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE document = ANY(%s)").format(self.ident(version.table)), (list(paths),))
            self.conn.execute(sql.SQL(
                "DELETE FROM {} WHERE version = %s AND document = ANY(%s)"
            ).format(self.ident(self.documents_table)), (version.number, list(paths)))

    def write_batch(self, version: Version, items: Iterable[WriteItem]) -> int:
        """Replaces the chunks of the batch's documents and records them, in one transaction."""
        items = list(items)
        if not items:
            return 0
        table = self.ident(version.table)
        rows = 0
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {} WHERE document = ANY(%s)").format(table), ([i.document for i in items],))
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                table, sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS)))
            with cur.copy(copy_sql) as copy:
                copy.set_types(list(COPY_TYPES))
                for item in items:
                    for (index, content, metadata, chunk_hash), vector in zip(item.rows, item.embeddings, strict=True):
                        copy.write_row((item.document, index, content, Jsonb(metadata), chunk_hash, vector))
                        rows += 1
            cur.executemany(sql.SQL("""
                INSERT INTO {} (version, document, content_hash, format, chunks) VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (version, document) DO UPDATE
                SET content_hash = EXCLUDED.content_hash, format = EXCLUDED.format, chunks = EXCLUDED.chunks, indexed_at = now()
            """).format(self.ident(self.documents_table)),
                [(version.number, i.document, i.content_hash, i.format, len(i.rows)) for i in items])
        return rows

    def counts(self, version: Version) -> tuple[int, int, str]:
        """(documents, chunks, source digest) of a version."""
        docs = self.conn.execute(sql.SQL(
            "SELECT document, content_hash FROM {} WHERE version = %s ORDER BY document"
        ).format(self.ident(self.documents_table)), (version.number,)).fetchall()
        chunks = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.ident(version.table))).fetchone()[0]
        digest = hashlib.sha256()
        for path, content_hash in docs:
            digest.update(f"{path}\0{content_hash}\n".encode())
        return len(docs), int(chunks), "sha256:" + digest.hexdigest()

    # --- indexes -------------------------------------------------------------------------------

    def ensure_indexes(self, version: Version, distance: str, settings: dict[str, Any]) -> bool:
        """The ANN index (and a full-text index for hybrid search), built once the rows are loaded,
        with more maintenance memory and parallel workers. An index with other parameters is
        replaced (new one built first). Returns whether an index was built."""
        kind = settings.get("type", "hnsw")
        params = {"hnsw": {"m": settings.get("m", 16), "ef_construction": settings.get("efConstruction", 64)},
                  "ivfflat": {"lists": settings.get("lists", 100)}}[kind]
        tag = hashlib.sha256(f"{kind}:{distance}:{sorted(params.items())}".encode()).hexdigest()[:6]
        ann_name = identifier(version.table, "ann", tag)
        fts_name = identifier(version.table, "fts")
        existing = {r[0] for r in self.conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s", (self.schema, version.table)).fetchall()}
        built = False
        if ann_name not in existing or fts_name not in existing:
            memory = os.environ.get("TUNERAG_INDEX_MAINTENANCE_WORK_MEM", "1GB")
            if not MEMORY.match(memory):
                memory = "1GB"
            workers = int(os.environ.get("TUNERAG_INDEX_PARALLEL_WORKERS", "4"))
            with self.conn.transaction():
                self.conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(memory)))
                self.conn.execute(sql.SQL("SET LOCAL max_parallel_maintenance_workers = {}").format(sql.Literal(max(0, workers))))
                if ann_name not in existing:
                    with_params = sql.SQL(", ").join(
                        sql.SQL("{} = {}").format(sql.SQL(k), sql.Literal(int(v))) for k, v in params.items())
                    self.conn.execute(sql.SQL("CREATE INDEX {} ON {} USING {} (embedding {}) WITH ({})").format(
                        sql.Identifier(ann_name), self.ident(version.table), sql.SQL(kind), sql.SQL(OPCLASS[distance]), with_params))
                    built = True
                if fts_name not in existing:
                    self.conn.execute(sql.SQL("CREATE INDEX {} ON {} USING gin (to_tsvector('english'::regconfig, content))").format(
                        sql.Identifier(fts_name), self.ident(version.table)))
                    built = True
                for stale in existing:
                    if stale.startswith(identifier(version.table, "ann")[:54]) and stale != ann_name:
                        self.conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(self.ident(stale)))
        self.conn.execute(sql.SQL("ANALYZE {}").format(self.ident(version.table)))
        return built

    def update_settings(self, version: Version, settings: dict[str, Any]) -> None:
        self.conn.execute(sql.SQL("UPDATE {} SET settings = %s WHERE version = %s").format(self.ident(self.versions)),
                          (Jsonb(settings), version.number))
