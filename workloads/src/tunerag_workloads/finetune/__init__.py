"""The FineTuneJob workload: validate data, train LoRA/QLoRA, validate the model, publish.

Stages are library functions (see pipeline.py); `python -m tunerag_workloads.finetune spec.json`
runs them under the workload contract.
"""

from tunerag_workloads.finetune.pipeline import finetune_main, run_pipeline
from tunerag_workloads.finetune.spec import FineTuneSpec, parse_spec

__all__ = ["FineTuneSpec", "finetune_main", "parse_spec", "run_pipeline"]
