"""Several GPUs on one node: the workload re-launches itself under torchrun.

`resources.gpus > 1` and not yet inside torchrun: the parent writes the request to a file and runs
`python -m torch.distributed.run --standalone --nproc_per_node <gpus> -m tunerag_workloads.finetune`
with $TUNERAG_RESULT_PATH pointing at a private file; rank 0 runs the whole pipeline (data, training
share, evaluation, publication) and writes its result there, the other ranks train their share and
exit. The parent turns rank 0's result back into its own (or re-raises its WorkloadError).

Data parallelism without a DDP wrapper: rank r takes micro-batches cursor + k*world + r, each rank's
loss is its token-sum divided by the *global* count of target tokens of the step, and the (small)
LoRA gradients are summed with one flat all-reduce. That is exactly the single-process gradient of
the same micro-batches with gradientAccumulation * world (a test checks this with gloo on CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tunerag_workloads.contract import WorkloadError


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init() -> None:
    if in_torchrun() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    if world()[1] == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).clone()
        offset += n


def gather_object(obj: Any) -> list[Any]:
    size = world()[1]
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def launch(request: dict[str, Any], nproc: int) -> dict[str, Any]:
    """Runs the pipeline under torchrun with nproc processes and returns rank 0's result."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, result_file = Path(tmp) / "request.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(request))
        env = {**os.environ, "TUNERAG_RESULT_PATH": str(result_file)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "tunerag_workloads.finetune", str(spec_file)]
        proc = subprocess.run(cmd, env=env, check=False)
        if not result_file.exists():
            raise RuntimeError(f"torchrun exited with {proc.returncode} and rank 0 wrote no result")
        result: dict[str, Any] = json.loads(result_file.read_text())
    if not result.pop("ok", False):
        raise WorkloadError(result.get("reason", "TrainingFailed"), result.get("message", ""))
    return result
