"""Adapter folders: found (or copied from an object store) and checked against the sha256 that the
AdapterVersion records, before any model is loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunerag_workloads.contract import WorkloadError, resolve_uri
from tunerag_workloads.finetune.publish import build_manifest
from tunerag_workloads.serve.config import AdapterRef

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LocalAdapter:
    name: str
    uri: str
    path: Path
    base_model: str  # base_model_name_or_path of its adapter_config.json ("" if absent)


def fetch_adapter(ref: AdapterRef, cache_dir: Path) -> LocalAdapter:
    """The adapter's local folder, verified; WorkloadError AdapterNotFound, AdapterInvalid or
    AdapterChecksumMismatch otherwise."""
    if ref.uri.startswith(("file://", "pvc://")):
        path = Path(resolve_uri(ref.uri))
        if not path.is_dir():
            raise WorkloadError("AdapterNotFound", f"adapter {ref.name}: {ref.uri} is not a folder (resolved to {path})")
    else:
        from tunerag_workloads.finetune.storage import Store

        store = Store(ref.uri)
        try:
            found = store.fs.isdir(store.root)
        except Exception as exc:  # fsspec backends raise many types (OSError, botocore, aiohttp)
            raise WorkloadError("AdapterNotFound", f"adapter {ref.name}: cannot read {ref.uri}: {type(exc).__name__}: {exc}") from exc
        if not found:
            raise WorkloadError("AdapterNotFound", f"adapter {ref.name}: {ref.uri} does not exist")
        path = store.get_folder("", cache_dir / "adapters" / ref.name)
    config_file = path / ADAPTER_CONFIG
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError as exc:
        raise WorkloadError("AdapterInvalid", f"adapter {ref.name}: {ref.uri} holds no {ADAPTER_CONFIG}: not a peft adapter") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkloadError("AdapterInvalid", f"adapter {ref.name}: {ADAPTER_CONFIG} is not JSON: {exc}") from exc
    digest = build_manifest(path)["sha256"]
    if digest != ref.sha256:
        raise WorkloadError("AdapterChecksumMismatch",
                            f"adapter {ref.name}: the sha256 of {ref.uri} is {digest}, its AdapterVersion records {ref.sha256}")
    return LocalAdapter(name=ref.name, uri=ref.uri, path=path, base_model=str(config.get("base_model_name_or_path") or ""))
