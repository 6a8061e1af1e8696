"""Training throughput of the finetune workload vs a plain transformers Trainer + peft script.

Prints real (non-padding) tokens per second, same model, same varied-length data (log-uniform
lengths in 16-512, loss on the last 75% of each example), same LoRA targets, same number of
optimizer steps. The workload packs examples with per-example attention (position_ids restart,
block-diagonal mask) and runs the LM head only on completion positions; the Trainer baseline uses
dynamic padding (pad to the longest in each batch). TRL's SFTTrainer with packing=True (its "bfd"
packing, which turns on padding-free batches: the rows of a batch flattened into one sequence,
position_ids restarting per example, completion-only loss) is measured too when `trl` is installed;
it is not in the dev lock: run the script with the venv of `tests/benchmarks/peer_venvs.sh trl`
(the dev lock plus trl, same torch/transformers/peft). Without FlashAttention (CPU, or sdpa) a
padding-free batch attends causally across its examples: same token count, more attention work.
On CPU every path trains in float32 without gradient checkpointing (TRL's defaults, bf16 and
gradient checkpointing, are switched off to match).

    python tests/benchmarks/finetune_throughput.py [--steps 12] [--threads 2]
    $(tests/benchmarks/peer_venvs.sh trl)/bin/python tests/benchmarks/finetune_throughput.py   # with TRL

Also reports peak RSS of LoRA vs QLoRA (each in a fresh process) and the nf4 size ratio of the
12M model (`--memory`, `--quantize`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tunerag_workloads.finetune.data import Example

VOCAB = 8192
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def build_model(folder: Path) -> Path:
    """A ~12M-parameter Llama (hidden 320, 6 layers, vocab 8192), random weights, saved."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=320, intermediate_size=864, num_hidden_layers=6,
                         num_attention_heads=5, num_key_value_heads=5, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", flush=True)
    return folder


def examples(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = int(math.exp(rng.uniform(math.log(16), math.log(512))))
        ids = [1] + [rng.randrange(3, VOCAB) for _ in range(length - 2)] + [2]
        out.append(Example(prompt="", completion="", input_ids=ids, prompt_len=max(1, length // 4)))
    return out


def spec(model_dir: Path, out: Path, steps: int, batch_rows: int, method: str = "lora") -> Any:
    from tunerag_workloads.finetune.spec import parse_spec

    s: dict[str, Any] = {
        "baseModel": {"uri": f"file://{model_dir}"}, "adapter": {"family": "bench"},
        "dataset": {"train": {"uri": "file:///unused.jsonl"}},
        "method": {"type": method, "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targetModules": LORA_TARGETS}},
        "training": {"maxSteps": steps, "batchSize": batch_rows, "maxSeqLength": 512, "learningRate": 1e-4,
                     "checkpointInterval": 10**6, "packing": True},
        "output": {"uri": f"file://{out}"},
    }
    if method == "qlora":
        s["method"]["quantization"] = {"computeDtype": "bfloat16"}
    return parse_spec(s)


def run_workload(model_dir: Path, data: list[Example], steps: int, batch_rows: int, method: str = "lora") -> dict[str, float]:
    import contextlib
    import io

    from tunerag_workloads.finetune.storage import Store
    from tunerag_workloads.finetune.train import load_model, train

    with tempfile.TemporaryDirectory() as tmp:
        sp = spec(model_dir, Path(tmp), steps, batch_rows, method)
        loaded = load_model(sp, str(model_dir))
        with contextlib.redirect_stdout(io.StringIO()):
            outcome = train(sp, loaded, data, Store(f"file://{tmp}/run"), pad_id=0)
    return {"tokensPerSecond": outcome.real_tokens / outcome.train_seconds, "realTokens": outcome.real_tokens,
            "paddedTokens": outcome.padded_tokens, "seconds": outcome.train_seconds}


def count_trained_tokens(trainer: Any, seen: dict[str, int], real: Any) -> None:
    """Counts the tokens of the batches that reach `training_step` (the dataloader prefetches a batch
    ahead, so counting in the collator would add one batch that never trains)."""
    step = trainer.training_step

    def counting(model: Any, inputs: dict[str, Any], *rest: Any, **kwargs: Any) -> Any:
        seen["real"] += real(inputs)
        seen["padded"] += int(inputs["input_ids"].numel())
        return step(model, inputs, *rest, **kwargs)

    trainer.training_step = counting


def run_trainer(model_dir: Path, data: list[Example], steps: int, batch: int) -> dict[str, float]:
    """transformers Trainer + peft, dynamic padding, full-sequence logits, loss on the same tokens."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                      task_type="CAUSAL_LM"))
    rows = [{"input_ids": e.input_ids, "labels": [-100] * e.prompt_len + e.input_ids[e.prompt_len:]} for e in data]

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        return {
            "input_ids": torch.tensor([b["input_ids"] + [0] * (width - len(b["input_ids"])) for b in batch]),
            "attention_mask": torch.tensor([[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"])) for b in batch]),
            "labels": torch.tensor([b["labels"] + [-100] * (width - len(b["labels"])) for b in batch]),
        }

    seen = {"real": 0, "padded": 0}

    class Count(TrainerCallback):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
                                 logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                                 dataloader_num_workers=0, seed=0, disable_tqdm=True,
                                 bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Count()])
        count_trained_tokens(trainer, seen, lambda inputs: int(inputs["attention_mask"].sum()))
        start = time.monotonic()
        trainer.train()
        seconds = time.monotonic() - start
    return {"tokensPerSecond": seen["real"] / seconds, "realTokens": seen["real"], "paddedTokens": seen["padded"],
            "seconds": seconds}


def run_trl(model_dir: Path, data: list[Example], steps: int, batch_rows: int) -> dict[str, float]:
    """TRL SFTTrainer, packing=True (bfd, padding-free), LoRA through peft_config, completion-only
    loss on the same tokens; batches of `batch_rows` packed rows of 512 tokens, as the workload."""
    from datasets import Dataset
    from peft import LoraConfig
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<s>": 1, "</s>": 2}, unk_token="<pad>")),
                                        pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = Dataset.from_list([{"input_ids": e.input_ids,
                                  "completion_mask": [0] * e.prompt_len + [1] * (len(e.input_ids) - e.prompt_len)} for e in data])
    seen = {"real": 0, "padded": 0}
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_rows, learning_rate=1e-4,
                         packing=True, max_length=512, completion_only_loss=True, gradient_checkpointing=False,
                         bf16=False, fp16=False, logging_steps=10**6, save_strategy="no", report_to=[],
                         use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                                    task_type="CAUSAL_LM"))
        # padding-free: one flattened row per batch, no padding (pad_to_multiple_of is off on CPU/CUDA)
        count_trained_tokens(trainer, seen, lambda inputs: int(inputs["input_ids"].numel()))
        start = time.monotonic()
        trainer.train()
        seconds = time.monotonic() - start
    return {"tokensPerSecond": seen["real"] / seconds, "realTokens": seen["real"], "paddedTokens": seen["padded"],
            "seconds": seconds}


def peak_rss(model_dir: Path, method: str, steps: int) -> float:
    """Peak GPU memory (torch.cuda.max_memory_allocated) on a GPU, else the growth of peak RSS while
    loading and training (imports excluded), MiB, in a fresh process."""
    code = (f"import sys, resource, torch; torch.set_num_threads(1); sys.path[:0] = {sys.path!r};"
            "from finetune_throughput import run_workload, examples; from pathlib import Path;"
            "import bitsandbytes, peft, transformers; data = examples(64);"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            f"run_workload(Path({str(model_dir)!r}), data, {steps}, 2, {method!r});"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,"
            " torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent)
    rss_kib, cuda_bytes = (int(v) for v in out.stdout.strip().splitlines()[-1].split())
    return round(cuda_bytes / 2**20 if cuda_bytes else rss_kib / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--quantize", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model")
        data = examples(2000)
        mean_len = sum(e.length for e in data) / len(data)
        # Same optimizer steps; tokens per step comparable: 8 examples ~ 1150 tokens vs 3 packed rows of 512.
        try:
            import trl

            have_trl = True
        except ImportError:
            have_trl = False
        results: dict[str, list[dict[str, float]]] = {"trainer_dynamic_padding": [], "workload_packed": []}
        if have_trl:
            results["trl_sft_packing"] = []
        for _ in range(2):  # interleaved, best of two: the machine is shared
            results["trainer_dynamic_padding"].append(run_trainer(model_dir, data, args.steps, 8))
            results["workload_packed"].append(run_workload(model_dir, data, args.steps, 3))
            if have_trl:
                results["trl_sft_packing"].append(run_trl(model_dir, data, args.steps, 3))
        best = {k: max(v, key=lambda r: r["tokensPerSecond"]) for k, v in results.items()}
        for k, r in best.items():
            print(f"{k:26s} {r['tokensPerSecond']:8.0f} real tok/s  padding waste "
                  f"{1 - r['realTokens'] / r['paddedTokens']:.0%}  ({r['realTokens']} tokens, {r['seconds']:.1f}s)", flush=True)
        ratio = best["workload_packed"]["tokensPerSecond"] / best["trainer_dynamic_padding"]["tokensPerSecond"]
        summary: dict[str, Any] = {"threads": args.threads, "meanLength": round(mean_len, 1), "steps": args.steps,
                                   "workloadVsTrainer": round(ratio, 2), "loadavg": [round(x, 2) for x in os.getloadavg()]}
        if have_trl:
            summary["workloadVsTrl"] = round(best["workload_packed"]["tokensPerSecond"] / best["trl_sft_packing"]["tokensPerSecond"], 2)
            summary["trl"] = f"trl {trl.__version__}, SFTTrainer packing=True (bfd, padding-free), fp32, no gradient checkpointing"
        else:
            summary["trl"] = "not installed (not in the dev lock): SFTTrainer not measured; see peer_venvs.sh trl"
        if args.memory:
            summary["peakMemoryMiB (cuda max allocated, else RSS growth)"] = {m: peak_rss(model_dir, m, 4) for m in ("lora", "qlora")}
        if args.quantize:
            summary["nf4"] = quantize_ratio(model_dir, data[:32])
        print(json.dumps(summary), flush=True)


def quantize_ratio(model_dir: Path, data: list[Example]) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from tunerag_workloads.finetune.quantize import merge_and_quantize
    from tunerag_workloads.finetune.storage import Store

    with tempfile.TemporaryDirectory() as tmp:
        from tokenizers import Tokenizer, models

        PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0}, unk_token="<pad>")),
                                pad_token="<pad>").save_pretrained(model_dir)
        adapter = Path(tmp) / "adapter"
        get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                       LoraConfig(r=16, target_modules=LORA_TARGETS, init_lora_weights=False)).save_pretrained(adapter)
        q = merge_and_quantize(base_path=str(model_dir), adapter_dir=adapter, fmt="nf4", validation=data, max_len=512,
                               pad_id=0, store=Store(f"file://{tmp}/run"))
    return {k: q[k] for k in ("sizeBytes", "fp16SizeBytes", "ratio", "relativeLossDelta", "argmaxAgreement")}


if __name__ == "__main__":
    print(f"ru_maxrss at start: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB", flush=True)
    main()
