"""PostgreSQL faults under running workloads, on the real components: the database drops the
indexing pod's connection in the middle of a run (a restart or a failover), and the serving
workload's exchange log loses its database for a while.

Expected: the fault is retried with back-off and reported where the user looks, and nothing is
lost or half-written: every document's chunks are in the table exactly once, every logged exchange
lands exactly once with its feedback.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from kubernetes import client
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from security.conftest import DOCS, condition, create, get, pvc, secret, vectorindex_spec, write_docs
from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from substrate.postgres import Postgres
from tunerag_workloads.serve.feedback import FeedbackLog


def _terminate_connections(admin_uri: str, database: str) -> int:
    with psycopg.connect(admin_uri, autocommit=True) as admin:
        rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                             "AND pid <> pg_backend_pid()", [database]).fetchall()
    return len(rows)


def _paused_pod(api: client.ApiClient, namespace: str) -> str | None:
    core = client.CoreV1Api(api)
    for pod in core.list_namespaced_pod(namespace).items:
        if (pod.status.phase or "") == "Running":
            log = core.read_namespaced_pod_log(pod.metadata.name, namespace)
            if '"stage":"paused"' in log:
                return str(pod.metadata.name)
    return None


def test_database_lost_mid_index_run_is_retried_and_reported(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str,
    pg_database: str, postgres: Postgres,
) -> None:
    write_docs(job_runner.claim_path(namespace, "docs") / "handbook")
    pvc(api, namespace, "docs")
    secret(api, namespace, "db", {"uri": pg_database})
    database = str(conninfo_to_dict(pg_database)["dbname"])
    # Every attempt stops for 4 s after its first committed batch: the moment the database goes.
    pause = {"TUNERAG_INDEX_TEST_PAUSE_AFTER_BATCHES": "1", "TUNERAG_INDEX_TEST_PAUSE_SECONDS": "4"}
    job_runner.env_overrides.update(pause)
    try:
        create(api, namespace, "VectorIndex", "handbook", vectorindex_spec())
        first = wait_for(lambda: _paused_pod(api, namespace), 180, "the indexing pod to commit its first batch")
        assert _terminate_connections(postgres.uri, database) >= 1

        seen: dict[str, Any] = {}

        def ready() -> bool:
            obj = get(api, namespace, "VectorIndex", "handbook")
            cond = condition(obj, "Ready") or {}
            if cond.get("reason") == "DatabaseConnectionLost":
                seen.update(cond, phase=obj["status"].get("phase"))
            assert obj["status"].get("phase") != "Failed", obj["status"]
            return obj["status"].get("phase") == "Ready"

        wait_for(ready, 240, "the VectorIndex to be Ready after a retried attempt", interval=0.3)
    finally:
        for key in pause:
            job_runner.env_overrides.pop(key, None)

    # Reported while it retried: the reason, that it retries, and no trace of the URI.
    assert seen.get("status") == "False" and seen.get("phase") == "Indexing", seen
    assert seen["message"].startswith("Retrying (1 attempt failed, the Job retries with back-off): the database connection failed")
    assert pg_database not in seen["message"] and str(conninfo_to_dict(pg_database)["password"]) not in seen["message"]
    events = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector="involvedObject.name=handbook").items
    assert any(e.reason == "DatabaseConnectionLost" and e.type == "Warning" for e in events)

    job = client.BatchV1Api(api).read_namespaced_job("handbook-g1", namespace)
    assert (job.status.failed, job.status.succeeded) == (1, 1)  # one lost attempt, one retry, one Job
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    assert first in {p.metadata.name for p in pods if p.status.phase == "Failed"}

    status = get(api, namespace, "VectorIndex", "handbook")["status"]
    assert status["documents"] == len(DOCS) and status["lastRun"]["added"] + status["lastRun"]["unchanged"] == len(DOCS)
    with psycopg.connect(pg_database) as conn:
        rows = conn.execute("SELECT document, chunk_index FROM public.handbook").fetchall()
        recorded = conn.execute("SELECT count(*), sum(chunks) FROM public.handbook_documents").fetchone()
    assert len(rows) == len(set(rows)) == status["chunks"]  # no chunk twice
    assert {d for d, _ in rows} == set(DOCS) and recorded == (len(DOCS), len(rows))  # none missing


def test_exchange_log_outage_loses_nothing_and_writes_nothing_twice(pg_database: str, postgres: Postgres) -> None:
    """The serving workload's log writer (the real class, on the real server): entries queued
    while the database refuses connections are written, in order and once each, when it is back."""
    database = str(conninfo_to_dict(pg_database)["dbname"])

    def allow(on: bool) -> None:
        with psycopg.connect(postgres.uri, autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(sql.Identifier(database), sql.Literal(on)))
        if not on:
            _terminate_connections(postgres.uri, database)

    drops: list[int] = []
    log = FeedbackLog(pg_database, "serving", "exchanges", on_drop=drops.append, mask=lambda s: s.replace(pg_database, "***"),
                      retry_seconds=120)
    log.start()

    def exchange(i: int) -> str:
        exchange_id = str(uuid.uuid4())
        log.log_exchange({"exchange_id": exchange_id, "created_at": time.time(), "namespace": "ns", "service": "qa",
                          "adapter_version": "qa-v1", "endpoint": "completions", "question": f"q{i}", "prompt": f"p{i}",
                          "chunk_ids": [], "chunk_documents": [], "answer": f"a{i}", "latency_ms": 1.0})
        return exchange_id

    def rows() -> list[tuple[Any, ...]]:
        with psycopg.connect(pg_database) as conn:
            if conn.execute("SELECT to_regclass('serving.exchanges')").fetchone() == (None,):
                return []  # the writer creates it with its first entry
            return conn.execute("SELECT exchange_id::text, question, feedback_label FROM serving.exchanges ORDER BY created_at").fetchall()

    try:
        ids = [exchange(i) for i in range(3)]
        wait_for(lambda: len(rows()) == 3, 30, "the first exchanges to be logged")
        allow(False)
        try:
            ids += [exchange(i) for i in range(3, 10)]
            log.log_feedback(ids[5], "negative", "wrong moon")
            time.sleep(3)  # several back-off rounds against a database that refuses
        finally:
            allow(True)
        wait_for(lambda: len(logged := rows()) == 10 and logged[5][2] == "negative", 60, "the queued entries to land")
    finally:
        log.close(timeout=10)
    logged = rows()
    assert [r[0] for r in logged] == ids and [r[1] for r in logged] == [f"q{i}" for i in range(10)]
    assert [r[2] for r in logged] == [None] * 5 + ["negative"] + [None] * 4
    assert drops == []
