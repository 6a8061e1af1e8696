"""CLI: python -m tunerag_workloads.finetune /etc/tunerag/spec.json"""

from tunerag_workloads.contract import run
from tunerag_workloads.finetune.pipeline import finetune_main

if __name__ == "__main__":
    run(finetune_main)
