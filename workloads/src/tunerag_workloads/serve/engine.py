"""The model: a causal LM with every adapter loaded by peft, or one version's merged (quantized)
model alone, and greedy generation.

peft keeps one active adapter per model (`set_adapter` is global state), so choosing the adapter and
generating happen together under one lock: concurrent requests for different adapters are
serialised, never mixed. Prompts are tokenised as the training workload tokenised them: plain text
gets BOS + text (no other special tokens), chat-templated text is taken as it is.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.serve.artifacts import LocalAdapter
from tunerag_workloads.serve.config import BASE, ServeConfig


class PromptTooLong(ValueError):
    """The prompt and the tokens to generate do not fit the model's context."""


@dataclass(frozen=True)
class Generated:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str  # "stop" (end of sequence) or "length" (max tokens reached)


class Engine:
    def __init__(self, model: Any, tokenizer: Any, adapters: tuple[str, ...], device: torch.device,
                 merged: bool = False) -> None:
        """`merged`: the model is one version's merged model, `adapters` its name alone; there is no
        base model to serve beside it."""
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.device = device
        self.merged = merged
        self._lock = threading.Lock()
        eos = model.generation_config.eos_token_id
        self._eos = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
        self._eos.discard(None)
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)

    def chat_prompt(self, messages: list[dict[str, str]]) -> tuple[str, bool]:
        """(prompt text, templated): the tokenizer's chat template if it has one, else the turns as
        `role: content` lines ending with `assistant:` (then tokenised like a plain prompt)."""
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)), True
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:", False

    def generate(self, prompt: str, adapter: str, max_new_tokens: int, *, templated: bool = False) -> Generated:
        """Greedy decoding with `adapter` (a loaded adapter's name, or "base")."""
        ids: list[int] = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not templated and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id, *ids]
        if self.max_positions is not None and len(ids) + max_new_tokens > self.max_positions:
            raise PromptTooLong(f"the prompt has {len(ids)} tokens; with {max_new_tokens} new tokens it exceeds "
                                f"the model's context of {self.max_positions}")
        input_ids = torch.tensor([ids], device=self.device)
        with self._lock, self._selected(adapter), torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self._pad, eos_token_id=sorted(self._eos) or None)
        new: list[int] = out[0, len(ids):].tolist()
        stop = next((i for i, t in enumerate(new) if t in self._eos), None)
        finish = "stop" if stop is not None else "length"
        kept = new[:stop] if stop is not None else new
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Generated(text=text, tokens_in=len(ids), tokens_out=len(new), finish_reason=finish)

    @property
    def has_base(self) -> bool:
        """Whether `base` (the base model without adapters) can be served."""
        return not self.merged

    @contextlib.contextmanager
    def _selected(self, adapter: str) -> Iterator[None]:
        if self.merged:
            if adapter not in self.adapters:
                raise KeyError(adapter)
            yield
        elif not self.adapters:
            if adapter != BASE:
                raise KeyError(adapter)
            yield
        elif adapter == BASE:
            with self.model.disable_adapter():
                yield
        else:
            if adapter not in self.adapters:
                raise KeyError(adapter)
            self.model.set_adapter(adapter)
            yield


def _load_base(config: ServeConfig, path: str) -> Any:
    from transformers import AutoModelForCausalLM

    from tunerag_workloads.finetune.train import bf16_supported, device

    dev = device()
    kwargs: dict[str, Any] = {}
    if config.load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise WorkloadError("QuantizationUnavailable", f"loadIn4bit needs bitsandbytes: {exc}") from exc
        compute = torch.bfloat16 if bf16_supported(dev) else (torch.float16 if dev.type == "cuda" else torch.float32)
        quantization: Any = BitsAndBytesConfig
        kwargs["quantization_config"] = quantization(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                     bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": dev.index if dev.type == "cuda" else "cpu"}
    else:
        kwargs["dtype"] = torch.bfloat16 if dev.type == "cuda" and bf16_supported(dev) else torch.float32
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise WorkloadError("BaseModelNotFound", f"cannot load base model {config.base_model}: {str(exc)[:500]}") from exc
    except (RuntimeError, ImportError) as exc:
        if config.load_in_4bit:
            raise WorkloadError("QuantizationUnavailable", f"cannot load {config.base_model} in 4 bits on {dev.type}: "
                                f"{str(exc)[:500]}") from exc
        raise
    if config.load_in_4bit:
        if not any(type(m).__name__ == "Linear4bit" for m in model.modules()):
            raise WorkloadError("QuantizationUnavailable", f"{config.base_model} loaded without 4-bit layers")
    else:
        model.to(dev)
    return model.eval()


def _check_weights(model: Any, adapter: LocalAdapter) -> None:
    """Every LoRA tensor in the adapter's file found a module of the same shape in the base, and every
    LoRA module peft created got its weights: otherwise the adapter was made for another model (peft
    itself ignores weights for modules the base lacks). Other saved tensors (modules_to_save,
    resized embeddings) are peft's to check: it refuses a shape mismatch."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter.name, save_embedding_layers=False)
    expected = {k: tuple(v.shape) for k, v in state.items() if "lora_" in k}
    found: dict[str, tuple[int, ...]] = {}
    weights = adapter.path / "adapter_model.safetensors"
    if weights.exists():
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if "lora_" in k}  # noqa: SIM118 (not a dict)
    else:
        saved = torch.load(adapter.path / "adapter_model.bin", map_location="cpu", weights_only=True)
        found = {k: tuple(v.shape) for k, v in saved.items() if "lora_" in k}
    extra = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    shapes = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if extra or missing or shapes:
        problems = [f"{label} {len(keys)} (e.g. {keys[0]})" for label, keys in
                    (("weights for modules the base model lacks:", extra), ("modules without weights:", missing),
                     ("shape mismatches:", shapes)) if keys]
        raise WorkloadError("AdapterIncompatible", f"adapter {adapter.name} does not fit base model: " + "; ".join(problems))


def _load_merged(merged: LocalAdapter) -> Engine:
    """A version's merged model (already verified) alone, loaded as the training workload's quality
    check loaded it (`finetune.quantize.load_merged`), with the tokenizer saved beside it."""
    from transformers import AutoTokenizer

    from tunerag_workloads.finetune.quantize import load_merged
    from tunerag_workloads.finetune.train import device

    dev = device()
    try:
        tokenizer = AutoTokenizer.from_pretrained(merged.path)
        model = load_merged(merged.path, dev)
    except (OSError, ValueError) as exc:
        raise WorkloadError("AdapterInvalid", f"adapter {merged.name}: cannot load the {merged.format} model at "
                            f"{merged.uri}: {str(exc)[:500]}") from exc
    except (RuntimeError, ImportError) as exc:
        raise WorkloadError("QuantizationUnavailable", f"cannot load the {merged.format} model of {merged.name} on "
                            f"{dev.type}: {str(exc)[:500]}") from exc
    return Engine(model.eval(), tokenizer, (merged.name,), next(model.parameters()).device, merged=True)


def load_engine(config: ServeConfig, adapters: list[LocalAdapter], work_dir: Path) -> Engine:
    """The base model and the adapters (already verified), in order: the first is the default. Or a
    version's merged model alone (config.merged), which replaces the base model."""
    from transformers import AutoTokenizer

    from tunerag_workloads.finetune.train import resolve_model_path

    if adapters and adapters[0].merged:
        return _load_merged(adapters[0])

    path = resolve_model_path(config.base_model, work_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise WorkloadError("BaseModelNotFound", f"cannot load the tokenizer of {config.base_model}: {str(exc)[:500]}") from exc
    model = _load_base(config, path)
    device = next(model.parameters()).device
    for i, adapter in enumerate(adapters):
        if adapter.base_model and "://" in adapter.base_model and adapter.base_model != config.base_model:
            print(f"warning: adapter {adapter.name} was trained on {adapter.base_model}; serving it on {config.base_model}",
                  file=sys.stderr, flush=True)
        try:
            if i == 0:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(adapter.path), adapter_name=adapter.name)
            else:
                model.load_adapter(str(adapter.path), adapter_name=adapter.name)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:3])[:600]
            raise WorkloadError("AdapterIncompatible", f"adapter {adapter.name} cannot be loaded on {config.base_model}: "
                                f"{type(exc).__name__}: {detail}") from exc
        _check_weights(model, adapter)
    model.eval()
    return Engine(model, tokenizer, tuple(a.name for a in adapters), device)
