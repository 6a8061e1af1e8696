"""Model validation: loss, perplexity, exact-match, retention regression, gates."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.finetune.data import Example
from tunerag_workloads.finetune.spec import Gates
from tunerag_workloads.finetune.train import collate, loss_sum, pack

SHORT_ANSWER_TOKENS = 16  # completions up to this many tokens count as short answers for exact-match
EXACT_MATCH_LIMIT = 256  # at most this many validation rows are decoded


@torch.no_grad()
def mean_loss(model: Any, examples: list[Example], dev: torch.device, *, max_len: int, batch_size: int, pad_id: int,
              autocast: torch.dtype | None = None) -> float:
    """Token-level mean cross-entropy over completion tokens (packed, exact per-example attention)."""
    model.eval()
    rows = pack([e.length for e in examples], list(range(len(examples))), max_len, True)
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = collate(examples, rows[i:i + batch_size], pad_id)
        if batch.target_tokens == 0:
            continue
        total += float(loss_sum(model, batch, dev, autocast))
        count += batch.target_tokens
    return total / count if count else float("nan")


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@torch.no_grad()
def exact_match(model: Any, tokenizer: Any, examples: list[Example], dev: torch.device, batch_size: int = 16) -> float | None:
    """Greedy-decodes the completion of short-answer rows and compares it, normalized, to the
    reference. Both sides are decoded by the same tokenizer with special tokens skipped."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    short = []
    for e in examples:
        target = e.input_ids[e.prompt_len:]
        if target and target[-1] == eos:
            target = target[:-1]
        if 0 < len(target) <= SHORT_ANSWER_TOKENS:
            short.append((e.input_ids[:e.prompt_len], target))
    short = short[:EXACT_MATCH_LIMIT]
    if not short:
        return None
    model.eval()
    hits = 0
    for i in range(0, len(short), batch_size):
        chunk = short[i:i + batch_size]
        width = max(len(p) for p, _ in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in chunk], device=dev)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk], device=dev)
        longest = max(len(t) for _, t in chunk)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=longest + 1, do_sample=False,
                             pad_token_id=pad, eos_token_id=eos)
        for (_, target), gen in zip(chunk, out[:, width:].tolist(), strict=True):
            if eos in gen:
                gen = gen[:gen.index(eos)]
            got = tokenizer.decode(gen, skip_special_tokens=True)
            want = tokenizer.decode(target, skip_special_tokens=True)
            hits += normalize(got) == normalize(want)
    return hits / len(short)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def gate_results(gates: Gates, metrics: dict[str, float | None]) -> list[dict[str, Any]]:
    """Each configured gate with its value, threshold and outcome; a gate whose metric could not be
    measured fails (a gate the user asked for is never silently skipped)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, threshold: float, ok: bool) -> None:
        finite = value is not None and math.isfinite(value)
        out.append({"name": name, "value": round(value, 6) if finite else None, "threshold": threshold,
                    "passed": bool(finite and ok)})

    if gates.max_validation_loss is not None:
        v = metrics.get("validationLoss")
        add("maxValidationLoss", v, gates.max_validation_loss, v is not None and v <= gates.max_validation_loss)
    if gates.min_exact_match is not None:
        v = metrics.get("exactMatch")
        add("minExactMatch", v, gates.min_exact_match, v is not None and v >= gates.min_exact_match)
    if "retentionRegression" in metrics:
        v = metrics["retentionRegression"]
        add("maxRetentionRegression", v, gates.max_retention_regression,
            v is not None and v <= gates.max_retention_regression)
    if gates.baseline is not None:
        v = metrics.get("baselineImprovement")
        add("minBaselineImprovement", v, gates.baseline.min_improvement,
            v is not None and v >= gates.baseline.min_improvement)
    return out


def improvement(loss: float | None, baseline_loss: float | None) -> float | None:
    """Relative reduction of the validation loss over the baseline's: (baseline - loss) / baseline."""
    if loss is None or baseline_loss is None or not math.isfinite(loss) or not math.isfinite(baseline_loss) or baseline_loss <= 0:
        return None
    return (baseline_loss - loss) / baseline_loss


def fetch_baseline(gates: Gates, cache_dir: Path) -> str | None:
    """The baseline adapter's local folder, checked against its sha256, or None without a baseline
    gate. Fetched before training, so a missing or changed baseline fails the run at once."""
    if gates.baseline is None:
        return None
    from tunerag_workloads.serve.artifacts import fetch_adapter
    from tunerag_workloads.serve.config import AdapterRef

    b = gates.baseline
    ref = AdapterRef(name=b.adapter_version or "baseline", uri=b.uri, sha256=b.sha256)
    try:
        return str(fetch_adapter(ref, cache_dir / "baseline").path)
    except WorkloadError as exc:
        raise WorkloadError(f"Baseline{exc.reason.removeprefix('Adapter')}", f"gates.baseline: {exc.message}") from None


@torch.no_grad()
def baseline_loss(model: Any, adapter_dir: str, examples: list[Example], dev: torch.device, **kw: Any) -> float:
    """The validation loss of another adapter (the version now serving) on the same base model and
    data: loaded beside the trained one, measured, and removed again before publication."""
    name = "tunerag-baseline"
    try:
        model.load_adapter(adapter_dir, adapter_name=name, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or modules that do not fit this base model
        raise WorkloadError("BaselineIncompatible", f"gates.baseline {adapter_dir} does not fit the base model: {exc}") from None
    current = model.active_adapter
    try:
        model.set_adapter(name)
        return mean_loss(model, examples, dev, **kw)
    finally:
        model.set_adapter(current)
        model.delete_adapter(name)
