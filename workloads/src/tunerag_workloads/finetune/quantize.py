"""Optional: merge the adapter into the base and quantize the merged model (nf4 or int8, bitsandbytes).

Sizes are measured on disk, every file of the folder but the manifest (weights, config, tokenizer):
the merged model saved in float16 (the usual serving baseline) and the quantized model as
bitsandbytes serializes it (embeddings and the LM head stay in 16 bit, so small models compress less
than the 4x of the weights alone). So the quantized size is its manifest's `sizeBytes`, the size an
AdapterVersion registers, and both folders count the same non-weight files. The quantized model is
reloaded from what was saved and compared with the unquantized merged model on the validation set:

- relative validation-loss difference |q - ref| / ref   <= LOSS_TOLERANCE
- greedy (argmax) agreement on completion tokens          >= AGREEMENT_TOLERANCE
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.finetune.data import Example
from tunerag_workloads.finetune.publish import MANIFEST, build_manifest
from tunerag_workloads.finetune.storage import Store
from tunerag_workloads.finetune.train import IGNORE, collate, pack

LOSS_TOLERANCE = 0.10
AGREEMENT_TOLERANCE = 0.90


def folder_size(folder: Path) -> int:
    """Bytes of the folder's files, the manifest excluded (as `build_manifest` counts them)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


@torch.no_grad()
def loss_and_argmax(model: Any, examples: list[Example], max_len: int, pad_id: int) -> tuple[float, torch.Tensor]:
    dev = next(p.device for p in model.parameters())
    rows = pack([e.length for e in examples], list(range(len(examples))), max_len, True)
    total, count, preds = 0.0, 0, []
    for i in range(0, len(rows), 8):
        b = collate(examples, rows[i:i + 8], pad_id)
        logits = model(input_ids=b.input_ids.to(dev), position_ids=b.position_ids.to(dev), use_cache=False).logits.float()
        keep = b.targets.to(dev) != IGNORE
        sel = logits[keep]
        total += float(torch.nn.functional.cross_entropy(sel, b.targets.to(dev)[keep], reduction="sum"))
        count += int(keep.sum())
        preds.append(sel.argmax(-1).cpu())
    return total / max(count, 1), torch.cat(preds) if preds else torch.empty(0)


def merge_and_quantize(*, base_path: str, adapter_dir: Path, fmt: str, validation: list[Example], max_len: int,
                       pad_id: int, store: Store, revision: str | None = None) -> dict[str, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        merged_dir, quant_dir = Path(tmp) / "merged", Path(tmp) / "quantized"
        base = AutoModelForCausalLM.from_pretrained(base_path, revision=revision, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()
        ref_loss, ref_pred = loss_and_argmax(merged.to(dev), validation, max_len, pad_id)
        merged.to(torch.float16).save_pretrained(merged_dir)
        AutoTokenizer.from_pretrained(base_path, revision=revision).save_pretrained(merged_dir)
        del merged, base
        fp16_size = folder_size(merged_dir)
        compute = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        if fmt == "nf4":
            qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=compute)
        else:
            qc = BitsAndBytesConfig(load_in_8bit=True)
        try:
            # Unquantized parts (embeddings, norms, LM head) stay float16 as in the baseline.
            q = AutoModelForCausalLM.from_pretrained(merged_dir, quantization_config=qc, dtype=torch.float16,
                                                     device_map={"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"})
            q.save_pretrained(quant_dir)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            raise WorkloadError("QuantizationFailed", f"cannot quantize the merged model to {fmt} on {dev.type}: {exc}") from exc
        AutoTokenizer.from_pretrained(merged_dir).save_pretrained(quant_dir)
        del q
        quant_size = folder_size(quant_dir)
        reloaded = load_merged(quant_dir, dev)
        q_loss, q_pred = loss_and_argmax(reloaded, validation, max_len, pad_id)
        agreement = float((q_pred == ref_pred).float().mean()) if len(ref_pred) else 1.0
        loss_delta = abs(q_loss - ref_loss) / ref_loss if ref_loss > 0 else 0.0
        manifest = build_manifest_tree(quant_dir)
        (quant_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        uri = store.put_folder(quant_dir, "quantized", marker=MANIFEST)
    return {
        "uri": uri, "format": fmt, "sha256": manifest["sha256"], "sizeBytes": quant_size, "fp16SizeBytes": fp16_size,
        "ratio": round(fp16_size / quant_size, 3) if quant_size else None,
        "referenceLoss": round(ref_loss, 6), "quantizedLoss": round(q_loss, 6),
        "relativeLossDelta": round(loss_delta, 6), "argmaxAgreement": round(agreement, 6),
        "withinTolerance": loss_delta <= LOSS_TOLERANCE and agreement >= AGREEMENT_TOLERANCE,
        "tolerance": {"relativeLossDelta": LOSS_TOLERANCE, "argmaxAgreement": AGREEMENT_TOLERANCE},
    }


def load_merged(folder: Path, dev: torch.device) -> Any:
    """A saved merged model, loaded as the check above measured it (and as the serving workload
    serves it): its quantization from its own config.json, every weight on `dev`."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, device_map={"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"})


def build_manifest_tree(folder: Path) -> dict[str, Any]:
    if any(p.is_dir() for p in folder.iterdir()):
        raise WorkloadError("QuantizationFailed", f"unexpected sub-folder in {folder}")
    return build_manifest(folder)
