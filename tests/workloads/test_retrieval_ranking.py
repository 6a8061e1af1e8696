"""Retrieval's ranking and settings on a real PostgreSQL + pgvector, fast: a table written through
the index store with vectors chosen by hand, and a query encoder that maps each question to a
chosen vector (the embedding model itself is tested in test_index.py). What a user sees: which
chunks come back, in which order, with which scores, copies, filters and fused ranks. These are
what the mutation check (`make mutation MODULE=retrieval`) runs against every mutant of search."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from tunerag_workloads.index.store import Store, WriteItem
from tunerag_workloads.retrieval import search

# Unit vectors at distinct angles from the query direction (1, 0, 0): cosine distance grows with the angle.
ANGLES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def unit(angle: float) -> list[float]:
    return [float(np.cos(angle)), float(np.sin(angle)), 0.0]


class Encoder:
    """Stands in for a SentenceTransformer: every question is the vector (1, 0, 0) unless named."""

    def __init__(self, vectors: dict[str, list[float]] | None = None, dim: int = 3) -> None:
        self.vectors = vectors or {}
        self.dim = dim

    def encode(self, texts: list[str], batch_size: int = 32, normalize_embeddings: bool = False, **_: Any) -> np.ndarray:
        if batch_size < 1:  # as SentenceTransformer.encode: its batches are range(0, n, batch_size)
            raise ValueError("batch_size must be positive")
        out = np.array([self.vectors.get(t, [1.0, 0.0, 0.0][:self.dim] + [0.0] * (self.dim - 3)) for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True) if normalize_embeddings else out


def build(conn: psycopg.Connection[Any], docs: list[tuple[str, str, list[float], dict[str, Any]]], distance: str = "cosine") -> None:
    """One live version holding one chunk per (document, content, vector, metadata)."""
    store = Store(conn, "public", "kb")
    store.prepare()
    version, _ = store.target(f"fp-{distance}", {}, 3)
    items = [WriteItem(doc, hashlib.sha256(doc.encode()).hexdigest(), "text",
                       [(0, content, {**meta, "headingPath": ["H", doc]}, hashlib.sha256(content.encode()).hexdigest())],
                       np.array([vector], dtype=np.float32)) for doc, content, vector, meta in docs]
    store.write_batch(version, items)
    store.update_settings(version, {"model": "stand-in", "dimension": 3, "normalize": False, "distance": distance})
    store.ensure_indexes(version, distance, {"type": "hnsw"})
    store.switch(version)


@pytest.fixture
def conn(pg_database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_database, autocommit=True) as c:
        yield c


def test_nearest_first_with_cosine_scores_and_provenance(conn: psycopg.Connection[Any]) -> None:
    build(conn, [(f"d{i}.md", f"passage {i}", unit(a), {"lang": "en"}) for i, a in enumerate(ANGLES[:4])])
    hits = search(conn, "public", "kb", "q", k=3, model=Encoder())
    assert [h.document for h in hits] == ["d0.md", "d1.md", "d2.md"]
    assert [round(h.score, 4) for h in hits] == [round(float(np.cos(a)), 4) for a in ANGLES[:3]]  # 1 - cosine distance
    assert (hits[0].chunk_index, hits[0].content, hits[0].table_version) == (0, "passage 0", "kb_v1")
    assert hits[0].heading_path == ["H", "d0.md"] and hits[0].metadata["lang"] == "en"
    assert hits[0].content_hash == hashlib.sha256(b"passage 0").hexdigest()
    assert (hits[0].vector_rank, hits[0].text_rank, hits[0].duplicates) == (None, None, [])
    assert len(search(conn, "public", "kb", "q", k=10, model=Encoder())) == 4  # fewer rows than k: all of them


@pytest.mark.parametrize(("distance", "expected"), [
    ("l2", [0.0, round(-float(np.sqrt(0.13)), 4)]),  # minus the euclidean distance
    ("ip", [1.0, 0.8]),  # the inner product (pgvector's <#> is its negative)
])
def test_l2_and_inner_product_scores(conn: psycopg.Connection[Any], distance: str, expected: list[float]) -> None:
    build(conn, [("a.md", "a", [1.0, 0.0, 0.0], {}), ("b.md", "b", [0.8, 0.0, 0.3], {})], distance)
    hits = search(conn, "public", "kb", "q", k=2, model=Encoder())
    assert [(h.document, round(h.score, 4)) for h in hits] == [("a.md", expected[0]), ("b.md", expected[1])]


def test_copies_come_back_once_and_more_candidates_are_fetched(conn: psycopg.Connection[Any]) -> None:
    # Ten copies of the nearest passage crowd out the next ones: search fetches more until k distinct.
    docs = [(f"copy{i}.md", "the same passage", unit(0.01 * i), {}) for i in range(10)]
    docs += [("other.md", "another passage", unit(0.5), {}), ("far.md", "a far passage", unit(0.7), {})]
    build(conn, docs)
    hits = search(conn, "public", "kb", "q", k=2, model=Encoder())
    assert [h.document for h in hits] == ["copy0.md", "other.md"]
    assert hits[0].duplicates == [f"copy{i}.md" for i in range(1, 10)] and hits[1].duplicates == []
    raw = search(conn, "public", "kb", "q", k=3, model=Encoder(), distinct=False)
    assert [h.document for h in raw] == ["copy0.md", "copy1.md", "copy2.md"]
    three = search(conn, "public", "kb", "q", k=3, model=Encoder(), candidates=2)
    assert [h.document for h in three] == ["copy0.md", "other.md", "far.md"]
    assert len(search(conn, "public", "kb", "q", k=5, model=Encoder())) == 3  # only 3 distinct passages exist


def test_copies_are_named_from_the_candidates_fetched(conn: psycopg.Connection[Any]) -> None:
    """A distinct search fetches 2k candidates first, four times more while copies leave fewer than k
    passages; the copies named in `duplicates` are those among the candidates fetched."""
    a = "the passage copied"
    build(conn, [("a.md", a, unit(0.0), {}), ("b.md", "another", unit(0.1), {}), ("a2.md", a, unit(0.2), {}),
                 ("c.md", "a third", unit(0.3), {}), ("a3.md", a, unit(0.4), {})])
    assert [(h.document, h.duplicates) for h in search(conn, "public", "kb", "q", k=1, model=Encoder())] == [("a.md", [])]
    assert [(h.document, h.duplicates) for h in search(conn, "public", "kb", "q", k=2, model=Encoder())] == [
        ("a.md", ["a2.md"]), ("b.md", [])]


def test_more_candidates_are_fetched_four_times_at_a_time(conn: psycopg.Connection[Any]) -> None:
    # k = 2: 4 candidates, all copies of one passage; then 16, which reach the ninth copy too.
    p = "one passage"
    docs = [(f"p{i:02}.md", p, unit(0.01 * i), {}) for i in range(1, 6)] + [("other.md", "other", unit(0.06), {})]
    docs += [(f"p{i:02}.md", p, unit(0.01 * i), {}) for i in range(7, 21)]
    build(conn, docs)
    hits = search(conn, "public", "kb", "q", k=2, model=Encoder())
    assert [(h.document, h.duplicates) for h in hits] == [
        ("p01.md", [f"p{i:02}.md" for i in [*range(2, 6), *range(7, 17)]]), ("other.md", [])]  # the 16 nearest


def test_a_copy_in_the_same_document_is_not_named_as_another(conn: psycopg.Connection[Any]) -> None:
    store = Store(conn, "public", "kb")
    store.prepare()
    version, _ = store.target("fp", {}, 3)
    h = hashlib.sha256(b"footer").hexdigest()
    store.write_batch(version, [
        WriteItem("m.md", "hm", "text", [(0, "footer", {}, h), (1, "footer", {}, h)], np.array([unit(0.0), unit(0.1)], dtype=np.float32)),
        WriteItem("b.md", "hb", "text", [(0, "footer", {}, h)], np.array([unit(0.2)], dtype=np.float32)),
        WriteItem("z.md", "hz", "text", [(0, "footer", {}, h)], np.array([unit(0.3)], dtype=np.float32))])
    store.update_settings(version, {"model": "stand-in", "dimension": 3, "normalize": False, "distance": "cosine"})
    store.switch(version)
    hits = search(conn, "public", "kb", "q", k=2, model=Encoder())
    assert [(h.document, h.chunk_index, h.duplicates) for h in hits] == [("m.md", 0, ["b.md", "z.md"])]


def test_hybrid_fuses_vector_and_text_ranks(conn: psycopg.Connection[Any]) -> None:
    build(conn, [("near.md", "bread and butter", unit(0.0), {}), ("mid.md", "tea brewing", unit(0.3), {}),
                 ("far.md", "volcano eruption lava", unit(0.7), {})])
    hits = search(conn, "public", "kb", "volcano lava", k=3, model=Encoder(), hybrid=True)
    by_doc = {h.document: h for h in hits}
    # far.md is last by vector (rank 3) but the only text match (rank 1): 1/63 + 1/61 beats 1/61 alone.
    assert [h.document for h in hits] == ["far.md", "near.md", "mid.md"]
    assert (by_doc["far.md"].vector_rank, by_doc["far.md"].text_rank) == (3, 1)
    assert (by_doc["near.md"].vector_rank, by_doc["near.md"].text_rank) == (1, None)
    assert by_doc["far.md"].score == pytest.approx(1 / 63 + 1 / 61)
    assert by_doc["near.md"].score == pytest.approx(1 / 61) and by_doc["mid.md"].score == pytest.approx(1 / 62)
    # A text match outside the vector candidates still comes back, by its text rank alone.
    two = search(conn, "public", "kb", "volcano lava", k=2, model=Encoder(), hybrid=True, candidates=1, distinct=False)
    assert [(h.document, h.vector_rank, h.text_rank) for h in two] == [("near.md", 1, None), ("far.md", None, 1)]


def test_hybrid_fuses_the_top_4k_of_each_ranking(conn: psycopg.Connection[Any]) -> None:
    # k = 2: the fusion sees 8 candidates per ranking. The only text match is 8th by vector: its
    # two ranks put it first; a ninth would be fused on its text rank alone.
    docs = [(f"v{i}.md", f"plain passage {i}", unit(0.05 * i), {}) for i in range(1, 8)]
    build(conn, [*docs, ("match.md", "volcano lava", unit(0.5), {}), ("v9.md", "volcano ash", unit(0.6), {}),
                 ("v10.md", "plain passage 10", unit(0.7), {})])
    hits = search(conn, "public", "kb", "volcano", k=2, model=Encoder(), hybrid=True, distinct=False)
    # v9.md, 9th by vector, is fused on its text rank (2) alone: 1/62 < v1.md's 1/61.
    assert [(h.document, h.vector_rank, h.text_rank) for h in hits] == [("match.md", 8, 1), ("v1.md", 1, None)]
    assert hits[0].score == pytest.approx(1 / 68 + 1 / 61)
    one = search(conn, "public", "kb", "volcano", k=1, model=Encoder(), hybrid=True, distinct=False)  # 4 candidates
    assert [(h.document, h.vector_rank, h.text_rank) for h in one] == [("v1.md", 1, None)]


def test_hybrid_fetches_more_while_copies_fill_the_vector_candidates(conn: psycopg.Connection[Any]) -> None:
    # k = 3: 12 candidates per ranking, all copies by vector; the one text match is 20th by vector.
    # The vector list came back full, so more is fetched (48) and a third passage is found.
    docs = [(f"copy{i:02}.md", "alpha passage", unit(0.01 * i), {}) for i in range(1, 19)]
    docs += [("beta.md", "beta passage", unit(0.19), {}), ("volcano.md", "volcano lava", unit(0.2), {})]
    build(conn, docs)
    hits = search(conn, "public", "kb", "volcano", k=3, model=Encoder(), hybrid=True)
    assert sorted(h.document for h in hits) == ["beta.md", "copy01.md", "volcano.md"]


def test_candidates_stop_growing_at_1000(conn: psycopg.Connection[Any]) -> None:
    # 1,100 copies of one passage before any other (l2: distances 0, 1, 2, ... exactly): the search
    # stops at 1,000 candidates (hnsw.ef_search's maximum) with the one passage it found.
    store = Store(conn, "public", "kb")
    store.prepare()
    version, _ = store.target("fp", {}, 3)
    n = 1100
    rows = [(i, "the same passage", {}, "same") for i in range(n)]
    store.write_batch(version, [WriteItem("copies.md", "h", "text", rows, np.array([[1.0 + i, 0.0, 0.0] for i in range(n)], dtype=np.float32))])
    store.write_batch(version, [WriteItem("other.md", "h2", "text", [(0, "other", {}, "other")], np.array([[1.0 + n, 0.0, 0.0]], dtype=np.float32))])
    store.update_settings(version, {"model": "stand-in", "dimension": 3, "normalize": False, "distance": "l2"})
    store.switch(version)
    hits = search(conn, "public", "kb", "q", k=2, model=Encoder())
    assert [(h.document, h.chunk_index) for h in hits] == [("copies.md", 0)]


def queries_sent(conn: psycopg.Connection[Any], run: Callable[[], object], tmp_path: Path) -> tuple[int, int]:
    """(vector queries, full-text queries) that `run` sent, from libpq's protocol trace."""
    trace = tmp_path / "trace.txt"
    with trace.open("w") as f:
        conn.pgconn.trace(f.fileno())
        try:
            run()
        finally:
            conn.pgconn.untrace()
    text = trace.read_text()
    return text.count("ORDER BY embedding"), text.count("ORDER BY rank DESC")


def test_a_table_smaller_than_k_costs_one_query(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    # Fewer rows came back than were asked for: that is all there is, nothing more is fetched.
    build(conn, [("a.md", "volcano a", unit(0.0), {}), ("b.md", "b", unit(0.1), {}), ("c.md", "volcano c", unit(0.2), {})])
    assert queries_sent(conn, lambda: search(conn, "public", "kb", "volcano", k=5, model=Encoder()), tmp_path) == (1, 0)
    assert queries_sent(conn, lambda: search(conn, "public", "kb", "volcano", k=5, model=Encoder(), distinct=False), tmp_path) == (1, 0)
    hybrid = lambda: search(conn, "public", "kb", "volcano", k=5, model=Encoder(), hybrid=True)  # noqa: E731
    assert queries_sent(conn, hybrid, tmp_path) == (1, 1)


def test_defaults_k_5_ef_search_100_probes_10(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    build(conn, [(f"d{i}.md", f"passage {i}", unit(0.05 * i), {}) for i in range(8)])
    trace = tmp_path / "trace.txt"
    with trace.open("w") as f:
        conn.pgconn.trace(f.fileno())
        try:
            hits = search(conn, "public", "kb", "q", model=Encoder())
        finally:
            conn.pgconn.untrace()
    assert [h.document for h in hits] == [f"d{i}.md" for i in range(5)]
    # set_config('hnsw.ef_search', '100'), set_config('ivfflat.probes', '10'): the two parameters' bind
    assert " 3 '100' 2 '10' " in trace.read_text()


def test_the_query_is_normalized_unless_the_version_says_not(conn: psycopg.Connection[Any]) -> None:
    # Inner product scores show the query's length: a version without "normalize" normalizes (the default).
    store = Store(conn, "public", "kb")
    store.prepare()
    version, _ = store.target("fp", {}, 3)
    store.write_batch(version, [WriteItem("a.md", "h", "text", [(0, "a", {}, "ha")], np.array([[1.0, 0.0, 0.0]], dtype=np.float32))])
    store.update_settings(version, {"model": "stand-in", "dimension": 3, "distance": "ip"})
    store.switch(version)
    (hit,) = search(conn, "public", "kb", "long", k=1, model=Encoder({"long": [2.0, 0.0, 0.0]}))
    assert round(hit.score, 4) == 1.0


def test_the_model_is_the_live_version_s_unless_given(conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """model=None loads the live version's model by name, a string loads that model; after a
    rebuild to another model and dimension, a reused connection follows (the query on the old
    settings fails in PostgreSQL and is repeated on the new ones). The loader hands out stand-ins
    by name (loading real models is tested in test_index.py)."""
    from tunerag_workloads.index import embed

    models = {"m3": Encoder(dim=3), "m4": Encoder(dim=4)}
    loaded: list[str] = []

    def load_model(name: str, device: str = "auto") -> Encoder:
        loaded.append(name)
        return models[name]

    monkeypatch.setattr(embed, "load_model", load_model)
    store = Store(conn, "public", "kb")
    store.prepare()

    def rebuild(number: int, dim: int) -> None:
        version, _ = store.target(f"fp-{number}", {}, dim)
        store.write_batch(version, [WriteItem("a.md", "h", "text", [(0, f"v{number}", {}, "h")], np.array([[1.0] + [0.0] * (dim - 1)], dtype=np.float32))])
        store.update_settings(version, {"model": f"m{dim}", "dimension": dim, "normalize": False, "distance": "cosine"})
        store.switch(version)

    rebuild(1, 3)
    assert [h.content for h in search(conn, "public", "kb", "q", k=1)] == ["v1"] and loaded == ["m3"]
    rebuild(2, 4)
    assert [h.content for h in search(conn, "public", "kb", "q", k=1)] == ["v2"] and loaded == ["m3", "m3", "m4"]
    assert [h.content for h in search(conn, "public", "kb", "q", k=1, model="m4")] == ["v2"] and loaded[-1] == "m4"
    with pytest.raises(ValueError, match="produces 3 dimensions"):
        search(conn, "public", "kb", "q", k=1, model="m3")


def test_filters_by_document_prefix_and_metadata(conn: psycopg.Connection[Any]) -> None:
    build(conn, [("guide/a.md", "a", unit(0.0), {"team": "x"}), ("guide_old/b.md", "b", unit(0.1), {"team": "y"}),
                 ("notes/c.md", "c", unit(0.2), {"team": "x"}), ("100%/d.md", "d", unit(0.3), {})])
    docs = lambda **f: [h.document for h in search(conn, "public", "kb", "q", k=5, model=Encoder(), filters=f)]  # noqa: E731
    assert docs(document="notes/c.md") == ["notes/c.md"]
    assert docs(document=["notes/c.md", "guide/a.md"]) == ["guide/a.md", "notes/c.md"]
    assert docs(documentPrefix="guide/") == ["guide/a.md"]
    assert docs(documentPrefix="guide_") == ["guide_old/b.md"]  # _ is a character, not a wildcard
    assert docs(documentPrefix="100%") == ["100%/d.md"]
    assert docs(team="x") == ["guide/a.md", "notes/c.md"]
    assert docs(team="x", documentPrefix="notes/") == ["notes/c.md"]


def test_a_query_model_of_another_dimension_or_no_live_version_is_refused(conn: psycopg.Connection[Any]) -> None:
    Store(conn, "public", "kb").prepare()  # the index exists, no run has finished yet
    with pytest.raises(LookupError, match="no live version"):
        search(conn, "public", "kb", "q", model=Encoder())
    build(conn, [("a.md", "a", unit(0.0), {})])
    with pytest.raises(ValueError, match="produces 4 dimensions; kb_v1 holds 3"):
        search(conn, "public", "kb", "q", model=Encoder(dim=4))
    with pytest.raises(ValueError, match="produces 2 dimensions; kb_v1 holds 3"):
        search(conn, "public", "kb", "q", model=Encoder(dim=2))


def test_a_reused_connection_follows_a_rebuild_to_the_new_version(conn: psycopg.Connection[Any]) -> None:
    """A connection keeps the live version's settings; when a rebuild switches versions, the
    answer names the new version and its settings are read again (here: another distance)."""
    store = Store(conn, "public", "kb")
    store.prepare()

    def rebuild(number: int, distance: str) -> None:
        version, _ = store.target(f"fp-{number}", {}, 3)
        assert version.number == number
        store.write_batch(version, [WriteItem("a.md", "h", "text", [(0, "a", {}, "ha")], np.array([[0.6, 0.8, 0.0]], dtype=np.float32))])
        store.update_settings(version, {"model": "stand-in", "dimension": 3, "normalize": False, "distance": distance})
        store.switch(version)

    def answer() -> tuple[str, float]:
        (hit,) = search(conn, "public", "kb", "q", k=1, model=Encoder())
        return hit.table_version, round(hit.score, 4)

    l2 = round(-float(np.sqrt(0.4 ** 2 + 0.8 ** 2)), 4)  # minus the distance from (1, 0, 0) to (0.6, 0.8, 0)
    rebuild(1, "cosine")
    assert answer() == ("kb_v1", 0.6)
    rebuild(2, "l2")
    assert answer() == ("kb_v2", l2)
    for n in range(3, 10):
        rebuild(n, "cosine")
    assert answer() == ("kb_v9", 0.6)
    rebuild(10, "l2")  # kb_v10 sorts before kb_v9: versions are compared by name, not order
    assert answer() == ("kb_v10", l2)
