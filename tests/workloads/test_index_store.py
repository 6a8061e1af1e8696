"""Incremental indexing without an embedding model: what a run does with each document, and the
index store's bookkeeping on a real PostgreSQL + pgvector (which version a run writes: resume,
rebuild, abandoned builds; what an incremental run replaces and deletes; the switch readers see;
the counts a VectorIndex reports). These are what the mutation check (`make mutation
MODULE=index-store`, `MODULE=index-changes`) runs against every mutant of those decisions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from psycopg import sql

from tunerag_workloads.index.pipeline import changes
from tunerag_workloads.index.store import Store, Version, WriteItem, identifier

DIM = 3


@pytest.fixture
def store(pg_database: str) -> Iterator[Store]:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        s = Store(conn, "public", "docs")
        s.prepare()
        yield s


def item(document: str, content_hash: str, chunks: list[str]) -> WriteItem:
    rows = [(i, text, {"document": document}, hashlib.sha256(text.encode()).hexdigest()) for i, text in enumerate(chunks)]
    vectors = np.array([[1.0, float(i), 0.5] for i in range(len(chunks))], dtype=np.float32).reshape(len(chunks), DIM)
    return WriteItem(document, content_hash, "text", rows, vectors)


def chunks(s: Store, version: Version) -> list[tuple[str, int, str]]:
    return s.conn.execute(sql.SQL("SELECT document, chunk_index, content FROM {} ORDER BY 1, 2").format(
        s.ident(version.table))).fetchall()


def states(s: Store) -> list[tuple[int, str, str]]:
    return [(v.number, v.fingerprint, v.state) for v in s._versions()]


def tables(s: Store) -> set[str]:
    return {r[0] for r in s.conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}


def test_a_run_resumes_its_build_and_a_live_version_is_reused(store: Store) -> None:
    v1, replaces = store.target("fp-a", {"model": "m"}, DIM)
    assert (v1.number, v1.table, v1.state, replaces) == (1, "docs_v1", "building", None)
    again, replaces = store.target("fp-a", {"model": "m"}, DIM)  # a resumed run: the same build
    assert (again.number, again.table, replaces) == (1, "docs_v1", None)
    assert states(store) == [(1, "fp-a", "building")]
    assert store.live() is None
    store.switch(v1)
    assert v1.state == "live" and store.live() == v1
    live, replaces = store.target("fp-a", {"model": "m"}, DIM)  # nothing changed: the live version
    assert (live.number, live.state, replaces) == (1, "live", None)
    assert store.version_named("docs_v1") == v1 and store.version_named("docs_v9") is None


def test_new_settings_build_the_next_version_and_drop_abandoned_builds(store: Store) -> None:
    v1, _ = store.target("fp-a", {}, DIM)
    store.switch(v1)
    v2, replaces = store.target("fp-b", {}, DIM)  # chunking changed: a new build beside the live one
    assert (v2.number, v2.table, replaces) == (2, "docs_v2", v1)
    v3, _ = store.target("fp-c", {}, DIM)  # changed again before v2 finished: v2 is abandoned
    assert v3.number == 3
    assert states(store) == [(1, "fp-a", "live"), (3, "fp-c", "building")]
    assert "docs_v2" not in tables(store) and {"docs_v1", "docs_v3"} <= tables(store)
    # A shard never drops another run's build; the numbering goes on past every version kept.
    v4, _ = store.target("fp-d", {}, DIM, drop_stale=False)
    assert v4.number == 4 and states(store)[-2:] == [(3, "fp-c", "building"), (4, "fp-d", "building")]
    # The next run's resume of fp-c drops fp-d's build, and the live version stays.
    resumed, _ = store.target("fp-c", {}, DIM)
    assert resumed.number == 3 and states(store) == [(1, "fp-a", "live"), (3, "fp-c", "building")]


def test_the_version_asked_for_is_found_whatever_the_others_are(store: Store) -> None:
    """Fingerprints and table names compare by equality, not order; the live version is the one
    marked live, even with a retired version or an older build beside it."""
    v1, _ = store.target("fp-m", {}, DIM)
    store.switch(v1)
    v2, replaces = store.target("fp-a", {}, DIM)  # settings whose fingerprint sorts before the live one's
    assert (v2.number, replaces) == (2, v1)
    v3, _ = store.target("fp-z", {}, DIM, drop_stale=False)  # one that sorts after the building one's
    assert v3.number == 3
    assert store.target("fp-a", {}, DIM, drop_stale=False)[0].number == 2
    assert store.target("fp-q", {}, DIM, drop_stale=False)[0].number == 4  # between the two builds' fingerprints
    # A sharded run's finalize switches v3 while v2's build is still there.
    store.switch(v3)
    assert states(store) == [(1, "fp-m", "retired"), (2, "fp-a", "building"), (3, "fp-z", "live"), (4, "fp-q", "building")]
    assert store.live() == v3
    assert store.target("fp-z", {}, DIM, drop_stale=False) == (v3, None)
    # Asking again for the retired version's settings builds anew: a retired version is never resumed.
    again, replaces = store.target("fp-m", {}, DIM, drop_stale=False)
    assert (again.number, again.state, replaces) == (5, "building", v3)
    assert store.version_named("docs_v0") is None and store.version_named("docs_v3") == v3


def test_finalize_drops_only_older_builds(store: Store) -> None:
    v1, _ = store.target("fp-a", {}, DIM)
    store.switch(v1)
    for fp in ("fp-b", "fp-c", "fp-d"):
        store.target(fp, {}, DIM, drop_stale=False)
    keep = store.version_named("docs_v3")
    assert keep is not None
    assert store.drop_abandoned(keep) == ["docs_v2"]  # older than v3; v4 belongs to a newer run
    assert states(store) == [(1, "fp-a", "live"), (3, "fp-c", "building"), (4, "fp-d", "building")]


def test_the_switch_retires_the_old_version_and_cleanup_drops_it(store: Store) -> None:
    v1, _ = store.target("fp-a", {}, DIM)
    store.write_batch(v1, [item("a.txt", "h1", ["old text"])])
    store.switch(v1)
    v2, _ = store.target("fp-b", {}, DIM)
    store.write_batch(v2, [item("a.txt", "h1", ["new text"])])
    store.switch(v2)
    assert states(store) == [(1, "fp-a", "retired"), (2, "fp-b", "live")]
    view = store.conn.execute("SELECT content, table_version FROM public.docs").fetchall()
    assert view == [("new text", "docs_v2")]
    assert store.drop_retired() == ["docs_v1"]
    assert states(store) == [(2, "fp-b", "live")] and "docs_v1" not in tables(store)
    assert store.drop_retired() == []
    assert store.documents(v1) == {}  # its bookkeeping went with it


def test_an_incremental_run_replaces_changed_documents_and_deletes_removed_ones(store: Store) -> None:
    v, _ = store.target("fp-a", {}, DIM)
    assert store.write_batch(v, []) == 0
    assert store.write_batch(v, [item("a.txt", "ha1", ["a0", "a1", "a2"]), item("b.txt", "hb1", ["b0"]),
                                 item("c.txt", "hc1", ["c0", "c1"])]) == 6
    assert store.documents(v) == {"a.txt": "ha1", "b.txt": "hb1", "c.txt": "hc1"}
    # a.txt changed (now two chunks), c.txt was removed from the source, b.txt is unchanged.
    assert store.write_batch(v, [item("a.txt", "ha2", ["A0", "A1"])]) == 2
    store.delete_documents(v, ["c.txt"])
    store.delete_documents(v, [])
    assert chunks(store, v) == [("a.txt", 0, "A0"), ("a.txt", 1, "A1"), ("b.txt", 0, "b0")]
    assert store.documents(v) == {"a.txt": "ha2", "b.txt": "hb1"}
    assert store.conn.execute("SELECT chunks FROM public.docs_documents WHERE document = 'a.txt'").fetchone() == (2,)
    # The same paths in another version are untouched.
    other, _ = store.target("fp-b", {}, DIM, drop_stale=False)
    store.write_batch(other, [item("c.txt", "hc1", ["c0"])])
    store.delete_documents(v, ["c.txt"])
    assert store.documents(other) == {"c.txt": "hc1"} and chunks(store, other) == [("c.txt", 0, "c0")]


def test_a_batch_whose_vectors_do_not_match_its_chunks_writes_nothing(store: Store) -> None:
    v, _ = store.target("fp-a", {}, DIM)
    store.write_batch(v, [item("a.txt", "ha1", ["a0"])])
    short = item("a.txt", "ha2", ["A0", "A1", "A2"])
    short.embeddings = short.embeddings[:2]  # one vector missing: refused, not a shorter document
    with pytest.raises(ValueError):
        store.write_batch(v, [short])
    assert chunks(store, v) == [("a.txt", 0, "a0")] and store.documents(v) == {"a.txt": "ha1"}


def test_counts_and_source_digest(store: Store) -> None:
    v, _ = store.target("fp-a", {}, DIM)
    store.write_batch(v, [item("b.txt", "hb", ["b0"]), item("a.txt", "ha", ["a0", "a1"])])
    docs, n, digest = store.counts(v)
    expected = hashlib.sha256(b"a.txt\0ha\nb.txt\0hb\n").hexdigest()  # sorted by path
    assert (docs, n, digest) == (2, 3, "sha256:" + expected)
    store.write_batch(v, [item("b.txt", "hb2", ["b0"])])
    assert store.counts(v)[2] != digest


def test_identifiers_fit_postgres_limit() -> None:
    assert identifier("docs", "versions") == "docs_versions"
    exact = "t" * 54 + "_versions"  # 63 bytes: kept
    assert identifier("t" * 54, "versions") == exact
    long = identifier("t" * 55, "versions")
    digest = hashlib.sha256(("t" * 55 + "_versions").encode()).hexdigest()[:8]
    assert long == "t" * 54 + "_" + digest and len(long) == 63
    assert identifier("t" * 60, "v1") != identifier("t" * 60, "v2")


def test_what_an_incremental_run_does_with_each_document() -> None:
    indexed = {"same.md": "h1", "edited.md": "h2", "gone.md": "h3", "unreadable.pdf": "h4", "b.md": "h5", "reverted.md": "h9"}
    current = {"same.md": "h1", "edited.md": "h2-new", "new.md": "h6", "b.md": "h5", "a-new.md": "h7", "reverted.md": "h0"}
    added, updated, unchanged, deleted = changes(indexed, current, {"unreadable.pdf"})
    assert added == ["a-new.md", "new.md"]
    assert updated == ["edited.md", "reverted.md"]  # a new hash, whichever way it sorts
    assert unchanged == ["b.md", "same.md"]
    assert deleted == ["gone.md"]  # the unreadable file keeps what was indexed
    assert changes(indexed, current, set())[3] == ["gone.md", "unreadable.pdf"]
    assert changes({}, {}, set()) == ([], [], [], [])
