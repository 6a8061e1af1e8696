from tunerag_workloads.contract import run
from tunerag_workloads.index.pipeline import index_main

if __name__ == "__main__":
    run(index_main)
