"""The index workload against a real PostgreSQL + pgvector and the real all-MiniLM-L6-v2 (CPU)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.index import run_index
from tunerag_workloads.retrieval import search


def rows(uri: str, table: str, schema: str = "public") -> dict[tuple[str, int], tuple[int, int, str]]:
    """(document, chunk_index) -> (id, xmin, content_hash) of a table version."""
    with psycopg.connect(uri) as conn:
        found = conn.execute(sql.SQL("SELECT document, chunk_index, id, xmin::text::bigint, content_hash FROM {}").format(
            sql.Identifier(schema, table))).fetchall()
    return {(d, i): (row_id, xmin, h) for d, i, row_id, xmin, h in found}


def test_end_to_end_indexes_the_folder_and_answers_known_questions(tmp_path: Path, pg_database: str, minilm: Any, index_kit: Any) -> None:
    source = index_kit.write_corpus(tmp_path / "docs")
    (source / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")

    result = run_index(index_kit.index_spec(source), db_uri=pg_database, model=minilm)

    assert result["documents"] == 4
    assert (result["added"], result["updated"], result["deleted"], result["unchanged"]) == (4, 0, 0, 0)
    skipped = {f["path"]: f["reason"] for f in result["skippedFiles"]}
    assert set(skipped) == {"papers/broken.pdf", "logo.png"} and result["skipped"] == 2
    assert "PDF" in skipped["papers/broken.pdf"]
    assert result["dimension"] == 384 and result["tableVersion"] == "docs_v1"
    assert result["sourceDigest"].startswith("sha256:")
    assert len(json.dumps(result)) < 4096

    with psycopg.connect(pg_database) as conn:
        chunks = conn.execute("SELECT document, chunk_index, content, metadata, content_hash, vector_dims(embedding), "
                              "table_version FROM public.docs ORDER BY document, chunk_index").fetchall()
        kinds = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'docs_v1'").fetchall())
    assert result["chunks"] == len(chunks)
    by_doc: dict[str, list[int]] = {}
    for document, index, content, metadata, _, dims, version in chunks:
        by_doc.setdefault(document, []).append(index)
        assert dims == 384 and version == "docs_v1" and content.strip()
        assert metadata["document"] == document and metadata["chunkIndex"] == index
    assert set(by_doc) == {"guide/install.md", "notes/cooking.txt", "web/astronomy.html", "papers/volcano.pdf"}
    assert all(indexes == list(range(len(indexes))) for indexes in by_doc.values())
    text = "\n".join(c[2] for c in chunks)
    assert "Galileo" in text and "magma" in text  # HTML and PDF text extracted
    assert "do not index me" not in text and "color:red" not in text and "never be indexed" not in text
    assert any("USING hnsw" in d and "vector_cosine_ops" in d and "m='16'" in d for d in kinds.values())
    # markdown chunks keep their headings; the code-block comment is not a heading
    install = [c for c in chunks if c[0] == "guide/install.md"]
    assert any(c[3]["headingPath"] == ["Installing Zephyr", "Requirements"] and c[2].startswith("# Installing Zephyr\n## Requirements") for c in install)
    assert all("this is a comment" not in h for c in install for h in c[3]["headingPath"])

    for question, document in index_kit.QUESTIONS.items():
        hits = search(pg_database, "public", "docs", question, k=3, model=minilm)
        assert hits[0].document == document, (question, [(h.document, h.score) for h in hits])
        assert hits[0].score > hits[-1].score or len({h.document for h in hits}) == 1
        assert hits[0].table_version == "docs_v1"
        hybrid = search(pg_database, "public", "docs", question, k=3, model=minilm, hybrid=True)
        assert hybrid[0].document == document
    requirements = search(pg_database, "public", "docs", "Which Python and PostgreSQL versions does Zephyr need?", k=1, model=minilm)
    assert requirements[0].heading_path == ["Installing Zephyr", "Requirements"]
    only_pdf = search(pg_database, "public", "docs", "How do I bake sourdough bread?", k=2, model=minilm, filters={"format": "pdf"})
    assert {h.document for h in only_pdf} == {"papers/volcano.pdf"}


def test_incremental_run_touches_only_what_changed(tmp_path: Path, pg_database: str, minilm: Any, index_kit: Any) -> None:
    source = index_kit.write_corpus(tmp_path / "docs")
    run_index(index_kit.index_spec(source), db_uri=pg_database, model=minilm)
    before = rows(pg_database, "docs_v1")

    (source / "notes/cooking.txt").write_text("Baking rye bread: use a rye sourdough starter and bake it for one hour.\n")
    (source / "web/astronomy.html").unlink()
    (source / "notes/tea.md").write_text("# Green tea\n\nBrew green tea at 80 degrees Celsius for two minutes.\n")
    result = run_index(index_kit.index_spec(source), db_uri=pg_database, model=minilm)

    assert (result["added"], result["updated"], result["deleted"], result["unchanged"]) == (1, 1, 1, 2)
    assert result["tableVersion"] == "docs_v1" and not result["rebuilt"]
    after = rows(pg_database, "docs_v1")
    for key, value in before.items():
        if key[0] in ("guide/install.md", "papers/volcano.pdf"):
            assert after[key] == value, key  # same id, same xmin: not rewritten
    assert not any(k[0] == "web/astronomy.html" for k in after)
    new_ids = {v[0] for k, v in after.items() if k[0] in ("notes/cooking.txt", "notes/tea.md")}
    assert new_ids and new_ids.isdisjoint(v[0] for v in before.values())
    assert result["chunks"] == len(after)
    hits = search(pg_database, "public", "docs", "How hot should the water be for green tea?", k=1, model=minilm)
    assert hits[0].document == "notes/tea.md"

    again = run_index(index_kit.index_spec(source), db_uri=pg_database, model=minilm)
    assert (again["added"], again["updated"], again["deleted"], again["unchanged"], again["embeddedChunks"]) == (0, 0, 0, 4, 0)
    assert rows(pg_database, "docs_v1") == after
    assert again["sourceDigest"] == result["sourceDigest"] != run_index.__name__


def test_a_passage_stored_twice_is_retrieved_once_naming_its_copies(
        tmp_path: Path, pg_database: str, minilm: Any, index_kit: Any) -> None:
    """A vendored copy of a document must not fill the top k with one passage: the best copy is
    returned once, naming the other documents; k distinct passages come back."""
    source = index_kit.write_corpus(tmp_path / "docs")
    tea = "# Green tea\n\nBrew green tea at 80 degrees Celsius for two minutes.\n"
    for rel in ("notes/tea.md", "vendor/a/tea.md", "vendor/b/tea.md"):
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(tea)
    run_index(index_kit.index_spec(source), db_uri=pg_database, model=minilm)
    question = "How hot should the water be for green tea?"

    raw = search(pg_database, "public", "docs", question, k=3, model=minilm, distinct=False)
    assert sorted(c.document for c in raw) == ["notes/tea.md", "vendor/a/tea.md", "vendor/b/tea.md"]  # the problem
    for hybrid in (False, True):
        hits = search(pg_database, "public", "docs", question, k=3, model=minilm, hybrid=hybrid)
        assert len(hits) == 3 and len({c.content_hash for c in hits}) == 3 and len({c.content for c in hits}) == 3
        best = hits[0]
        assert "80 degrees" in best.content
        assert sorted([best.document, *best.duplicates]) == ["notes/tea.md", "vendor/a/tea.md", "vendor/b/tea.md"]
        assert all(not c.duplicates for c in hits[1:])
    # Only copies left under a filter: one result, not three.
    only_tea = search(pg_database, "public", "docs", question, k=3, model=minilm, filters={"documentPrefix": "vendor/"})
    assert [(c.document, c.duplicates) for c in only_tea] == [(only_tea[0].document, ["vendor/b/tea.md" if
                                                                only_tea[0].document == "vendor/a/tea.md" else "vendor/a/tea.md"])]


def test_chunking_change_builds_a_new_version_and_switches_readers_atomically(
        tmp_path: Path, pg_database: str, minilm: Any, index_kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    source = index_kit.write_corpus(tmp_path / "docs")
    first = run_index(index_kit.index_spec(source, size=64), db_uri=pg_database, model=minilm)
    old_rows = rows(pg_database, "docs_v1")
    monkeypatch.setenv("TUNERAG_INDEX_BATCH_CHUNKS", "2")  # several batches, one transaction each
    seen_during: list[set[str]] = []
    counts_during: list[int] = []

    def during_rebuild(batch: int) -> None:
        with psycopg.connect(pg_database) as reader:
            seen_during.append({r[0] for r in reader.execute("SELECT table_version FROM public.docs")})
            counts_during.append(reader.execute("SELECT count(*) FROM public.docs").fetchone()[0])
        hits = search(pg_database, "public", "docs", "Which moons orbit Jupiter?", k=2, model=minilm)
        seen_during.append({h.table_version for h in hits})
        hits = search(kept, "public", "docs", "Which moons orbit Jupiter?", k=2, model=minilm)  # the live version cached
        seen_during.append({h.table_version for h in hits})

    kept = psycopg.connect(pg_database, autocommit=True)  # a reader that reuses its connection, as the server does
    second = run_index(index_kit.index_spec(source, size=24, overlap=4), db_uri=pg_database, model=minilm, on_batch=during_rebuild)

    assert second["rebuilt"] and second["tableVersion"] == "docs_v2" and second["previousVersion"] == "docs_v1"
    assert second["added"] == 4 and second["chunks"] > first["chunks"]
    assert len(counts_during) >= 2
    assert all(s == {"docs_v1"} for s in seen_during)  # the old version answered until the switch
    assert all(c == len(old_rows) for c in counts_during)
    with psycopg.connect(pg_database) as conn:
        assert {r[0] for r in conn.execute("SELECT table_version FROM public.docs")} == {"docs_v2"}
        assert conn.execute("SELECT to_regclass('public.docs_v1')").fetchone()[0] is None  # old version dropped
        versions = conn.execute("SELECT table_name, state FROM public.docs_versions").fetchall()
        assert versions == [("docs_v2", "live")]
        # vectors kept in the row (MAIN), not in TOAST (pgvector's EXTERNAL): scans read no TOAST row per distance
        assert conn.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = 'public.docs_v2'::regclass "
                            "AND attname = 'embedding'").fetchone()[0] == "m"
        assert conn.execute("SELECT count(DISTINCT version) FROM public.docs_documents").fetchone()[0] == 1
    hits = search(pg_database, "public", "docs", "Which moons orbit Jupiter?", k=1, model=minilm)
    assert hits[0].table_version == "docs_v2" and hits[0].document == "web/astronomy.html"
    with kept:  # its cached version was switched away: noticed, read again, answered from the new one
        hits = search(kept, "public", "docs", "Which moons orbit Jupiter?", k=1, model=minilm)
    assert hits[0].table_version == "docs_v2" and hits[0].document == "web/astronomy.html"


def test_reader_blocked_on_the_switch_reads_the_new_version(tmp_path: Path, pg_database: str, minilm: Any, index_kit: Any) -> None:
    """A reader whose query arrives while the switch transaction holds the view gets the new version."""
    source = index_kit.write_corpus(tmp_path / "docs")
    run_index(index_kit.index_spec(source, size=64), db_uri=pg_database, model=minilm)
    results: list[set[str]] = []
    stop = threading.Event()

    def reader() -> None:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            while not stop.is_set():
                results.append({r[0] for r in conn.execute("SELECT table_version FROM public.docs")})
                time.sleep(0.005)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        run_index(index_kit.index_spec(source, size=32, overlap=4), db_uri=pg_database, model=minilm)
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
    assert results and all(len(r) == 1 for r in results)  # never a mix
    assert results[0] == {"docs_v1"} and results[-1] == {"docs_v2"}


def test_unreachable_database_fails_clearly_without_the_uri(tmp_path: Path, minilm: Any, index_kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    uri = f"postgresql://indexer:Sup3r-S3cret@127.0.0.1:{port}/vectors"
    monkeypatch.setenv("TUNERAG_DB_CONNECT_BUDGET_SECONDS", "1.5")
    started = time.monotonic()
    with pytest.raises(WorkloadError) as caught:
        run_index(index_kit.index_spec(index_kit.write_corpus(tmp_path / "docs")), db_uri=uri, model=minilm)
    elapsed = time.monotonic() - started
    assert caught.value.reason == "DatabaseUnreachable"
    assert "attempts" in caught.value.message and "refused" in caught.value.message
    for secret in ("Sup3r-S3cret", "indexer", str(port), "127.0.0.1", "postgresql://"):
        assert secret not in caught.value.message
        assert secret not in str(caught.value)
    assert elapsed < 10


def test_sql_looking_names_are_rejected_or_quoted(tmp_path: Path, pg_database: str, minilm: Any, index_kit: Any) -> None:
    source = index_kit.write_corpus(tmp_path / "docs")
    with pytest.raises(WorkloadError) as caught:
        run_index(index_kit.index_spec(source, table='docs"; DROP TABLE users; --'), db_uri=pg_database, model=minilm)
    assert caught.value.reason == "InvalidSpec" and "store.table" in caught.value.message
    # reserved words pass the CRD pattern and must be quoted everywhere
    result = run_index(index_kit.index_spec(source, table="select", schema="order"), db_uri=pg_database, model=minilm)
    assert result["tableVersion"] == "select_v1" and result["documents"] == 4
    hits = search(pg_database, "order", "select", "Which moons orbit Jupiter?", k=1, model=minilm, hybrid=True)
    assert hits[0].document == "web/astronomy.html"


def test_dimension_mismatch_with_an_existing_table_is_a_clear_error(tmp_path: Path, pg_database: str, minilm: Any, index_kit: Any) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE public.docs_v1 (id bigserial PRIMARY KEY, embedding vector(8))")
    with pytest.raises(WorkloadError) as caught:
        run_index(index_kit.index_spec(index_kit.write_corpus(tmp_path / "docs")), db_uri=pg_database, model=minilm)
    assert caught.value.reason == "DimensionMismatch"
    assert "vector(8)" in caught.value.message and "vector(384)" in caught.value.message


def test_plain_table_in_the_way_of_the_view_is_refused(tmp_path: Path, pg_database: str, minilm: Any, index_kit: Any) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.docs (id int)")
    with pytest.raises(WorkloadError) as caught:
        run_index(index_kit.index_spec(index_kit.write_corpus(tmp_path / "docs")), db_uri=pg_database, model=minilm)
    assert caught.value.reason == "TableConflict"


def test_configmap_directory_and_undecodable_text(tmp_path: Path, pg_database: str, minilm: Any, index_kit: Any) -> None:
    mount = tmp_path / "cm"
    (mount / "..2026_01_01_00_00_00.000").mkdir(parents=True)
    (mount / "..2026_01_01_00_00_00.000" / "faq.md").write_text("# FAQ\n\nReset your password from the login page.\n")
    (mount / "..data").symlink_to("..2026_01_01_00_00_00.000")
    (mount / "faq.md").symlink_to("..data/faq.md")
    (mount / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me".encode("latin-1"))
    (mount / "scan.pdf").write_bytes(index_kit.pdf_bytes([]))
    spec = index_kit.index_spec(tmp_path / "unused")
    spec["source"] = {"configMap": {"name": "docs"}}
    result = run_index(spec, db_uri=pg_database, model=minilm, source_dir=str(mount))
    assert result["documents"] == 1 and result["added"] == 1
    reasons = {f["path"]: f["reason"] for f in result["skippedFiles"]}
    assert "UTF-8" in reasons["latin1.txt"] and "no extractable text" in reasons["scan.pdf"]
