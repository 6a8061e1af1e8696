"""Reads the exchange log, builds the mix (`mix.py`) and publishes it under
`<output>/<prefix>/<sha256>/` (train.jsonl, validation.jsonl, manifest.json written last).

The request (the operator renders it from the FineTuneSchedule and its RolloutPolicy):

    {"table": {"schema", "table"}, "namespace", "services": [...], "labels": [...],
     "adapterVersions": [...], "maxAgeSeconds": null | s, "asOf": RFC 3339, "promptField", "dropFields",
     "mixRatio", "holdoutFraction", "maxRows", "seed", "baselineVersion": the version now serving or null,
     "original": {"uri", "format", "fields": {"prompt", "completion"}}, "output": {"uri", "prefix"}}

Only exchanges of the policy's services in its namespace, with one of the labels, answered by one of
the adapter versions (if given), created within maxAge of asOf and labelled no later than asOf are
read, newest feedback first. The digest is the folder's sha256 as `finetune.publish.build_manifest`
computes it, so the same rows give the same folder: a retried pod, or a run on unchanged feedback,
finds the dataset already there. The result:

    {"trainUri", "validationUri", "uri", "digest": "sha256:<hex>", "rows": {...}, "counts": {...},
     "watermark": newest feedback_at read}   or   {"skipped": true, "reason": "NotEnoughFeedback", ...}
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from tunerag_workloads.contract import WorkloadError, report_progress
from tunerag_workloads.feedback_dataset import mix
from tunerag_workloads.finetune.data import read_rows
from tunerag_workloads.finetune.publish import MANIFEST, build_manifest
from tunerag_workloads.finetune.spec import DatasetSource
from tunerag_workloads.finetune.storage import Store

SQL_IDENTIFIER = r"^[a-z_][a-z0-9_]*$"
SELECT = ("SELECT exchange_id::text AS exchange_id, created_at, namespace, service, adapter_version, endpoint, question, "
          "prompt, chunk_ids, chunk_documents, answer, latency_ms, feedback_label, feedback_comment, feedback_at "
          "FROM {table} WHERE namespace = %(namespace)s AND service = ANY(%(services)s) "
          "AND feedback_label = ANY(%(labels)s) AND feedback_at IS NOT NULL AND feedback_at <= %(as_of)s "
          "AND created_at <= %(as_of)s")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="ignore")


class Table(_Model):
    schema_: str = Field(default="public", alias="schema", pattern=SQL_IDENTIFIER)
    table: str = Field(pattern=SQL_IDENTIFIER)


class Output(_Model):
    uri: str
    prefix: str = Field(pattern=r"^[a-z0-9][-a-z0-9./]*$")


class Request(_Model):
    table: Table
    namespace: str
    services: list[str] = Field(min_length=1)
    labels: list[str] = Field(default_factory=lambda: ["positive"], min_length=1)
    adapter_versions: list[str] = Field(default_factory=list)
    max_age_seconds: float | None = Field(default=None, gt=0)
    as_of: dt.datetime
    prompt_field: str = Field(default="prompt", pattern=r"^(prompt|question)$")
    drop_fields: list[str] = Field(default_factory=list)
    mix_ratio: float = Field(default=0.5, gt=0, le=1)
    holdout_fraction: float = Field(default=0.2, gt=0, le=0.5)
    max_rows: int = Field(default=100_000, ge=2)
    seed: int = 42
    baseline_version: str | None = None
    original: DatasetSource
    output: Output


def parse_request(spec: dict[str, Any]) -> Request:
    try:
        req = Request.model_validate(spec)
    except ValidationError as exc:
        raise WorkloadError("InvalidSpec", f"the dataset request is not valid: {exc}") from exc
    if req.as_of.tzinfo is None:
        raise WorkloadError("InvalidSpec", "asOf needs a time zone")
    if ".." in req.output.prefix.split("/"):
        raise WorkloadError("InvalidSpec", "output.prefix must not contain '..'")
    return req


def read_feedback(uri: str, req: Request) -> list[dict[str, Any]]:
    """The matching rows, newest feedback first; none when the log's table does not exist yet."""
    import psycopg
    from psycopg import sql

    from tunerag_workloads.index.store import connect, sanitize

    query = SELECT
    params: dict[str, Any] = {"namespace": req.namespace, "services": req.services, "labels": req.labels,
                              "as_of": req.as_of}
    if req.max_age_seconds is not None:
        query += " AND created_at >= %(as_of)s - make_interval(secs => %(max_age)s)"
        params["max_age"] = req.max_age_seconds
    if req.adapter_versions:
        query += " AND adapter_version = ANY(%(versions)s)"
        params["versions"] = req.adapter_versions
    query += " ORDER BY feedback_at DESC, exchange_id LIMIT %(limit)s"
    params["limit"] = req.max_rows
    conn = connect(uri)
    try:
        from psycopg.rows import dict_row

        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql.SQL(query).format(table=sql.Identifier(req.table.schema_, req.table.table)), params)
            return list(cur.fetchall())
    except psycopg.errors.UndefinedTable:
        return []
    except psycopg.Error as exc:
        raise WorkloadError("FeedbackQueryFailed", f"reading {req.table.schema_}.{req.table.table} failed: "
                                                   f"{sanitize(str(exc), uri)}") from None
    finally:
        conn.close()


def _write(rows: list[dict[str, Any]], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


def build(req: Request, feedback: list[dict[str, Any]]) -> dict[str, Any]:
    """Builds and publishes the dataset from the log's rows; returns the result."""
    counts = mix.Counts()
    watermark = mix.plain(max((r["feedback_at"] for r in feedback if r.get("feedback_at")), default=None))
    fb = mix.feedback_rows(feedback, req.prompt_field, set(req.drop_fields), counts)
    if len(fb) < 2:
        return {"watermark": watermark, "counts": counts.as_dict(), "skipped": True, "reason": "NotEnoughFeedback",
                "message": f"{len(fb)} usable feedback rows; a dataset needs at least 2 (one to train on, one to hold out)"}
    fields = req.original.fields
    original: list[mix.Row] = []
    if req.mix_ratio < 1:
        raw, _ = read_rows(req.original)
        original = mix.original_rows(raw, fields.prompt, fields.completion, counts)
        if not original:
            raise WorkloadError("InsufficientData", f"the template's train data {req.original.uri} has no rows with string "
                                                    f"{fields.prompt!r} and {fields.completion!r} fields to mix with")
    result = mix.mix(fb, original, ratio=req.mix_ratio, holdout_fraction=req.holdout_fraction, seed=req.seed,
                     counts=counts, baseline=req.baseline_version)
    rows = result.rows()
    store = Store(req.output.uri)
    store.check_writable()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dataset"
        folder.mkdir()
        _write(result.train, folder / "train.jsonl")
        _write(result.validation, folder / "validation.jsonl")
        manifest = build_manifest(folder)
        digest = manifest["sha256"]
        rel = f"{req.output.prefix.strip('/')}/{digest}"
        if not store.exists(f"{rel}/{MANIFEST}"):
            (folder / MANIFEST).write_text(json.dumps({
                **manifest, "rows": rows, "counts": counts.as_dict(), "asOf": mix.plain(req.as_of),
                "watermark": watermark, "dropFields": sorted(req.drop_fields), "promptField": req.prompt_field,
                "mixRatio": req.mix_ratio, "holdoutFraction": req.holdout_fraction, "original": req.original.uri,
                "baselineVersion": req.baseline_version,
            }, indent=2, sort_keys=True))
            store.put_folder(folder, rel, marker=MANIFEST)
    uri = store.uri_of(rel)
    return {"watermark": watermark, "counts": counts.as_dict(), "uri": uri, "trainUri": f"{uri}/train.jsonl",
            "validationUri": f"{uri}/validation.jsonl", "digest": f"sha256:{digest}", "rows": rows}


def build_main(request: dict[str, Any]) -> dict[str, Any]:
    req = parse_request(request.get("spec", request))
    uri = os.environ.get("TUNERAG_DB_URI", "")
    report_progress(phase="ReadingFeedback")
    rows = read_feedback(uri, req)
    report_progress(phase="Building", feedbackRows=len(rows))
    return build(req, rows)
