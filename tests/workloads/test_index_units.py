"""Fast unit tests of the index workload's pieces: globs, extraction, chunking, spec parsing."""

from __future__ import annotations

from typing import Any

import pytest

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.index.chunking import TokenCounter, chunk_document, markdown_sections
from tunerag_workloads.index.sources import SkipFile, extract_text, matches
from tunerag_workloads.index.spec import parse_spec


@pytest.mark.parametrize(("path", "patterns", "expected"), [
    ("a.md", ["**/*"], True),
    ("x/y/a.md", ["**/*.md"], True),
    ("x/y/a.md", ["*.md"], False),
    ("drafts/a.md", ["drafts/**"], True),
    ("notes/a.txt", ["notes/?.txt"], True),
    ("notes/ab.txt", ["notes/[a-c].txt"], False),
])
def test_globs(path: str, patterns: list[str], expected: bool) -> None:
    assert matches(path, patterns) is expected


def test_html_extraction_keeps_headings_and_drops_scripts() -> None:
    text = extract_text(b"<html><head><script>x=1</script></head><body><h2>Title</h2><p>Body <b>bold</b></p></body></html>", "html")
    assert "## Title" in text and "Body bold" in text and "x=1" not in text


def test_undecodable_and_corrupt_inputs_are_skip_reasons() -> None:
    for data, fmt in [(b"\xff\xfe\x00bad", "text"), (b"%PDF-1.4 nonsense", "pdf"), (b"not a pdf", "pdf"), (b"  \n", "markdown")]:
        with pytest.raises(SkipFile):
            extract_text(data, fmt)


def test_markdown_sections_track_heading_paths_and_ignore_fenced_hashes() -> None:
    sections = markdown_sections("intro\n# A\ntext a\n## B\ntext b\n```\n# not a heading\n```\n# C\ntext c\n")
    assert [s[0] for s in sections] == [[], ["A"], ["A", "B"], ["C"]]
    assert "# not a heading" in sections[2][2]


def test_token_windows_overlap_and_respect_the_size(minilm: Any) -> None:
    counter = TokenCounter(minilm.tokenizer)
    text = " ".join(f"word{i}" for i in range(200))
    chunks = chunk_document("d.txt", text, counter, "tokens", 40, 10)
    assert len(chunks) > 3 and all(c.tokens <= 40 for c in chunks)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    tail = chunks[0].content.split()[-2:]
    assert all(w in chunks[1].content for w in tail)  # overlap
    md = chunk_document("d.md", "# Guide\n## Setup\n" + text, counter, "markdown", 40, 5)
    assert all(c.content.startswith("# Guide\n## Setup\n") and c.heading_path == ["Guide", "Setup"] for c in md)
    assert all(counter.count(c.content) <= 40 for c in md)
    rec = chunk_document("d.txt", "para one.\n\npara two.\n\n" + text, counter, "recursive", 40, 5)
    assert rec[0].content.startswith("para one.\n\npara two.")


def test_spec_parsing_accepts_the_crd_fields_and_rejects_bad_ones() -> None:
    spec = parse_spec({"source": {"uri": "s3://b/p", "include": ["**/*.md"]},
                       "chunking": {"strategy": "tokens", "size": 128, "overlap": 16},
                       "embedding": {"batchSize": 8}, "refresh": {"interval": "1h"},
                       "store": {"connectionSecret": {"name": "db", "key": "uri"}, "table": "kb",
                                 "index": {"type": "ivfflat", "lists": 50, "efSearch": 200}}})
    assert spec.embedding.batch_size == 8 and spec.store.index.lists == 50 and spec.store.schema_ == "public"
    for bad in [{"chunking": {"size": 32, "overlap": 32}}, {"store": {"table": "Bad-Name"}}]:
        raw: dict[str, Any] = {"source": {"uri": "file:///x"}, "store": {"table": "kb"}}
        raw.update(bad)
        with pytest.raises(WorkloadError) as caught:
            parse_spec(raw)
        assert caught.value.reason == "InvalidSpec"
