"""Model loading, packing and the training loop with checkpoint/resume.

Design choices (see docs in the final report):

- Own loop rather than HF Trainer: the loop is ~100 lines, and owning it gives exact control over
  what a checkpoint holds (adapter, optimizer, scheduler, RNG, data position), the per-step
  token-level loss normalisation across gradient accumulation, counting real tokens, and computing
  the LM head only on completion positions (on small models with large vocabularies the LM head is
  most of the FLOPs, and prompt positions never need logits).
- Packing: examples are bin-packed (best-fit decreasing) into rows of at most maxSeqLength tokens;
  position_ids restart at 0 for every example and no attention_mask is passed, so transformers builds
  a block-diagonal causal mask (masking_utils.find_packed_sequence_indices): no token attends across
  examples. This is exact (a test checks packed logits equal per-example logits) and wastes no
  compute on padding except the tail of each micro-batch; on CPU it beats length-grouped batching
  because rows are full and matmuls are large.
- Targets are shifted per example (the last token of one example never predicts the first of the
  next), and only completion tokens carry loss.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunerag_workloads.contract import WorkloadError, report_progress, resolve_uri
from tunerag_workloads.finetune import distributed
from tunerag_workloads.finetune.data import Example
from tunerag_workloads.finetune.spec import FineTuneSpec
from tunerag_workloads.finetune.storage import Store

IGNORE = -100
CHECKPOINT_MARKER = "state.json"
KEEP_CHECKPOINTS = 2
HISTORY_POINTS = 500  # train-loss points kept for the report (means over windows of steps on longer runs)
VALIDATION_POINTS = 10  # validation-loss measurements during training, besides one before the first step


# ----------------------------------------------------------------------------------------- loading

def device() -> torch.device:
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else torch.device("cpu")


def bf16_supported(dev: torch.device) -> bool:
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe()) or bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_model_path(uri: str, cache_dir: Path) -> str:
    """A local folder (file://, pvc://), a hub id (hf://org/name, offline cache or hub), or a copy
    of an object-store prefix (s3://...) in cache_dir."""
    if uri.startswith("hf://"):
        return uri.removeprefix("hf://")
    target = resolve_uri(uri)
    if uri.startswith(("file://", "pvc://")):
        if not Path(target).exists():
            raise WorkloadError("BaseModelNotFound", f"base model {uri} does not exist (resolved to {target})")
        return target
    import fsspec

    fs, path = fsspec.core.url_to_fs(target)
    if not fs.exists(path):
        raise WorkloadError("BaseModelNotFound", f"base model {uri} does not exist")
    local = cache_dir / "base-model"
    fs.get(path.rstrip("/") + "/", str(local) + "/", recursive=True)
    return str(local)


def load_tokenizer(path: str, revision: str | None) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise WorkloadError("BaseModelNotFound", f"cannot load the tokenizer of {path}: {exc}") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class LoadedModel:
    model: Any  # PeftModel
    compute_dtype: torch.dtype
    device: torch.device
    notes: dict[str, str] = field(default_factory=dict)


def _linear_paths(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) or type(module).__name__ in {"Conv1D", "Linear4bit", "Linear8bitLt"}]


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The short names of the model's linear modules (q_proj, v_proj, ...)."""
    return sorted({path.rsplit(".", 1)[-1] for path in _linear_paths(model)})


def unknown_target_modules(model: torch.nn.Module, targets: list[str]) -> list[str]:
    """The targets that adapt no linear module, matched as peft matches them: a module's whole
    path, or a dotted suffix of it (`q_proj`, `layers.0.q_proj`)."""
    paths = _linear_paths(model)
    return [t for t in targets if not any(path == t or path.endswith(f".{t}") for path in paths)]


def load_model(spec: FineTuneSpec, path: str) -> LoadedModel:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dev = device()
    notes: dict[str, str] = {}
    kwargs: dict[str, Any] = {"revision": spec.base_model.revision}
    if spec.method.type == "qlora":
        q = spec.method.quantization
        assert q is not None
        compute = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[q.compute_dtype]
        if compute == torch.bfloat16 and not bf16_supported(dev):
            compute = torch.float32 if dev.type == "cpu" else torch.float16
            notes["computeDtypeFallback"] = f"bfloat16 unsupported on {dev.type}; using {compute}".replace("torch.", "")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": dev.index if dev.type == "cuda" else "cpu"}
        kwargs["dtype"] = compute if compute != torch.float32 else torch.float32
    else:
        compute = torch.bfloat16 if dev.type == "cuda" and bf16_supported(dev) else torch.float32
        kwargs["dtype"] = compute
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise WorkloadError("BaseModelNotFound", f"cannot load base model {spec.base_model.uri}: {exc}") from exc
    if spec.method.type != "qlora":
        model.to(dev)
    unknown = unknown_target_modules(model, spec.method.lora.target_modules)
    if unknown:
        raise WorkloadError(
            "UnknownTargetModules",
            f"spec.method.lora.targetModules {unknown} name no linear module of {spec.base_model.uri}; "
            f"valid names: {', '.join(linear_module_names(model))}, or a dotted suffix of a module's path "
            "(layers.0.q_proj)",
        )
    if spec.method.type == "qlora":
        n4 = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
        if n4 == 0:
            raise RuntimeError("qlora: the base model loaded without 4-bit layers")
        notes["linear4bitModules"] = str(n4)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=dev.type == "cuda")
    lora = spec.method.lora
    torch.manual_seed(spec.training.seed)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    for p in peft_model.parameters():  # LoRA weights train in fp32 whatever the base dtype
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return LoadedModel(model=peft_model, compute_dtype=compute, device=dev, notes=notes)


# ----------------------------------------------------------------------------------------- packing

def pack(lengths: list[int], order: list[int], max_len: int, packing: bool) -> list[list[int]]:
    """Best-fit-decreasing bin packing of example indices into rows of at most max_len tokens.
    Ties keep `order` (a seeded shuffle), so epochs differ. Without packing, one example per row."""
    if not packing:
        return [[i] for i in order]
    rank = {i: n for n, i in enumerate(order)}
    items = sorted(order, key=lambda i: (-lengths[i], rank[i]))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, row index), sorted
    for i in items:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            cap, r = free.pop(k)
            rows[r].append(i)
            cap -= n
        else:
            rows.append([i])
            r, cap = len(rows) - 1, max_len - n
        if cap > 0:
            bisect.insort(free, (cap, r))
    return rows


@dataclass
class Batch:
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    real_tokens: int
    target_tokens: int


def collate(examples: list[Example], rows: list[list[int]], pad_id: int) -> Batch:
    seqs, poss, tgts = [], [], []
    for row in rows:
        ids: list[int] = []
        pos: list[int] = []
        tgt: list[int] = []
        for i in row:
            ex = examples[i]
            ids.extend(ex.input_ids)
            pos.extend(range(ex.length))
            # target[t] = token t+1 of the same example, only where t+1 is a completion token.
            nxt = [tok if j + 1 >= ex.prompt_len else IGNORE for j, tok in enumerate(ex.input_ids[1:])]
            tgt.extend([*nxt, IGNORE])
        seqs.append(ids)
        poss.append(pos)
        tgts.append(tgt)
    width = max(len(s) for s in seqs)
    real = sum(len(s) for s in seqs)
    for s, p, t in zip(seqs, poss, tgts, strict=True):
        pad = width - len(s)
        s.extend([pad_id] * pad)
        p.extend(range(pad))  # padding is its own segment at the end: nothing real attends to it
        t.extend([IGNORE] * pad)
    targets = torch.tensor(tgts)
    return Batch(torch.tensor(seqs), torch.tensor(poss), targets, real, int((targets != IGNORE).sum()))


def micro_batches(examples: list[Example], batch_size: int, max_len: int, packing: bool, seed: int,
                  epoch: int) -> list[list[list[int]]]:
    """The micro-batches of one epoch: a deterministic function of (seed, epoch), so a resumed run
    replays exactly the same data order."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    rows = pack([e.length for e in examples], order, max_len, packing)
    rng.shuffle(rows)
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def loss_sum(model: Any, batch: Batch, dev: torch.device, autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Sum of token cross-entropies over completion targets; the LM head runs only on them."""
    input_ids = batch.input_ids.to(dev)
    position_ids = batch.position_ids.to(dev)
    targets = batch.targets.to(dev)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    ctx = torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype else _null()
    with ctx:
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        head = base.get_output_embeddings()
        keep = targets != IGNORE
        if decoder is not None and head is not None:
            hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            logits = head(hidden[keep])
        else:
            logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[keep]
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


# ------------------------------------------------------------------------------------ checkpointing

def latest_checkpoint(store: Store) -> int | None:
    steps = []
    for name in store.list_dirs("checkpoints"):
        if name.startswith("step-") and name[5:].isdigit() and store.exists(f"checkpoints/{name}/{CHECKPOINT_MARKER}"):
            steps.append(int(name[5:]))
    return max(steps) if steps else None


def rng_state() -> dict[str, Any]:
    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(store: Store, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> str | None:
    """Rank 0 writes; every rank's RNG state goes in (a list, one per rank)."""
    import json

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    rng = distributed.gather_object(rng_state())
    if distributed.world()[0] != 0:
        distributed.barrier()
        return None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(weights, str(d / "adapter_model.safetensors"))
        torch.save(optimizer.state_dict(), d / "optimizer.pt")
        torch.save(scheduler.state_dict(), d / "scheduler.pt")
        torch.save(rng, d / "rng.pt")
        (d / CHECKPOINT_MARKER).write_text(json.dumps(state, indent=2))
        uri = store.put_folder(d, f"checkpoints/step-{state['step']}", marker=CHECKPOINT_MARKER)
    for old in stale_checkpoints(latest_steps(store), state["step"]):
        store.remove(f"checkpoints/step-{old}")
    distributed.barrier()
    return uri


def stale_checkpoints(steps: list[int], current: int, keep: int = KEEP_CHECKPOINTS) -> list[int]:
    """The checkpoints to remove once step `current` is written: all but the newest `keep`, the
    current one counted among them."""
    others = sorted(s for s in steps if s != current)
    return others[:-(keep - 1)] if keep > 1 else others


def latest_steps(store: Store) -> list[int]:
    return [int(n[5:]) for n in store.list_dirs("checkpoints") if n.startswith("step-") and n[5:].isdigit()]


def load_checkpoint(store: Store, step: int, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    import json

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        d = store.get_folder(f"checkpoints/step-{step}", Path(tmp))
        set_peft_model_state_dict(model, load_file(str(d / "adapter_model.safetensors")))
        optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(d / "scheduler.pt", weights_only=False))
        rng = torch.load(d / "rng.pt", weights_only=False)
        rank, size = distributed.world()
        if len(rng) == size:  # the same world size as when saved: restore each rank's stream
            set_rng_state(rng[rank])
        state: dict[str, Any] = json.loads((d / CHECKPOINT_MARKER).read_text())
    return state


# --------------------------------------------------------------------------------------- the loop

@dataclass
class TrainOutcome:
    steps: int
    total_steps: int
    resumed_from_step: int | None
    final_loss: float | None
    tokens_per_second: float | None
    train_seconds: float
    real_tokens: int
    padded_tokens: int
    # [[step, value], ...] for "train" (loss), "learningRate" and "validation" (loss); rank 0 only.
    history: dict[str, list[list[float | None]]] = field(default_factory=dict)


def _point(step: int, value: float) -> list[float | None]:
    return [step, round(value, 6) if math.isfinite(value) else None]


def plan_total_steps(spec: FineTuneSpec, examples: list[Example]) -> int:
    t = spec.training
    if t.max_steps:
        return t.max_steps
    per_epoch = len(micro_batches(examples, t.batch_size, t.max_seq_length, t.packing, t.seed, 0))
    per_step = t.gradient_accumulation * distributed.world()[1]
    return max(1, math.ceil((t.epochs or 1.0) * per_epoch / per_step))


def train(spec: FineTuneSpec, loaded: LoadedModel, examples: list[Example], store: Store, pad_id: int,
          on_step: Callable[[int], None] | None = None, validate: Callable[[], float] | None = None) -> TrainOutcome:
    """Runs the optimizer steps left. `validate` (rank 0) measures the validation loss before the
    first step and VALIDATION_POINTS times during training, for the loss curves; it only reads the
    model, so a run with it trains exactly as one without."""
    from transformers import get_scheduler

    t = spec.training
    model, dev = loaded.model, loaded.device
    autocast = loaded.compute_dtype if loaded.compute_dtype != torch.float32 else None
    total = plan_total_steps(spec, examples)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=0.0)
    warmup = math.ceil(t.warmup_ratio * total)
    scheduler = get_scheduler(t.scheduler if t.scheduler != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=warmup, num_training_steps=total)
    random.seed(t.seed)
    torch.manual_seed(t.seed)
    step, cursor = 0, 0  # optimizer steps done; micro-batches consumed
    resumed_loss: float | None = None
    history: dict[str, list[list[float | None]]] = {"train": [], "learningRate": [], "validation": []}
    window_sum, window_steps = 0.0, 0  # train losses since the last history point
    if distributed.world()[0] == 0:  # folders of checkpoint writes that a killed pod left behind
        for name in store.list_dirs("checkpoints"):
            if ".tmp-" in name or ".old-" in name:
                store.remove(f"checkpoints/{name}")
    resumed = latest_checkpoint(store)
    if resumed is not None:
        state = load_checkpoint(store, resumed, model, optimizer, scheduler)
        step, cursor = state["step"], state["microBatch"]
        resumed_loss = state.get("loss")
        history = state.get("history") or history
        window_sum, window_steps = state.get("historyWindow") or (0.0, 0)
        if distributed.world()[0] == 0:
            report_progress(phase="Training", event="resumed", step=step, totalSteps=total)

    plans: dict[int, list[list[list[int]]]] = {}  # the epochs in use (at most two kept)
    sizes: dict[int, int] = {}  # micro-batches per epoch (packing varies slightly by epoch)

    def plan(epoch: int) -> list[list[list[int]]]:
        if epoch not in plans:
            for old in [e for e in plans if e < epoch - 1]:
                del plans[old]
            plans[epoch] = micro_batches(examples, t.batch_size, t.max_seq_length, t.packing, t.seed, epoch)
            sizes[epoch] = len(plans[epoch])
        return plans[epoch]

    def batch_at(index: int) -> Batch:
        epoch = 0
        while True:
            n = sizes[epoch] if epoch in sizes else len(plan(epoch))
            if index < n:
                return collate(examples, plan(epoch)[index], pad_id)
            index -= n
            epoch += 1

    every = 1 if total <= 200 else max(1, total // 100)
    start = time.monotonic()
    window_start, window_tokens = start, 0
    real_total = padded_total = 0
    last_loss: float | None = resumed_loss
    tps: float | None = None
    first_step = step
    rank, world = distributed.world()
    per_step = t.gradient_accumulation * world
    record_every = max(1, math.ceil(total / HISTORY_POINTS))
    validate_every = max(1, math.ceil(total / VALIDATION_POINTS))
    validate = validate if rank == 0 else None
    if validate is not None and step == 0:
        history["validation"].append(_point(0, validate()))
    model.train()
    while step < total:
        # Rank r takes micro-batches cursor + k*world + r: the same set as one process with
        # gradientAccumulation * world, and the loss is normalised by the step's global token count.
        batches = [batch_at(cursor + k * world + rank) for k in range(t.gradient_accumulation)]
        local = torch.tensor([float(sum(b.target_tokens for b in batches))])
        targets = float(distributed.all_reduce_(local)[0])
        step_loss = 0.0
        real = padded = 0
        for b in batches:
            real += b.real_tokens
            padded += b.input_ids.numel()
            if b.target_tokens == 0:
                continue
            loss = loss_sum(model, b, dev, autocast) / targets
            loss.backward()
            step_loss += float(loss.detach())
        if world > 1:
            distributed.all_reduce_grads(params)
            summed = distributed.all_reduce_(torch.tensor([step_loss, real, padded], dtype=torch.float64)).tolist()
            step_loss, real, padded = summed[0], int(summed[1]), int(summed[2])
        real_total += real
        padded_total += padded
        window_tokens += real
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        cursor += per_step
        step += 1
        last_loss = step_loss
        window_sum, window_steps = window_sum + step_loss, window_steps + 1
        if step % record_every == 0 or step == total:
            history["train"].append(_point(step, window_sum / window_steps))
            history["learningRate"].append(_point(step, lr))
            window_sum, window_steps = 0.0, 0
        if validate is not None and (step % validate_every == 0 or step == total):
            history["validation"].append(_point(step, validate()))
            model.train()
        if rank == 0 and (step % every == 0 or step == total):
            now = time.monotonic()
            tps = window_tokens / max(now - window_start, 1e-9)
            eta = (now - start) / (step - first_step) * (total - step)
            report_progress(phase="Training", step=step, totalSteps=total, loss=round(step_loss, 5),
                            tokensPerSecond=round(tps, 1), etaSeconds=round(eta),
                            learningRate=scheduler.get_last_lr()[0])
            window_start, window_tokens = now, 0
        if step % t.checkpoint_interval == 0 or step == total:
            uri = save_checkpoint(store, model, optimizer, scheduler,
                                  {"step": step, "microBatch": cursor, "totalSteps": total, "loss": step_loss,
                                   "worldSize": world, "history": history, "historyWindow": [window_sum, window_steps]})
            if rank == 0:
                report_progress(phase="Training", event="checkpoint", step=step, totalSteps=total, uri=uri)
        if on_step is not None:
            on_step(step)
    elapsed = time.monotonic() - start
    model.eval()
    return TrainOutcome(steps=step, total_steps=total, resumed_from_step=resumed, final_loss=last_loss,
                        tokens_per_second=(real_total / elapsed if elapsed > 0 and real_total else tps),
                        train_seconds=elapsed, real_tokens=real_total, padded_tokens=padded_total,
                        history=history)
