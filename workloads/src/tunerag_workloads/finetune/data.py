"""Data validation and pre-processing: read, map fields, clean, tokenize, report.

Rows are read through fsspec (file://, pvc://, s3:// ...) from jsonl, csv or parquet; a URI that is a
folder or prefix reads every file of that format under it, in sorted order. Each row becomes an
Example (prompt text, completion text, token ids, a loss mask) or is dropped with a reason:

- malformed:    a line that is not JSON / a row that is not an object
- missingField: a mapped field is absent
- notString:    a mapped field is not a string (or messages is not a list of {role, content} strings)
- empty:        prompt or completion is empty or whitespace (when rules.dropEmpty)
- duplicate:    an exact duplicate of an earlier kept row (when rules.dedupe)
- tooLong:      more tokens than min(rules.maxTokens, training.maxSeqLength); never truncated

Malformed rows are counted and reported, never fatal on their own; fewer than the minimum rows after
cleaning fails with InsufficientData.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tunerag_workloads.contract import WorkloadError, escapes, resolve_uri
from tunerag_workloads.finetune.spec import DatasetSource, FineTuneSpec

MAX_EXAMPLES = 3
EXAMPLE_CHARS = 200


@dataclass
class Example:
    prompt: str
    completion: str
    input_ids: list[int]
    prompt_len: int  # tokens of input_ids that are prompt (no loss)

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclass
class DataReport:
    name: str
    uri: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    digest: str | None = None
    tokens: int = 0

    def drop(self, reason: str, row: Any) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            text = row if isinstance(row, str) else json.dumps(row, default=str)
            shown.append(text[:EXAMPLE_CHARS])

    def summary(self) -> dict[str, Any]:
        return {"rowsRead": self.rows_read, "rowsKept": self.rows_kept, "dropped": dict(self.dropped),
                "digest": self.digest}

    def full(self) -> dict[str, Any]:
        return {"name": self.name, "uri": self.uri, **self.summary(), "tokens": self.tokens,
                "droppedExamples": self.examples}


def _files(uri: str, fmt: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    fs, path = fsspec.core.url_to_fs(resolve_uri(uri))
    try:
        if fs.isdir(path):
            files = sorted(p for p in fs.find(path) if p.endswith("." + fmt))
            if not files:
                raise WorkloadError("DatasetNotFound", f"{uri} is a folder with no .{fmt} files")
            if isinstance(fs, LocalFileSystem) and (out := [p for p in files if escapes(path, p)]):
                raise WorkloadError("LinkOutsideFolder", f"{uri}: {out[0][len(path):].lstrip('/')!r} is a symbolic link "
                                                         "to a path outside the dataset folder; remove it")
            return fs, files
        if fs.exists(path):
            return fs, [path]
    except WorkloadError:
        raise
    except (OSError, ValueError) as exc:
        raise WorkloadError("DatasetUnreachable", f"cannot read {uri}: {exc}") from exc
    raise WorkloadError("DatasetNotFound", f"dataset {uri} does not exist (resolved to {path})")


def read_rows(source: DatasetSource) -> tuple[list[Any], int]:
    """Returns the parsed rows (dicts, or a _Malformed marker) and the count of unparseable rows."""
    fs, files = _files(source.uri, source.format)
    rows: list[Any] = []
    for path in files:
        try:
            with fs.open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise WorkloadError("DatasetUnreachable", f"cannot read {path}: {exc}") from exc
        if source.format == "jsonl":
            for line in data.decode("utf-8", errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    rows.append(_Malformed(line))
        elif source.format == "csv":
            reader = csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace")))
            for r in reader:
                if None in r:  # more cells than header columns
                    rows.append(_Malformed(json.dumps(r, default=str)))
                else:
                    rows.append(dict(r))
        else:
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(io.BytesIO(data))
            except Exception as exc:  # pyarrow raises several types for a corrupt file
                raise WorkloadError("MalformedDataset", f"{path} is not a readable parquet file: {exc}") from exc
            rows.extend(table.to_pylist())
    return rows, len(files)


@dataclass
class _Malformed:
    text: str


def _row_text(row: Any, source: DatasetSource, tokenizer: Any) -> tuple[str | None, str | None, str | None, Any]:
    """Maps a row to (prompt, completion, drop reason, canonical record)."""
    if isinstance(row, _Malformed) or not isinstance(row, dict):
        return None, None, "malformed", None
    mapping = source.fields
    if mapping.messages:
        if mapping.messages not in row:
            return None, None, "missingField", None
        messages = row[mapping.messages]
        if isinstance(messages, str):  # csv cells carry JSON text
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError:
                return None, None, "malformed", None
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                           for m in messages)):
            return None, None, "notString", None
        if messages[-1]["role"] != "assistant":
            return None, None, "noAssistantTurn", None
        record = [{"role": m["role"], "content": m["content"]} for m in messages]
        if not record[-1]["content"].strip():
            return "", "", "empty", record
        prompt = tokenizer.apply_chat_template(record[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(record, tokenize=False)
        if not full.startswith(prompt):
            return None, None, "chatTemplateMismatch", None
        return prompt, full[len(prompt):], None, record
    for name in (mapping.prompt, mapping.completion):
        if name not in row or row[name] is None:
            return None, None, "missingField", None
        if not isinstance(row[name], str):
            return None, None, "notString", None
    prompt, completion = row[mapping.prompt], row[mapping.completion]
    return prompt, completion, None, {"prompt": prompt, "completion": completion}


def tokenize_pair(tokenizer: Any, prompt: str, completion: str, chat: bool) -> tuple[list[int], int]:
    """Prompt and completion are tokenized separately and concatenated, so the prompt tokens are
    exactly what the model sees at generation time. Plain pairs get BOS (if any) + ... + EOS; chat
    text already carries the template's special tokens."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not chat and tokenizer.bos_token_id is not None:
        p_ids = [tokenizer.bos_token_id, *p_ids]
    if tokenizer.eos_token_id is not None and (not c_ids or c_ids[-1] != tokenizer.eos_token_id):
        c_ids = [*c_ids, tokenizer.eos_token_id]
    return p_ids + c_ids, len(p_ids)


def prepare_dataset(name: str, source: DatasetSource, spec: FineTuneSpec, tokenizer: Any,
                    min_rows: int = 1) -> tuple[list[Example], DataReport]:
    rules = spec.dataset.rules
    limit = min(rules.max_tokens, spec.training.max_seq_length)
    rows, _ = read_rows(source)
    report = DataReport(name=name, uri=source.uri, rows_read=len(rows))
    seen: set[str] = set()
    digest = hashlib.sha256()
    kept: list[Example] = []
    chat = bool(source.fields.messages)
    for row in rows:
        prompt, completion, reason, record = _row_text(row, source, tokenizer)
        if reason is None and rules.drop_empty and (not prompt.strip() or not completion.strip()):
            reason = "empty"
        if reason is None and not completion:
            reason = "empty"  # nothing to learn from, whatever dropEmpty says
        canonical = json.dumps(record, sort_keys=True, ensure_ascii=False) if record is not None else ""
        if reason is None and rules.dedupe and canonical in seen:
            reason = "duplicate"
        ids: list[int] = []
        if reason is None:
            ids, prompt_len = tokenize_pair(tokenizer, prompt, completion, chat)
            if len(ids) > limit:
                reason = "tooLong"
        if reason is not None:
            report.drop(reason, row.text if isinstance(row, _Malformed) else row)
            continue
        seen.add(canonical)
        digest.update(canonical.encode() + b"\n")
        kept.append(Example(prompt=prompt, completion=completion, input_ids=ids, prompt_len=prompt_len))
    report.rows_kept = len(kept)
    report.tokens = sum(e.length for e in kept)
    report.digest = "sha256:" + digest.hexdigest()
    if len(kept) < min_rows:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(report.dropped.items())) or "none"
        raise WorkloadError(
            "InsufficientData",
            f"{name} dataset {source.uri}: {len(kept)} rows remain after cleaning, fewer than the minimum {min_rows} "
            f"(read {report.rows_read}; dropped: {dropped}; token limit {limit}). Add rows or lower "
            f"spec.dataset.rules.minRows.",
        )
    return kept, report


@dataclass
class PreparedData:
    train: list[Example]
    validation: list[Example]
    retention: list[Example]
    reports: dict[str, DataReport]

    def digests(self) -> dict[str, str]:
        return {k: r.digest or "" for k, r in self.reports.items()}

    def summary(self) -> dict[str, Any]:
        """The combined data report for the result: train rows, all drops."""
        train = self.reports["train"]
        return train.summary()


def prepare_all(spec: FineTuneSpec, tokenizer: Any) -> PreparedData:
    ds = spec.dataset
    train, train_report = prepare_dataset("train", ds.train, spec, tokenizer, min_rows=ds.rules.min_rows)
    reports = {"train": train_report}
    if ds.validation is not None:
        validation, reports["validation"] = prepare_dataset("validation", ds.validation, spec, tokenizer)
    else:
        # Hold out validationSplit of train, seeded; the train report's digest covers both.
        order = list(range(len(train)))
        random.Random(spec.training.seed).shuffle(order)
        n_val = max(1, round(len(train) * ds.validation_split)) if ds.validation_split > 0 else 0
        if n_val == 0:
            raise WorkloadError("InvalidSpec", "no validation set: give spec.dataset.validation or validationSplit > 0")
        held = set(order[:n_val])
        validation = [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
        if len(train) < ds.rules.min_rows:
            raise WorkloadError(
                "InsufficientData",
                f"train dataset {ds.train.uri}: {len(train)} rows remain after holding out {n_val} for validation, "
                f"fewer than the minimum {ds.rules.min_rows}. Add rows, give a validation set or lower minRows.",
            )
    retention: list[Example] = []
    if ds.retention is not None:
        retention, reports["retention"] = prepare_dataset("retention", ds.retention, spec, tokenizer)
    return PreparedData(train=train, validation=validation, retention=retention, reports=reports)
