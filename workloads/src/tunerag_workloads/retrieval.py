"""Retrieval over a tunerag VectorIndex: vector search, optionally hybrid with full-text search.

    chunks = search(uri_or_conn, "public", "docs", "how do I rotate keys?", k=5)

Reads the live table version's settings (model, normalization, distance) from `<table>_versions`,
embeds the query with that model, and queries the view `<schema>.<table>` with `hnsw.ef_search`
(and `ivfflat.probes`) set for the transaction only. Every result names the table version it came
from; if a rebuild switched versions between reading the settings and the query, the search is
repeated against the new version, so one answer never mixes two models.

On a connection that is reused (the serving workload keeps a few), the pgvector type and the live
version's settings are looked up once and kept with the connection (a switch is still noticed:
the results name their version), and the query goes out as one pipeline (BEGIN, the settings,
SELECT, COMMIT): one round trip per search instead of seven.

Identical chunks (the same content hash: a document vendored twice, a boilerplate footer) are
returned once, by default: the best-ranked copy, naming the documents of the others in
`duplicates`. A top k of copies would fill a prompt with one passage k times.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

OPERATOR = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}
RRF_K = 60
MAX_CANDIDATES = 1000  # hnsw.ef_search's own maximum


@dataclass
class Chunk:
    id: int
    document: str
    chunk_index: int
    content: str
    score: float
    heading_path: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    table_version: str = ""
    vector_rank: int | None = None
    text_rank: int | None = None
    content_hash: str = ""
    duplicates: list[str] = field(default_factory=list)  # documents of identical chunks left out


def _score(distance_kind: str, value: float) -> float:
    if distance_kind == "cosine":
        return 1.0 - value
    return -value  # l2: negative distance; ip: <#> is the negative inner product


# Per connection: (schema, table) -> (live version, its settings), as last read.
_LIVE: weakref.WeakKeyDictionary[psycopg.Connection[Any], dict[tuple[str, str], tuple[str, dict[str, Any]]]] = \
    weakref.WeakKeyDictionary()


def _registered(conn: psycopg.Connection[Any]) -> None:
    from pgvector.psycopg import register_vector

    if conn.adapters.types.get("vector") is None:
        register_vector(conn)


def _live(conn: psycopg.Connection[Any], schema: str, table: str) -> tuple[str, dict[str, Any]]:
    from tunerag_workloads.index.store import identifier

    versions = sql.Identifier(schema, identifier(table, "versions"))
    try:
        row = conn.execute(sql.SQL("SELECT table_name, settings FROM {} WHERE state = 'live'").format(versions)).fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    if row is None:
        raise LookupError(f"{schema}.{table} has no live version yet: the index has not completed a first run")
    return row[0], row[1]


def _filters(filters: dict[str, Any] | None) -> tuple[list[sql.Composable], list[Any]]:
    from psycopg.types.json import Jsonb

    clauses: list[sql.Composable] = []
    params: list[Any] = []
    for key, value in (filters or {}).items():
        if key == "document":
            clauses.append(sql.SQL("document = ANY(%s)"))
            params.append([value] if isinstance(value, str) else list(value))
        elif key == "documentPrefix":
            clauses.append(sql.SQL("document LIKE %s"))
            params.append(re.sub(r"([\\%_])", r"\\\1", str(value)) + "%")
        else:
            clauses.append(sql.SQL("metadata @> %s"))
            params.append(Jsonb({key: value}))
    return clauses, params


def _where(clauses: list[sql.Composable]) -> sql.Composable:
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")


def search(
    conn_or_uri: psycopg.Connection[Any] | str,
    schema: str,
    table: str,
    query: str,
    k: int = 5,
    filters: dict[str, Any] | None = None,
    ef_search: int = 100,
    model: Any = None,
    *,
    probes: int = 10,
    hybrid: bool = False,
    candidates: int | None = None,
    distinct: bool = True,
) -> list[Chunk]:
    """The k chunks nearest to `query`, best first, with scores and provenance.

    `model`: a SentenceTransformer, a model name/path, or None for the live version's model.
    `filters`: {"document": path or list, "documentPrefix": str, <metadata key>: value}.
    `hybrid`: fuse vector and full-text (English) rankings with reciprocal rank fusion; `score`
    is then the fused score.
    `distinct`: one chunk per content hash (the best-ranked; the others' documents in
    `duplicates`); the candidates fetched grow until k distinct ones are found or none are left."""
    from tunerag_workloads.index import embed

    own = isinstance(conn_or_uri, str)
    conn = psycopg.connect(conn_or_uri, autocommit=True) if isinstance(conn_or_uri, str) else conn_or_uri
    try:
        _registered(conn)
        known = _LIVE.setdefault(conn, {})
        for _ in range(3):
            cached = known.get((schema, table))
            version, settings = cached or _live(conn, schema, table)
            known[(schema, table)] = (version, settings)
            encoder = model
            if encoder is None or isinstance(encoder, str):
                encoder = embed.load_model(encoder or settings["model"], "auto")
            vector = embed.encode(encoder, [query], 1, bool(settings.get("normalize", True)))[0]
            if len(vector) != int(settings["dimension"]):
                raise ValueError(f"the query model produces {len(vector)} dimensions; {version} holds {settings['dimension']}")
            limit = max(k, candidates or (4 * k if hybrid else k), 2 * k if distinct else k)
            try:
                while True:
                    ranked, exhausted = _query(conn, schema, table, settings, vector, query, limit, filters, ef_search,
                                               probes, hybrid)
                    chunks = _distinct(ranked)[:k] if distinct else ranked[:k]
                    if len(chunks) == k or exhausted or limit >= MAX_CANDIDATES:
                        break
                    limit = min(4 * limit, MAX_CANDIDATES)  # copies crowded the candidates out
            except psycopg.errors.DataException:
                if cached is None:
                    raise
                known.pop((schema, table), None)  # settings of a version switched away (another dimension)
                continue
            if all(c.table_version == version for c in chunks):
                return chunks
            known.pop((schema, table), None)  # a rebuild switched versions: read the new one
        raise RuntimeError(f"{schema}.{table} switched versions repeatedly during the search")
    finally:
        if own:
            conn.close()


def _distinct(ranked: list[Chunk]) -> list[Chunk]:
    """The first chunk of each content hash, in rank order; the later copies' documents noted on it."""
    first: dict[str, Chunk] = {}
    for chunk in ranked:
        kept = first.setdefault(chunk.content_hash, chunk)
        if kept is not chunk and chunk.document != kept.document and chunk.document not in kept.duplicates:
            kept.duplicates.append(chunk.document)
    return list(first.values())


def _query(conn: psycopg.Connection[Any], schema: str, table: str, settings: dict[str, Any], vector: Any, query: str,
           limit: int, filters: dict[str, Any] | None, ef_search: int, probes: int,
           hybrid: bool) -> tuple[list[Chunk], bool]:
    """Up to `limit` chunks, ranked; and whether that was all there is (fewer rows than asked)."""
    distance = settings.get("distance", "cosine")
    op = sql.SQL(OPERATOR[distance])
    view = sql.Identifier(schema, table)
    clauses, params = _filters(filters)
    where = _where(clauses)
    columns = sql.SQL("id, document, chunk_index, content, metadata, table_version, content_hash")
    with conn.pipeline(), conn.transaction():
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true), set_config('ivfflat.probes', %s, true)",
                     [str(int(max(ef_search, limit))), str(int(probes))])
        rows = conn.execute(sql.SQL("SELECT {}, embedding {} %s AS distance FROM {} {} ORDER BY embedding {} %s LIMIT %s").format(
            columns, op, view, where, op), [vector, *params, vector, limit]).fetchall()
        vector_hits = [_chunk(r, _score(distance, float(r[7]))) for r in rows]
        if not hybrid:
            return vector_hits, len(rows) < limit
        # any of the query's words (OR): the fusion, not the text match, decides the order
        tsquery = sql.SQL("replace(plainto_tsquery('english', %s)::text, ' & ', ' | ')::tsquery")
        text_where = _where([sql.SQL("to_tsvector('english'::regconfig, content) @@ ") + tsquery, *clauses])
        text_rows = conn.execute(sql.SQL(
            "SELECT {}, ts_rank_cd(to_tsvector('english'::regconfig, content), {}) AS rank "
            "FROM {} {} ORDER BY rank DESC, id LIMIT %s").format(columns, tsquery, view, text_where), [query, query, *params, limit]).fetchall()
    fused: dict[int, Chunk] = {}
    scores: dict[int, float] = {}
    for rank, chunk in enumerate(vector_hits, 1):
        chunk.vector_rank = rank
        fused[chunk.id] = chunk
        scores[chunk.id] = 1.0 / (RRF_K + rank)
    for rank, row in enumerate(text_rows, 1):
        chunk = fused.setdefault(row[0], _chunk(row, 0.0))
        chunk.text_rank = rank
        scores[row[0]] = scores.get(row[0], 0.0) + 1.0 / (RRF_K + rank)
    for chunk_id, chunk in fused.items():
        chunk.score = scores[chunk_id]
    return sorted(fused.values(), key=lambda c: -c.score), len(rows) < limit and len(text_rows) < limit


def _chunk(row: tuple[Any, ...], score: float) -> Chunk:
    metadata = row[4] or {}
    return Chunk(id=row[0], document=row[1], chunk_index=row[2], content=row[3], score=score,
                 heading_path=list(metadata.get("headingPath") or []), metadata=metadata, table_version=row[5],
                 content_hash=row[6])
