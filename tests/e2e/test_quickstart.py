"""The README's first command does what the README says (its own control plane, end to end)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_runs_the_pipelines_and_answers(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("operator/src", "workloads/src", "tests"))}
    out = subprocess.run([sys.executable, "-m", "substrate.quickstart", "--workdir", str(tmp_path / "qs")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "VectorIndex/handbook: Ready, 4 documents" in text
    assert "FineTuneJob/colors-1: Succeeded, step 60/60" in text
    assert "returns.md > Returns and refunds > Return window" in text  # the cited chunk answers the question
    assert "colors-v1 on the held-out validation set: exact match" in text
    assert "adapterversion.tunerag.dev/colors-v1" in text and "Validated" in text
