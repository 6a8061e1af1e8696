"""Drops everything a VectorIndex owns in PostgreSQL (its `deletionPolicy: Delete`).

    python -m tunerag_workloads.index.drop spec.json     # under the workload contract
"""

from __future__ import annotations

import os
from typing import Any

from tunerag_workloads.contract import WorkloadError, run
from tunerag_workloads.index import store as store_mod
from tunerag_workloads.index.spec import parse_spec


def drop_main(request: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(request.get("spec"), dict):
        raise WorkloadError("InvalidSpec", "the request has no spec object")
    spec = parse_spec(request["spec"])
    conn = store_mod.connect(os.environ.get("TUNERAG_DB_URI", ""))
    try:
        store = store_mod.Store(conn, spec.store.schema_, spec.store.table)
        return {"dropped": store.drop_all()}
    finally:
        conn.close()


if __name__ == "__main__":
    run(drop_main)
