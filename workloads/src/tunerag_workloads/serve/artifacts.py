"""Adapter folders, and merged models' (an AdapterVersion's spec.quantized): found (or copied from an
object store) and checked against the sha256 that the AdapterVersion records, before any model is
loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunerag_workloads.contract import WorkloadError, resolve_uri
from tunerag_workloads.finetune.publish import build_manifest
from tunerag_workloads.serve.config import AdapterRef

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"  # a merged model's (transformers), its quantization_config inside


@dataclass(frozen=True)
class LocalAdapter:
    name: str
    uri: str
    path: Path
    base_model: str  # base_model_name_or_path of its adapter_config.json ("" if absent, or merged)
    format: str = "peft-lora"

    @property
    def merged(self) -> bool:
        return self.format != "peft-lora"


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
    name, what = (MODEL_CONFIG, f"a merged model ({ref.format})") if ref.merged else (ADAPTER_CONFIG, "a peft adapter")
    config_file = path / name
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError as exc:
        raise WorkloadError("AdapterInvalid", f"adapter {ref.name}: {ref.uri} holds no {name}: not {what}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkloadError("AdapterInvalid", f"adapter {ref.name}: {name} is not JSON: {exc}") from exc
    digest = build_manifest(path)["sha256"]
    if digest != ref.sha256:
        raise WorkloadError("AdapterChecksumMismatch",
                            f"adapter {ref.name}: the sha256 of {ref.uri} is {digest}, its AdapterVersion records {ref.sha256}")
    if ref.merged:
        quant = (config.get("quantization_config") or {}) if isinstance(config, dict) else {}
        found = (f"merged-{quant.get('bnb_4bit_quant_type', 'fp4')}" if quant.get("load_in_4bit")
                 else "merged-int8" if quant.get("load_in_8bit") else "merged-fp16")
        if found != ref.format:
            raise WorkloadError("AdapterInvalid", f"adapter {ref.name}: {ref.uri} holds a {found} model, its AdapterVersion "
                                                  f"records {ref.format}")
        return LocalAdapter(name=ref.name, uri=ref.uri, path=path, base_model="", format=ref.format)
    return LocalAdapter(name=ref.name, uri=ref.uri, path=path, base_model=str(config.get("base_model_name_or_path") or ""))
