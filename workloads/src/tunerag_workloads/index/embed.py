"""The sentence-transformers model: loaded once per process and device."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from tunerag_workloads.contract import WorkloadError

_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str, device: str = "auto") -> Any:
    """A SentenceTransformer from a local path or a model name (offline: from the local cache)."""
    resolved = resolve_device(device)
    key = (name, resolved)
    with _LOCK:
        if key not in _CACHE:
            from sentence_transformers import SentenceTransformer

            try:
                _CACHE[key] = SentenceTransformer(os.path.expanduser(name), device=resolved)
            except (OSError, ValueError) as exc:
                raise WorkloadError("ModelNotFound", f"cannot load the embedding model {name!r}: {str(exc)[:500]}") from exc
            except RuntimeError as exc:
                if "cuda" in str(exc).lower():
                    raise WorkloadError("DeviceUnavailable", f"cannot use device {resolved!r}: {str(exc)[:300]}") from exc
                raise
        return _CACHE[key]


def dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def max_tokens(model: Any) -> int:
    """Tokens of content a chunk may hold so that the model sees all of it (special tokens aside)."""
    limit = int(getattr(model, "max_seq_length", 0) or 512)
    return max(16, limit - 2)


def encode(model: Any, texts: list[str], batch_size: int, normalize: bool) -> np.ndarray:
    vectors = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=normalize, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)
