"""Tiny causal LMs, tokenizers and synthetic datasets for the fine-tuning tests and benchmarks.

Nothing is downloaded: the tokenizer is trained on the synthetic corpus (byte-level BPE, so text
round-trips exactly), the model is a 2-layer Llama built from a config and briefly pre-trained on a
"general" corpus (counting and simple sentences) so the retention check has something to lose.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

WORDS = [
    "apple", "banana", "cherry", "grape", "lemon", "mango", "olive", "peach", "plum", "melon",
    "coal", "ink", "night", "raven", "tar", "snow", "milk", "cloud", "salt", "pearl",
    "grass", "leaf", "fern", "moss", "frog", "sky", "ocean", "lake", "jeans", "sapphire",
    "blood", "rose", "ruby", "fire", "brick", "sun", "corn", "gold", "straw", "butter",
]
LABELS = ["red", "blue", "green", "yellow"]
TEMPLATES = [
    "color of {w} ?", "what color is {w} ?", "{w} has which color ?", "name the color : {w}",
    "the color of the {w} is ?", "tell me the color of {w}",
]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
SENTENCES = [
    "the cat sat on the mat", "a dog ran in the park", "we read a book at night",
    "the sun rises in the east", "birds sing in the morning", "she drinks tea with milk",
    "he walks to the station", "they play music all day", "the river flows to the sea",
    "children learn to count", "colors are red blue green and yellow", "i like red and blue",
    "green and yellow are bright", "my coat is blue and red",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def label_of(word: str) -> str:
    return LABELS[WORDS.index(word) % len(LABELS)]


def task_rows(seed: int = 0) -> list[dict[str, str]]:
    """Word -> color label, every word under every template (240 rows), shuffled."""
    rows = [{"prompt": t.format(w=w), "completion": " " + label_of(w)} for w in WORDS for t in TEMPLATES]
    random.Random(seed).shuffle(rows)
    return rows


def general_rows(n: int = 120, seed: int = 1) -> list[dict[str, str]]:
    """General-capability text: counting continuations and sentence continuations."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    while len(rows) < n:
        if rng.random() < 0.6:
            start = rng.randrange(0, 6)
            k = rng.randrange(2, 4)
            rows.append({"prompt": "count : " + " ".join(NUMBERS[start:start + k]),
                         "completion": " " + " ".join(NUMBERS[start + k:start + k + 2])})
        else:
            words = rng.choice(SENTENCES).split()
            cut = rng.randrange(2, len(words) - 1)
            rows.append({"prompt": " ".join(words[:cut]), "completion": " " + " ".join(words[cut:])})
    return rows


def corpus() -> list[str]:
    texts = [r["prompt"] + r["completion"] for r in task_rows()]
    texts += [r["prompt"] + r["completion"] for r in general_rows(400)]
    texts += [" ".join(NUMBERS)] * 5 + SENTENCES
    return texts


def build_tokenizer(out_dir: Path, vocab_size: int = 400) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def _pretrain(model: Any, tokenizer: Any, steps: int, seed: int) -> None:
    """A few hundred full-parameter steps on the general corpus (and the task's vocabulary, without
    the labels), so that the base model has measurable, losable skill."""
    rng = random.Random(seed)
    texts = [r["prompt"] + r["completion"] for r in general_rows(400, seed=seed)]
    texts += [" ".join(NUMBERS)] * 20
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = rng.sample(texts, 16)
        enc = tokenizer([tokenizer.bos_token + t + tokenizer.eos_token for t in batch], return_tensors="pt",
                        padding=True, add_special_tokens=False)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def build_model(out_dir: Path, *, pretrain_steps: int = 120, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Saves a tiny Llama + tokenizer to out_dir (save_pretrained) and returns the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    if pretrain_steps:
        _pretrain(model, tokenizer, pretrain_steps, seed)
    model.save_pretrained(out_dir)
    return out_dir


def write_rows(path: Path, rows: list[dict[str, Any]], fmt: str = "jsonl") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        import csv

        keys = sorted({k for r in rows for k in r})
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(fmt)
    return path


def base_spec(model_dir: Path, data_dir: Path, out_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A FineTuneJob spec (camelCase) for the color task, with deep-merged overrides."""
    rows = task_rows()
    write_rows(data_dir / "train.jsonl", rows[:200])
    write_rows(data_dir / "validation.jsonl", rows[200:])
    write_rows(data_dir / "retention.jsonl", general_rows(40, seed=7))
    spec: dict[str, Any] = {
        "baseModel": {"uri": f"file://{model_dir}"},
        "adapter": {"family": "colors"},
        "dataset": {
            "train": {"uri": f"file://{data_dir}/train.jsonl", "format": "jsonl"},
            "validation": {"uri": f"file://{data_dir}/validation.jsonl"},
            "retention": {"uri": f"file://{data_dir}/retention.jsonl"},
            "rules": {"minRows": 8, "maxTokens": 64},
        },
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                            "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                              "gate_proj", "up_proj", "down_proj"]}},
        "training": {"maxSteps": 40, "learningRate": 5e-3, "batchSize": 4, "gradientAccumulation": 1,
                     "maxSeqLength": 128, "warmupRatio": 0.05, "checkpointInterval": 20, "seed": 3},
        "gates": {"minExactMatch": 0.5, "maxRetentionRegression": 0.5},
        "output": {"uri": f"file://{out_dir}"},
    }
    return deep_merge(spec, overrides)


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def cached_model(**kwargs: Any) -> Path:
    """build_model() once per version of this file (and arguments), cached outside the clone: the
    pre-training takes a minute on a small CPU and the result is deterministic."""
    import hashlib
    import os
    import shutil
    import uuid

    key = hashlib.sha256(Path(__file__).read_bytes() + json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(os.environ.get("TUNERAG_CACHE", Path.home() / ".cache" / "tunerag")) / "finetune-fixtures"
    final = root / key
    if (final / "config.json").exists() and (final / "tokenizer.json").exists():
        return final
    tmp = root / f"{key}.tmp-{uuid.uuid4().hex[:6]}"
    build_model(tmp, **kwargs)
    try:
        tmp.rename(final)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return final
