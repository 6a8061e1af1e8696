"""nf4 (double quantization) vs float16 size of the finetune workload's quantization step
(`tunerag_workloads.finetune.quantize.merge_and_quantize`) on a model of realistic shape.

A randomly initialised Llama built from a config (no download): by default TinyLlama-1.1B's shape
(hidden 2048, intermediate 5632, 22 layers, 32 heads / 4 KV heads, vocab 32000, untied LM head),
with a random LoRA adapter (r=16 on q/k/v/o) merged by the workload. Prints the on-disk sizes the
workload reports, their ratio, the time the step took, and where the bytes go: parameters in the
quantized Linear layers of the decoder vs those that stay 16-bit (token embeddings, LM head, norms).

    PYTHONPATH=operator/src:workloads/src:tests python tests/benchmarks/quantize_size.py [--layers 22]

CPU: bitsandbytes' CPU backend quantizes; the validation forward passes are few and short.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import load

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--examples", type=int, default=4, help="validation examples (64 tokens each)")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tunerag_workloads.finetune.data import Example
    from tunerag_workloads.finetune.quantize import merge_and_quantize
    from tunerag_workloads.finetune.storage import Store

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    t = time.perf_counter()
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.float16)
    params = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear))
    embed = model.model.embed_tokens.weight.numel()
    head = model.lm_head.weight.numel()
    other = params - linear - embed - head
    print(f"model: {params / 1e9:.3f}B parameters (decoder Linear {linear / 1e9:.3f}B, embeddings {embed / 1e6:.1f}M, "
          f"LM head {head / 1e6:.1f}M, norms {other / 1e3:.0f}k); built in {time.perf_counter() - t:.0f}s; {load()}", flush=True)
    rng = random.Random(0)
    data = [Example(prompt="", completion="", input_ids=[1] + [rng.randrange(3, args.vocab) for _ in range(62)] + [2], prompt_len=16)
            for _ in range(args.examples)]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        model.save_pretrained(base)
        PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0}, unk_token="<pad>")),
                                pad_token="<pad>").save_pretrained(base)
        adapter = Path(tmp) / "adapter"
        get_peft_model(model, LoraConfig(r=16, target_modules=LORA_TARGETS, init_lora_weights=False)).save_pretrained(adapter)
        del model
        t = time.perf_counter()
        q: dict[str, Any] = merge_and_quantize(base_path=str(base), adapter_dir=adapter, fmt="nf4", validation=data, max_len=512,
                                               pad_id=0, store=Store(f"file://{tmp}/run"))
        seconds = time.perf_counter() - t
    fp16, nf4 = q["fp16SizeBytes"], q["sizeBytes"]
    sixteen = 2 * (embed + head + other)
    print(f"\nnf4+double quant {nf4 / 2**30:.3f} GiB vs fp16 {fp16 / 2**30:.3f} GiB: ratio {q['ratio']}x; "
          f"merge_and_quantize {seconds:.0f}s on CPU; {load()}")
    print(f"16-bit parts (embeddings + LM head + norms): {sixteen / 2**30:.3f} GiB = {sixteen / nf4:.0%} of the nf4 file; "
          f"decoder Linear in nf4: {(nf4 - sixteen) / 2**30:.3f} GiB = {8 * (nf4 - sixteen) / linear:.2f} bits/parameter "
          f"(fp16: {2 * linear / 2**30:.3f} GiB, {2 * linear / max(nf4 - sixteen, 1):.2f}x)")
    print(f"relativeLossDelta {q['relativeLossDelta']}, argmaxAgreement {q['argmaxAgreement']} (random weights: not meaningful)")


if __name__ == "__main__":
    main()
