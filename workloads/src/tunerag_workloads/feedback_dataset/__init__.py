"""The feedback-to-dataset step of a FineTuneSchedule run: the exchange log's labelled rows, with
the configured fields dropped, deduplicated, mixed with the original training data and split, are
written to the artifact store as a dataset versioned by its content digest.

    python -m tunerag_workloads.feedback_dataset /etc/tunerag/spec.json    # TUNERAG_DB_URI from a Secret
"""

from tunerag_workloads.feedback_dataset.build import build_main

__all__ = ["build_main"]
