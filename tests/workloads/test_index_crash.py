"""A run killed in the middle (SIGKILL, from outside) leaves a consistent table; the next run
finishes the job with no duplicate and no missing chunk. Runs the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.index import run_index


def chunk_set(uri: str, table: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(uri) as conn:
        return conn.execute(sql.SQL("SELECT document, chunk_index, content_hash FROM {} ORDER BY 1, 2").format(
            sql.Identifier("public", table))).fetchall()


def test_killed_run_is_finished_by_the_next_run(tmp_path: Path, pg_database: str, postgres: Any, index_kit: Any,
                                               request: pytest.FixtureRequest) -> None:
    source = index_kit.write_corpus(tmp_path / "docs")
    for i in range(6):
        (source / f"notes/extra{i}.txt").write_text(f"Note number {i} about topic {i}. " * 20)
    spec = index_kit.index_spec(source, size=32, overlap=4)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"kind": "VectorIndex", "namespace": "t", "name": "docs", "generation": 1, "spec": spec}))
    result_file = tmp_path / "result.json"
    env = {**os.environ, "TUNERAG_DB_URI": pg_database, "TUNERAG_RESULT_PATH": str(result_file),
           "TUNERAG_INDEX_BATCH_CHUNKS": "4", "TUNERAG_INDEX_TEST_PAUSE_AFTER_BATCHES": "2", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tunerag_workloads.index", str(spec_file)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    minilm = request.getfixturevalue("minilm")  # loads while the CLI starts (2 cores: in parallel)
    progress = []
    try:
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("TUNERAG_PROGRESS "):
                progress.append(json.loads(line.removeprefix("TUNERAG_PROGRESS ")))
                if progress[-1]["stage"] == "paused":
                    break
            assert time.monotonic() < deadline, "the CLI did not reach its second batch"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert progress and progress[-1]["stage"] == "paused", progress
    assert not result_file.exists()
    written = [p for p in progress if p["stage"] == "write"]
    assert written[-1]["batches"] == 2
    with psycopg.connect(pg_database) as conn:
        # consistent after the crash: bookkeeping lists exactly the documents whose chunks are there
        partial = conn.execute("SELECT count(DISTINCT document) FROM public.docs_v1").fetchone()[0]
        recorded = conn.execute("SELECT count(*), coalesce(sum(chunks), 0) FROM public.docs_documents").fetchone()
        assert recorded == (partial, conn.execute("SELECT count(*) FROM public.docs_v1").fetchone()[0])
        assert conn.execute("SELECT state FROM public.docs_versions").fetchone()[0] == "building"
        assert conn.execute("SELECT to_regclass('public.docs')").fetchone()[0] is None  # nothing half-built is served

    resumed = run_index(spec, db_uri=pg_database, model=minilm)

    total_docs = 4 + 6
    assert resumed["unchanged"] == partial > 0 and resumed["added"] == total_docs - partial
    assert resumed["documents"] == total_docs and resumed["tableVersion"] == "docs_v1"
    reference_db = "ref_" + uuid.uuid4().hex[:12]
    reference_uri = postgres.create_database(reference_db)
    try:
        reference = run_index(spec, db_uri=reference_uri, model=minilm)
        got, expected = chunk_set(pg_database, "docs"), chunk_set(reference_uri, "docs")
    finally:
        postgres.drop_database(reference_db)
    assert len(got) == len(set(got)) == resumed["chunks"]  # no duplicate
    assert got == expected and reference["chunks"] == resumed["chunks"]  # nothing missing


def test_database_lost_mid_run_is_retryable_and_the_next_attempt_finishes(
        tmp_path: Path, pg_database: str, postgres: Any, index_kit: Any, minilm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL drops the connection after two committed batches (a restart, a failover): the
    run fails as retryable (exit code 3 under the contract, so the Job tries again with back-off)
    without the URI in its message, and the next attempt finishes with the two batches kept."""
    source = index_kit.write_corpus(tmp_path / "docs")
    for i in range(6):
        (source / f"notes/extra{i}.txt").write_text(f"Note number {i} about topic {i}. " * 20)
    spec = index_kit.index_spec(source, size=32, overlap=4)
    monkeypatch.setenv("TUNERAG_INDEX_BATCH_CHUNKS", "4")
    database = str(psycopg.conninfo.conninfo_to_dict(pg_database)["dbname"])

    def cut(batches: int) -> None:
        if batches == 2:
            with psycopg.connect(postgres.uri, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                              [database])

    with pytest.raises(WorkloadError) as failed:
        run_index(spec, db_uri=pg_database, model=minilm, on_batch=cut)
    assert failed.value.retryable and failed.value.reason == "DatabaseConnectionLost"
    assert pg_database not in failed.value.message and "terminat" in failed.value.message
    with psycopg.connect(pg_database) as conn:
        kept = conn.execute("SELECT count(*) FROM public.docs_documents").fetchone()[0]
    assert kept > 0

    resumed = run_index(spec, db_uri=pg_database, model=minilm)
    assert resumed["unchanged"] == kept and resumed["added"] == 10 - kept and resumed["documents"] == 10
    got = chunk_set(pg_database, "docs")
    assert len(got) == len(set(got)) == resumed["chunks"]
    assert {d for d, _, _ in got} == {"guide/install.md", "notes/cooking.txt", "web/astronomy.html", "papers/volcano.pdf",
                                      *(f"notes/extra{i}.txt" for i in range(6))}
