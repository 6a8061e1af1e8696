"""Checkpoint/resume decisions of the fine-tune loop, fast (no model): which checkpoint a restarted
run resumes from, which ones are kept, and the data order a resumed run replays. These are what
the mutation check (`make mutation MODULE=checkpoints`) runs against every mutant of them; the
whole resume is tested end to end in test_finetune.py (test_resume_replays_exactly)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunerag_workloads.finetune.data import Example
from tunerag_workloads.finetune.storage import Store
from tunerag_workloads.finetune.train import (
    CHECKPOINT_MARKER,
    KEEP_CHECKPOINTS,
    latest_checkpoint,
    latest_steps,
    micro_batches,
    stale_checkpoints,
)


def store_with(root: Path, folders: dict[str, bool]) -> Store:
    """checkpoints/<name> for each folder, with its completion marker when True."""
    for name, complete in folders.items():
        (root / "checkpoints" / name).mkdir(parents=True)
        (root / "checkpoints" / name / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (root / "checkpoints" / name / CHECKPOINT_MARKER).write_text("{}")
    return Store(f"file://{root}")


def test_a_restarted_run_resumes_from_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    s = store_with(tmp_path / "a", {"step-10": True, "step-9": True, "step-30": False, "step-20.tmp-1a2b": True,
                                    "step-x": True, "notes": True})
    assert latest_checkpoint(s) == 10  # 30 was being written when the pod died; 9 < 10 as numbers
    assert sorted(latest_steps(s)) == [9, 10, 30]
    assert latest_checkpoint(store_with(tmp_path / "b", {"step-30": False})) is None
    assert latest_checkpoint(Store(f"file://{tmp_path / 'empty'}")) is None
    assert latest_steps(Store(f"file://{tmp_path / 'empty'}")) == []
    assert latest_checkpoint(store_with(tmp_path / "c", {"step-0": True, "step-100": True})) == 100
    assert latest_checkpoint(store_with(tmp_path / "d", {"step-5": True})) == 5


def test_the_newest_checkpoints_are_kept() -> None:
    assert KEEP_CHECKPOINTS == 2
    assert stale_checkpoints([10, 20, 30], 30) == [10]  # keep 30 (just written) and 20
    assert stale_checkpoints([10, 20], 30) == [10]  # 30 not listed yet: still counted
    assert stale_checkpoints([30, 10, 20], 40) == [10, 20]
    assert stale_checkpoints([10], 10) == [] and stale_checkpoints([], 10) == []
    assert stale_checkpoints([10, 20, 30, 40], 40, keep=3) == [10]
    # A newer folder (a write a killed pod left unfinished; this run overwrites it when it gets
    # there) counts among the newest: the run resumed from 20 keeps 30 and 40.
    assert stale_checkpoints([10, 20, 40], 30) == [10, 20]
    assert stale_checkpoints([10, 20, 30], 30, keep=1) == [10, 20]


def examples(lengths: list[int]) -> list[Example]:
    return [Example(prompt="p", completion="c", input_ids=list(range(1, n + 1)), prompt_len=1) for n in lengths]


@pytest.mark.parametrize("packing", [False, True])
def test_an_epoch_order_is_a_function_of_seed_and_epoch(packing: bool) -> None:
    ex = examples([5, 9, 3, 7, 4, 8, 2, 6, 5, 3])
    first = micro_batches(ex, 2, 16, packing, seed=7, epoch=0)
    assert first == micro_batches(ex, 2, 16, packing, seed=7, epoch=0)  # a resumed run replays the same order
    assert first != micro_batches(ex, 2, 16, packing, seed=7, epoch=1)
    assert first != micro_batches(ex, 2, 16, packing, seed=8, epoch=0)
    assert micro_batches(ex, 2, 16, packing, seed=7, epoch=1) != micro_batches(ex, 2, 16, packing, seed=8, epoch=0)
    rows = [row for batch in first for row in batch]
    assert sorted(i for row in rows for i in row) == list(range(10))  # every example once per epoch
    assert all(len(b) == 2 for b in first[:-1]) and 1 <= len(first[-1]) <= 2
    assert all(sum(ex[i].length for i in row) <= 16 for row in rows)
    if not packing:
        assert len(rows) == 10 and len(first) == 5
    else:
        assert len(rows) < 10
