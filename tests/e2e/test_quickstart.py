"""The README's first command does what the README says: its own control plane, the operator, the
Job and KServe harnesses, PostgreSQL and Prometheus, then the example end to end (index, two
training runs, v1 deployed, v2 rolled out by canary under traffic, a served answer with its
citation). Asserts on what the user sees in the output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_indexes_trains_rolls_out_by_canary_and_answers_with_a_citation(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("operator/src", "workloads/src", "tests"))}
    out = subprocess.run([sys.executable, "-m", "substrate.quickstart", "--workdir", str(tmp_path / "qs")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    text = out.stdout

    # The pipelines: the index, the datasets made through retrieval, two training runs.
    assert "VectorIndex/handbook: Ready, 4 documents" in text
    found = re.search(r"retrieval puts the answer's section first for (\d+)/(\d+) questions", text)
    assert found and int(found[1]) >= 0.8 * int(found[2]), found
    assert "FineTuneJob/handbook-qa-1: Succeeded, step 50/50, registered handbook-qa-v1" in text
    assert "FineTuneJob/handbook-qa-2: Succeeded, step 150/150, registered handbook-qa-v2" in text
    assert re.search(r"AdapterVersion/handbook-qa-v2: Validated \(held-out exact match", text)

    # v1 deployed as the first version, then v2 by canary: the weights, each analysis, promotion.
    assert text.index("handbook-qa-v1 serves all traffic") < text.index("==> canary rollout of handbook-qa-v2")
    assert "canary weights reached: 10% -> 50% -> 100%" in text
    assert re.search(r"analysis of handbook-qa-v2 at 10%: Passed \(error-rate 0, latency-p95 [\d.e-]+ s\)", text)
    assert re.search(r"analysis of handbook-qa-v2 at 50%: Passed \(error-rate 0, latency-p95 [\d.e-]+ s\)", text)
    assert "promoted: handbook-qa-v1 (InitialDeployment) then handbook-qa-v2 (Promoted)" in text
    client = re.search(r"background client: (\d+) answered \(handbook-qa-v1 (\d+), handbook-qa-v2 (\d+)\), (\d+) failed", text)
    assert client and int(client[2]) > 0 and int(client[3]) > 0 and client[4] == "0", client

    # The served answer: through the InferenceService's URL, by v2, citing the section that holds it.
    answer = re.search(r"A: '(.*)', answered by (\S+)", text)
    assert answer and answer[1] and answer[2] == "handbook-qa-v2", answer
    assert "cited [1] returns.md > Returns and refunds > Return window" in text
    assert "within 30 days of delivery" in text

    # kubectl shows the end state.
    assert re.search(r"adapterversion.tunerag.dev/handbook-qa-v1 +handbook-qa +1 +Retired", text)
    assert re.search(r"adapterversion.tunerag.dev/handbook-qa-v2 +handbook-qa +2 +Serving", text)
    assert re.search(r"rolloutpolicy.tunerag.dev/assistant +Promoted +handbook-qa-v2", text)
    assert "Done in" in text
