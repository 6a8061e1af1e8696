"""Publishing the adapter: files, a manifest with sha256 per file, and a model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_manifest(folder: Path) -> dict[str, Any]:
    """sha256 and size of every file (but the manifest); the folder's sha256 is the sha256 of the
    sorted lines `<sha256>  <name>\\n` (the format of `sha256sum`), so `sha256sum * | sort -k2`
    reproduces it."""
    files = {
        p.name: {"sha256": sha256_file(p), "sizeBytes": p.stat().st_size}
        for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST
    }
    listing = "".join(f"{v['sha256']}  {k}\n" for k, v in sorted(files.items()))
    return {"files": files, "sha256": hashlib.sha256(listing.encode()).hexdigest(),
            "sizeBytes": sum(v["sizeBytes"] for v in files.values())}


def verify_manifest(folder: Path) -> bool:
    manifest = json.loads((folder / MANIFEST).read_text())
    return bool(build_manifest(folder) == manifest)


def model_card(*, family: str, base: dict[str, Any], method: str, hyper: dict[str, str], data: dict[str, Any],
               metrics: dict[str, Any], gates: list[dict[str, Any]], verdict: str, run_id: str) -> str:
    lines = [
        f"# {family} (LoRA adapter)", "",
        f"- Verdict: **{verdict}**",
        f"- Run: `{run_id}`",
        f"- Base model: `{base.get('uri')}`" + (f" @ `{base['revision']}`" if base.get("revision") else ""),
        f"- Method: {method}", "",
        "## Data", "",
        "| dataset | rows read | rows kept | dropped | digest |", "|---|---|---|---|---|",
    ]
    for name, rep in data.items():
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(rep["dropped"].items())) or "-"
        lines.append(f"| {name} | {rep['rowsRead']} | {rep['rowsKept']} | {dropped} | `{rep['digest']}` |")
    lines += ["", "## Hyper-parameters", "", "| name | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(hyper.items())]
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    lines += ["", "## Gates", "", "| gate | value | threshold | passed |", "|---|---|---|---|"]
    lines += [f"| {g['name']} | {g['value']} | {g['threshold']} | {'yes' if g['passed'] else 'no'} |" for g in gates]
    return "\n".join(lines) + "\n"
