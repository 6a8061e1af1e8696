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
