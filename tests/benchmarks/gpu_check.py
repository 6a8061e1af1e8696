"""GPU check of the finetune workload: QLoRA and LoRA on CUDA through the real pipeline.

    python tests/benchmarks/gpu_check.py [--hidden 2048 --layers 16 --steps 15] [--json out.json]

1. End to end on a tiny pre-trained model (the test fixture): LoRA and QLoRA each reach a verdict,
   the adapter improves the task over the base, and QLoRA's base really is 4-bit.
2. Memory and throughput on a larger random Llama (default ~0.8B parameters, bf16 weights):
   peak `torch.cuda.max_memory_allocated`, real (non-padding) tokens/s, wall time, for LoRA vs
   QLoRA, same data (lengths log-uniform in 16-512), same steps.

Prints a table; asserts nothing about speed. Runs on CPU too (slowly) with small --hidden/--layers.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tunerag_workloads.finetune import run_pipeline
from workloads import finetune_fixtures as ff

QLORA = {"type": "qlora", "quantization": {"quantType": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"}}


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def run(spec: dict[str, Any], name: str) -> dict[str, Any]:
    reset_peak()
    started = time.perf_counter()
    result = run_pipeline({"kind": "FineTuneJob", "namespace": "gpu", "name": name, "generation": 1, "spec": spec})
    return {"name": name, "seconds": round(time.perf_counter() - started, 1), "peakMiB": round(peak_mib()),
            "verdict": result["verdict"], "metrics": result["metrics"], "hyperParameters": result["hyperParameters"],
            "steps": result["steps"]}


def tiny_end_to_end(tmp: Path) -> list[dict[str, Any]]:
    model_dir = ff.build_model(tmp / "tiny")
    good = {"training": {"learningRate": 1e-3, "maxSteps": 60},
            "gates": {"minExactMatch": 0.3, "maxValidationLoss": 1.5, "maxRetentionRegression": 3.0}}
    out = []
    for method in ("lora", "qlora"):
        overrides = ff.deep_merge(good, {"method": QLORA} if method == "qlora" else {})
        spec = ff.base_spec(model_dir, tmp / "tiny-data", tmp / f"tiny-out-{method}", **overrides)
        out.append(run(spec, f"tiny-{method}"))
    return out


def long_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Varied-length examples (log-uniform 16-512 words) over the fixture tokenizer's vocabulary."""
    rng = random.Random(seed)
    words = " ".join(ff.corpus()).split()
    rows = []
    for _ in range(n):
        length = int(math.exp(rng.uniform(math.log(16), math.log(512))))
        text = [rng.choice(words) for _ in range(length)]
        cut = max(1, length // 4)
        rows.append({"prompt": " ".join(text[:cut]), "completion": " " + " ".join(text[cut:])})
    return rows


def big_model(tmp: Path, hidden: int, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp / "big"
    tokenizer = ff.build_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // 128), num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    print(f"big model: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters", flush=True)
    return folder


def big_comparison(tmp: Path, hidden: int, layers: int, steps: int) -> list[dict[str, Any]]:
    model_dir = big_model(tmp, hidden, layers)
    data = tmp / "big-data"
    ff.write_rows(data / "train.jsonl", long_rows(400, 1))
    # Short completions: exact-match decodes greedily, token by token, and is not what is measured here.
    short = [{"prompt": r["prompt"], "completion": " ".join(r["completion"].split()[:3])} for r in long_rows(24, 2)]
    ff.write_rows(data / "validation.jsonl", short)
    out = []
    for method in ("lora", "qlora"):
        spec: dict[str, Any] = {
            "baseModel": {"uri": f"file://{model_dir}"}, "adapter": {"family": "big"},
            "dataset": {"train": {"uri": f"file://{data}/train.jsonl"}, "validation": {"uri": f"file://{data}/validation.jsonl"},
                        "rules": {"minRows": 8, "maxTokens": 1024}},
            "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
            "training": {"maxSteps": steps, "batchSize": 8, "maxSeqLength": 1024, "learningRate": 1e-4,
                         "checkpointInterval": 100000, "packing": True},
            "gates": {"maxRetentionRegression": 100.0},
            "output": {"uri": f"file://{tmp}/big-out-{method}"},
        }
        if method == "qlora":
            spec["method"] = {**spec["method"], **QLORA}
        out.append(run(spec, f"big-{method}"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import bitsandbytes
    import peft
    import transformers

    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "transformers": transformers.__version__, "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__}
    print(json.dumps(env), flush=True)
    report: dict[str, Any] = {"env": env}
    with tempfile.TemporaryDirectory() as tmp:
        report["tiny"] = tiny_end_to_end(Path(tmp))
        for r in report["tiny"]:
            m = r["metrics"]
            print(f"{r['name']:12} verdict {r['verdict']:9} exactMatch {m.get('exactMatch')} (base {m.get('baseExactMatch')}) "
                  f"valLoss {m.get('validationLoss')} (base {m.get('baseValidationLoss')}) peak {r['peakMiB']} MiB "
                  f"{r['seconds']}s 4bit={r['hyperParameters'].get('linear4bitModules', '-')}", flush=True)
        if not args.skip_big:
            report["big"] = big_comparison(Path(tmp), args.hidden, args.layers, args.steps)
            print(f"\n{'run':10} {'peak MiB':>9} {'tokens/s':>10} {'seconds':>8}")
            for r in report["big"]:
                print(f"{r['name']:10} {r['peakMiB']:>9} {r['metrics'].get('tokensPerSecond') or 0:>10.0f} {r['seconds']:>8}")
            lora, qlora = report["big"]
            print(f"QLoRA/LoRA peak memory: {qlora['peakMiB'] / max(1, lora['peakMiB']):.2f}; "
                  f"throughput: {(qlora['metrics'].get('tokensPerSecond') or 0) / max(1e-9, lora['metrics'].get('tokensPerSecond') or 0):.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
