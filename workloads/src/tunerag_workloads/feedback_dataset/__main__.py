"""CLI: python -m tunerag_workloads.feedback_dataset /etc/tunerag/spec.json"""

from tunerag_workloads.contract import run
from tunerag_workloads.feedback_dataset.build import build_main

if __name__ == "__main__":
    run(build_main)
