"""From feedback rows and original rows to a training mix and a validation slice: pure functions.

- Each feedback row becomes {"prompt", "completion", "source": "feedback", "exchange": {...}}: the
  prompt is the exchange's `prompt` (or `question`), the completion its answer, and `exchange`
  holds the other columns (provenance) minus the dropped ones.
- Deduplication is on the normalized (lower case, single spaces) prompt and completion; the newest
  feedback wins. Original rows equal to a feedback row are dropped from the original side, so a
  held-out row never leaks into training through the original data.
- The holdout is chosen by a hash of the normalized content, for feedback and original rows alike:
  a row is on the same side in every run, so no run of the schedule trains on a row that another
  run validates on, and the version now serving (trained by an earlier run) is compared with the
  candidate on rows neither has seen.
- Held-out exchanges answered by the baseline (the version now serving) are left out of the
  validation slice: they are that version's own greedy outputs, on which it is all but unbeatable,
  so they would reject every candidate. They stay out of training too (they may validate a later
  run, against a later baseline). Only when nothing else is left do they validate.
- Both sides have `mixRatio` feedback rows: n feedback rows take round(n (1 - r) / r) original
  rows, sampled with the seed; when there are too few original rows, the newest feedback rows are
  kept so the ratio holds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

COLUMNS = ("exchange_id", "created_at", "namespace", "service", "adapter_version", "endpoint", "question", "prompt",
           "chunk_ids", "chunk_documents", "latency_ms", "feedback_label", "feedback_comment", "feedback_at")


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def position(key: str) -> float:
    """Where the row falls in [0, 1): below holdoutFraction means held out."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / float(1 << 48)


def plain(value: Any) -> Any:
    """A JSON value for a column's value (timestamps as RFC 3339 in UTC)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


@dataclass(frozen=True)
class Row:
    key: str  # normalized prompt and completion
    data: dict[str, Any]  # what is written
    version: str | None = None  # the adapter version that answered (feedback rows)


@dataclass
class Counts:
    read: int = 0
    empty: int = 0
    duplicate: int = 0
    original_read: int = 0
    original_unusable: int = 0
    original_overlap: int = 0
    dropped_for_ratio: int = 0
    held_out_from_baseline: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"read": self.read, "empty": self.empty, "duplicate": self.duplicate, "originalRead": self.original_read,
                "originalUnusable": self.original_unusable, "originalOverlap": self.original_overlap,
                "droppedForRatio": self.dropped_for_ratio, "heldOutFromBaseline": self.held_out_from_baseline}


@dataclass
class Mix:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    counts: Counts

    def rows(self) -> dict[str, int]:
        def n(rows: list[dict[str, Any]], source: str) -> int:
            return sum(1 for r in rows if r["source"] == source)

        return {"feedback": n(self.train, "feedback"), "original": n(self.train, "original"),
                "validationFeedback": n(self.validation, "feedback"), "validationOriginal": n(self.validation, "original")}


def _key(prompt: str, completion: str) -> str:
    return normalize(prompt) + "\x1f" + normalize(completion)


def feedback_rows(rows: list[dict[str, Any]], prompt_field: str, drop_fields: set[str], counts: Counts) -> list[Row]:
    """One Row per usable exchange, newest first, duplicates removed. `rows` are the log's rows
    (column name -> value), newest feedback first."""
    out: list[Row] = []
    seen: set[str] = set()
    for row in rows:
        counts.read += 1
        prompt, completion = row.get(prompt_field), row.get("answer")
        if not isinstance(prompt, str) or not isinstance(completion, str) or not prompt.strip() or not completion.strip():
            counts.empty += 1
            continue
        key = _key(prompt, completion)
        if key in seen:
            counts.duplicate += 1
            continue
        seen.add(key)
        exchange = {c: plain(row.get(c)) for c in COLUMNS if c not in drop_fields and c != prompt_field}
        data = {"prompt": prompt, "completion": completion, "source": "feedback", "exchange": exchange}
        out.append(Row(key, data, row.get("adapter_version")))
    return out


def original_rows(rows: list[Any], prompt: str, completion: str, counts: Counts) -> list[Row]:
    """One Row per usable original row (string prompt and completion), duplicates removed."""
    out: list[Row] = []
    seen: set[str] = set()
    for row in rows:
        counts.original_read += 1
        p, c = (row.get(prompt), row.get(completion)) if isinstance(row, dict) else (None, None)
        if not isinstance(p, str) or not isinstance(c, str) or not p.strip() or not c.strip():
            counts.original_unusable += 1
            continue
        key = _key(p, c)
        if key not in seen:
            seen.add(key)
            out.append(Row(key, {"prompt": p, "completion": c, "source": "original"}))
    return out


def split(rows: list[Row], holdout_fraction: float, at_least_one: bool = True) -> tuple[list[Row], list[Row]]:
    """(kept, held out) by content hash; with two rows or more (and at_least_one), each side gets one."""
    held = [r for r in rows if position(r.key) < holdout_fraction]
    kept = [r for r in rows if position(r.key) >= holdout_fraction]
    if at_least_one and len(rows) >= 2 and not held:
        first = min(kept, key=lambda r: position(r.key))
        held, kept = [first], [r for r in kept if r is not first]
    elif at_least_one and len(rows) >= 2 and not kept:
        last = max(held, key=lambda r: position(r.key))
        kept, held = [last], [r for r in held if r is not last]
    return kept, held


def _wanted(n_feedback: int, ratio: float) -> int:
    """Original rows that go with n feedback rows at the ratio."""
    return 0 if ratio >= 1 else round(n_feedback * (1 - ratio) / ratio)


def mix(feedback: list[Row], original: list[Row], *, ratio: float, holdout_fraction: float, seed: int,
        counts: Counts, baseline: str | None = None) -> Mix:
    """The training mix (shuffled with `seed`) and the validation slice, sorted by key."""
    train_fb, held_fb = split(feedback, holdout_fraction)
    every = {r.key for r in feedback}
    usable = sorted((r for r in original if r.key not in every), key=lambda r: r.key)
    counts.original_overlap = len(original) - len(usable)
    train_pool, held_pool = split(usable, holdout_fraction, at_least_one=False)
    rng = random.Random(seed)

    n_fb = len(train_fb)
    n_orig = min(_wanted(n_fb, ratio), len(train_pool))
    if n_orig < _wanted(n_fb, ratio):  # too little original data: fewer (the newest) feedback rows keep the ratio
        n_fb = max(1, min(n_fb, round(n_orig * ratio / (1 - ratio))))
    counts.dropped_for_ratio = len(train_fb) - n_fb
    train = [r.data for r in train_fb[:n_fb]] + [r.data for r in rng.sample(train_pool, n_orig)]
    rng.shuffle(train)

    fair = [r for r in held_fb if baseline is None or r.version != baseline]
    counts.held_out_from_baseline = len(held_fb) - len(fair)
    held_orig = rng.sample(held_pool, min(_wanted(len(held_fb), ratio), len(held_pool)))
    validation = (fair + held_orig) or held_fb  # nothing else left: the baseline's own answers, rather than nothing
    if validation is held_fb:
        counts.held_out_from_baseline = 0
    return Mix(train=train, validation=[r.data for r in sorted(validation, key=lambda r: r.key)], counts=counts)
