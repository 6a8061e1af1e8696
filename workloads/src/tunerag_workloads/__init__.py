"""tunerag workloads: the containers the operator starts (finetune, index, serve)."""

__version__ = "0.1.0"
