"""The FineTuneJob workload: validate data, train LoRA/QLoRA, validate the model, publish.

Stages are library functions (see pipeline.py); `python -m tunerag_workloads.finetune spec.json`
runs them under the workload contract.

The pipeline's names are imported on first use (PEP 562): the feedback-dataset workload reads rows
and publishes through this package's data, spec and storage modules, and must not pay for torch,
transformers and peft (3.4 s of its 3.7 s start-up when they were imported here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunerag_workloads.finetune.spec import FineTuneSpec, parse_spec

if TYPE_CHECKING:
    from tunerag_workloads.finetune.pipeline import finetune_main, run_pipeline

__all__ = ["FineTuneSpec", "finetune_main", "parse_spec", "run_pipeline"]


def __getattr__(name: str) -> Any:
    if name in ("finetune_main", "run_pipeline"):
        from tunerag_workloads.finetune import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
