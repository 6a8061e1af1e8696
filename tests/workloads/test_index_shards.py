"""Sharded indexing (`spec.parallelism` > 1) at the workload level: shards by path hash, then the
finalize step; the result and the table equal a parallelism-1 run's, and a shard killed in the
middle and run again leaves no duplicate. Real PostgreSQL + pgvector, the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.index import run_index
from tunerag_workloads.index.finalize import finalize_index
from tunerag_workloads.index.pipeline import shard_of
from tunerag_workloads.retrieval import search

COUNTS = ("added", "updated", "deleted", "unchanged", "skipped")


def chunk_list(uri: str, table: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(uri) as conn:
        return conn.execute(sql.SQL("SELECT document, chunk_index, content_hash FROM {} ORDER BY 1, 2").format(
            sql.Identifier("public", table))).fetchall()


@contextmanager
def reference_database(postgres: Any) -> Iterator[str]:
    name = "ref_" + uuid.uuid4().hex[:12]
    uri = postgres.create_database(name)
    try:
        yield uri
    finally:
        postgres.drop_database(name)


def sharded_run(spec: dict[str, Any], uri: str, model: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    shards = [run_index(spec, db_uri=uri, model=model, shard=i) for i in range(spec["parallelism"])]
    return shards, finalize_index(spec, db_uri=uri, shards=shards)


def test_shards_and_finalize_equal_a_single_run(tmp_path: Path, pg_database: str, postgres: Any, minilm: Any,
                                                index_kit: Any) -> None:
    source = index_kit.write_corpus(tmp_path / "docs")
    spec = {**index_kit.index_spec(source), "parallelism": 3}
    single = index_kit.index_spec(source)
    paths = ["guide/install.md", "notes/cooking.txt", "web/astronomy.html", "papers/volcano.pdf"]
    assert len({shard_of(p, 3) for p in paths}) > 1  # the corpus really is spread over shards

    with pytest.raises(WorkloadError) as caught:
        run_index(spec, db_uri=pg_database, model=minilm)  # a sharded spec needs its shard
    assert caught.value.reason == "InvalidShard"

    shards = [run_index(spec, db_uri=pg_database, model=minilm, shard=i) for i in range(3)]
    assert [s["shard"] for s in shards] == [0, 1, 2] and {s["tableVersion"] for s in shards} == {"docs_v1"}
    assert sum(s["added"] for s in shards) == 4
    with psycopg.connect(pg_database) as conn:  # written, not served yet: the finalize step switches
        assert conn.execute("SELECT to_regclass('public.docs')").fetchone()[0] is None
        assert conn.execute("SELECT state FROM public.docs_versions").fetchone()[0] == "building"
    result = finalize_index(spec, db_uri=pg_database, shards=shards)
    again = finalize_index(spec, db_uri=pg_database, shards=shards)  # a retried finalize changes nothing

    with reference_database(postgres) as ref_uri:
        reference = run_index(single, db_uri=ref_uri, model=minilm)
        expected = chunk_list(ref_uri, "docs")
        got = chunk_list(pg_database, "docs")
        for key in ("documents", "chunks", "sourceDigest", "tableVersion", "dimension", *COUNTS):
            assert result[key] == reference[key], key
        assert {f["path"] for f in result["skippedFiles"]} == {f["path"] for f in reference["skippedFiles"]}
        assert result["rebuilt"] and result["previousVersion"] is None
        assert (again["documents"], again["chunks"], again["sourceDigest"]) == (result["documents"], result["chunks"], result["sourceDigest"])
        assert len(got) == len(set(got)) == result["chunks"] and got == expected  # every chunk exactly once

        with psycopg.connect(pg_database) as conn:
            indexes = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'docs_v1'")]
            assert any("USING hnsw" in d for d in indexes) and any("to_tsvector" in d for d in indexes)
            assert conn.execute("SELECT table_name, state FROM public.docs_versions").fetchall() == [("docs_v1", "live")]
        for question, document in index_kit.QUESTIONS.items():
            assert search(pg_database, "public", "docs", question, k=1, model=minilm)[0].document == document

        # Incremental: one changed, one removed, one new; each shard handles its own documents.
        (source / "notes/cooking.txt").write_text("Baking rye bread: use a rye sourdough starter and bake it for one hour.\n")
        (source / "web/astronomy.html").unlink()
        (source / "notes/tea.md").write_text("# Green tea\n\nBrew green tea at 80 degrees Celsius for two minutes.\n")
        shards, result = sharded_run(spec, pg_database, minilm)
        reference = run_index(single, db_uri=ref_uri, model=minilm)
        assert tuple(result[k] for k in COUNTS) == (1, 1, 1, 2, 1) == tuple(reference[k] for k in COUNTS)
        assert (result["documents"], result["chunks"], result["sourceDigest"]) == (reference["documents"], reference["chunks"], reference["sourceDigest"])
        assert result["tableVersion"] == "docs_v1" and not result["rebuilt"]
        assert chunk_list(pg_database, "docs") == chunk_list(ref_uri, "docs")
    assert search(pg_database, "public", "docs", "How hot should the water be for green tea?", k=1, model=minilm)[0].document == "notes/tea.md"

    # A chunking change: the shards build v2 beside v1, which serves until the finalize step switches.
    rebuild = {**spec, "chunking": {"strategy": "markdown", "size": 32, "overlap": 4}}
    shards = [run_index(rebuild, db_uri=pg_database, model=minilm, shard=i) for i in range(3)]
    assert {s["tableVersion"] for s in shards} == {"docs_v2"}
    assert {h.table_version for h in search(pg_database, "public", "docs", "green tea", k=2, model=minilm)} == {"docs_v1"}
    result = finalize_index(rebuild, db_uri=pg_database, shards=shards)
    assert result["rebuilt"] and result["previousVersion"] == "docs_v1" and result["added"] == 4
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT to_regclass('public.docs_v1')").fetchone()[0] is None
        assert conn.execute("SELECT table_name, state FROM public.docs_versions").fetchall() == [("docs_v2", "live")]

    with pytest.raises(WorkloadError) as caught:
        finalize_index(rebuild, db_uri=pg_database, shards=shards[:2])
    assert caught.value.reason == "ShardResultsIncomplete"


def test_killed_shard_is_finished_by_its_rerun_while_other_shards_write(
        tmp_path: Path, pg_database: str, postgres: Any, minilm: Any, index_kit: Any) -> None:
    """Shard 0 (the real CLI, $JOB_COMPLETION_INDEX=0) stops after one committed batch, holding its
    share of the index lock; shard 1 runs to the end meanwhile (the lock does not serialize
    shards); shard 0 is SIGKILLed and run again: no duplicate, nothing missing."""
    source = index_kit.write_corpus(tmp_path / "docs")
    for i in range(8):
        (source / f"notes/extra{i}.txt").write_text(f"Note number {i} about topic {i}. " * 20)
    spec = {**index_kit.index_spec(source, size=32, overlap=4), "parallelism": 2}
    mine = [p for p in (str(f.relative_to(source)) for f in source.rglob("*") if f.is_file()) if p.startswith("notes/extra")]
    assert sum(shard_of(p, 2) == 0 for p in mine) >= 2
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"kind": "VectorIndex", "namespace": "t", "name": "docs", "generation": 1, "spec": spec}))
    result_file = tmp_path / "result.json"
    env = {**os.environ, "TUNERAG_DB_URI": pg_database, "TUNERAG_RESULT_PATH": str(result_file), "JOB_COMPLETION_INDEX": "0",
           "TUNERAG_INDEX_BATCH_CHUNKS": "4", "TUNERAG_INDEX_TEST_PAUSE_AFTER_BATCHES": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tunerag_workloads.index", str(spec_file)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        stages = []
        for line in proc.stdout:
            if line.startswith("TUNERAG_PROGRESS "):
                stages.append(json.loads(line.removeprefix("TUNERAG_PROGRESS ")))
                if stages[-1]["stage"] == "paused":
                    break
            assert time.monotonic() < deadline, "shard 0 did not reach its first batch"
        assert stages and stages[-1]["stage"] == "paused", stages
        started = time.monotonic()
        other = run_index(spec, db_uri=pg_database, model=minilm, shard=1)  # while shard 0 holds its lock
        assert time.monotonic() - started < 30 and other["shard"] == 1 and other["added"] > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not result_file.exists()
    with psycopg.connect(pg_database) as conn:
        partial = conn.execute("SELECT document FROM public.docs_documents").fetchall()
        kept = [d for (d,) in partial if shard_of(d, 2) == 0]
    assert kept  # shard 0 committed a batch before it was killed

    rerun = run_index(spec, db_uri=pg_database, model=minilm, shard=0)
    assert rerun["unchanged"] == len(kept) and rerun["added"] > 0
    result = finalize_index(spec, db_uri=pg_database, shards=[rerun, other])
    with reference_database(postgres) as ref_uri:
        reference = run_index(index_kit.index_spec(source, size=32, overlap=4), db_uri=ref_uri, model=minilm)
        expected = chunk_list(ref_uri, "docs")
    got = chunk_list(pg_database, "docs")
    assert len(got) == len(set(got)) == result["chunks"] == reference["chunks"]  # no duplicate
    assert got == expected and result["documents"] == reference["documents"] == 4 + 8  # nothing missing
