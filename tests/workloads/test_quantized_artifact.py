"""The merged, quantized model outside training: verified like the adapter (a hand-registered
AdapterVersion's Job), configured and fetched by the serving workload. No model is loaded here
(tests/e2e/test_finetune_pipeline.py trains, registers and serves a real one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunerag_workloads.contract import WorkloadError
from tunerag_workloads.finetune.publish import MANIFEST, build_manifest
from tunerag_workloads.finetune.verify import verify_main
from tunerag_workloads.serve.artifacts import fetch_adapter
from tunerag_workloads.serve.config import AdapterRef, load_config

NF4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}


def _folder(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    manifest = build_manifest(path)
    (path / MANIFEST).write_text(json.dumps(manifest))
    return str(manifest["sha256"])


def _merged(path: Path, quantization: dict[str, Any] | None = NF4) -> str:
    config = {"model_type": "llama", **({"quantization_config": quantization} if quantization else {})}
    return _folder(path, {"config.json": json.dumps(config), "model.safetensors": "weights", "tokenizer.json": "{}"})


def test_verification_checks_the_quantized_model_too(tmp_path: Path) -> None:
    adapter = _folder(tmp_path / "adapter", {"adapter_config.json": "{}", "adapter_model.safetensors": "lora"})
    quantized = _merged(tmp_path / "quantized")
    spec = {"artifact": {"uri": f"file://{tmp_path}/adapter", "sha256": adapter},
            "quantized": {"uri": f"file://{tmp_path}/quantized", "sha256": quantized, "format": "merged-nf4"}}
    result = verify_main({"spec": spec})
    size = sum(p.stat().st_size for p in (tmp_path / "quantized").iterdir() if p.name != MANIFEST)
    assert result["sha256"] == adapter and result["quantized"] == {"sha256": quantized, "sizeBytes": size, "files": 3}

    with pytest.raises(WorkloadError) as info:
        verify_main({"spec": {**spec, "quantized": {**spec["quantized"], "sha256": "d" * 64}}})
    assert info.value.reason == "ChecksumMismatch" and "quantized model (spec.quantized)" in info.value.message
    with pytest.raises(WorkloadError) as info:
        verify_main({"spec": {**spec, "quantized": {**spec["quantized"], "uri": f"file://{tmp_path}/gone"}}})
    assert info.value.reason == "ArtifactNotFound" and "spec.quantized" in info.value.message
    assert "quantized" not in verify_main({"spec": {"artifact": spec["artifact"]}})


def _config(adapters: list[dict[str, Any]], **extra: Any) -> dict[str, str]:
    return {"TUNERAG_SERVE_CONFIG": json.dumps({"namespace": "ns", "service": "qa", "baseModel": "file:///models/base",
                                                "adapters": adapters, **extra})}


def test_a_merged_model_is_served_alone_and_not_in_4bit() -> None:
    merged = {"name": "qa-v1", "uri": "file:///a/quantized", "sha256": "c" * 64, "format": "merged-nf4"}
    adapter = {"name": "qa-v2", "uri": "file:///a/adapter", "sha256": "a" * 64}
    config, _, _ = load_config(_config([merged]))
    assert config.merged is not None and config.merged.name == "qa-v1" and config.default_adapter == "qa-v1"
    assert load_config(_config([adapter]))[0].merged is None
    for adapters, extra, words in (([merged, adapter], {}, "served alone"), ([merged], {"loadIn4bit": True}, "loadIn4bit")):
        with pytest.raises(WorkloadError) as info:
            load_config(_config(adapters, **extra))
        assert info.value.reason == "InvalidConfig" and words in info.value.message


def test_a_merged_model_is_fetched_checked_and_must_be_what_was_registered(tmp_path: Path) -> None:
    sha = _merged(tmp_path / "q")
    ref = AdapterRef(name="qa-v1", uri=f"file://{tmp_path}/q", sha256=sha, format="merged-nf4")
    local = fetch_adapter(ref, tmp_path / "cache")
    assert local.merged and local.path == tmp_path / "q"
    with pytest.raises(WorkloadError) as info:  # an int8 registration of an nf4 folder
        fetch_adapter(ref.model_copy(update={"format": "merged-int8"}), tmp_path / "cache")
    assert info.value.reason == "AdapterInvalid" and "holds a merged-nf4 model" in info.value.message
    with pytest.raises(WorkloadError) as info:  # an adapter folder registered as a merged model
        adapter = _folder(tmp_path / "adapter", {"adapter_config.json": "{}"})
        fetch_adapter(AdapterRef(name="qa-v1", uri=f"file://{tmp_path}/adapter", sha256=adapter, format="merged-nf4"),
                      tmp_path / "cache")
    assert info.value.reason == "AdapterInvalid" and "config.json" in info.value.message
