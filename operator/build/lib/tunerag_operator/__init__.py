"""tunerag operator: fine-tuning, indexing and rollouts of LLM adapters on Kubernetes."""

__version__ = "0.1.0"
