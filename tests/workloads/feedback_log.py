"""An exchange log (the serving workload's table, created by its own DDL) filled with rows as the
serving workload writes them: for the feedback-to-dataset and FineTuneSchedule tests."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
from psycopg import sql

from tunerag_workloads.serve.feedback import DDL


def create_log(uri: str, table: str = "feedback") -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(sql.SQL(DDL).format(table=sql.Identifier("public", table)))


def insert(uri: str, rows: list[dict[str, Any]], table: str = "feedback", now: dt.datetime | None = None) -> None:
    """Inserts rows; columns a row does not set get defaults: namespace ns, service qa, adapter
    qa-v1, created an hour and labelled positive half an hour before `now` (default: now)."""
    now = now or dt.datetime.now(dt.UTC)
    with psycopg.connect(uri, autocommit=True) as conn:
        for r in rows:
            row = {"exchange_id": str(uuid.uuid4()), "created_at": now - dt.timedelta(hours=1), "namespace": "ns",
                   "service": "qa", "adapter_version": "qa-v1", "endpoint": "completions", "chunk_ids": [7],
                   "chunk_documents": ["guide.md"], "latency_ms": 12.5, "feedback_label": "positive",
                   "feedback_comment": "my name is Alice", "feedback_at": now - dt.timedelta(minutes=30), **r}
            row.setdefault("prompt", f"Context: secret\nQuestion: {row['question']}")
            cols = list(row)
            conn.execute(sql.SQL("INSERT INTO {t} ({c}) VALUES ({v})").format(
                t=sql.Identifier("public", table), c=sql.SQL(", ").join(map(sql.Identifier, cols)),
                v=sql.SQL(", ").join(sql.Placeholder(c) for c in cols)), row)
