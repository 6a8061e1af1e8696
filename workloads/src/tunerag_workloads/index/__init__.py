"""The index workload: read documents, chunk, embed, upsert into PostgreSQL + pgvector.

    python -m tunerag_workloads.index spec.json     # under the workload contract

Library use: `run_index(spec_dict, db_uri=..., model=...)` returns the same result dict.
"""

from .pipeline import index_main, run_index
from .spec import IndexSpec, parse_spec

__all__ = ["IndexSpec", "index_main", "parse_spec", "run_index"]
