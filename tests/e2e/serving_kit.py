"""What the serving end-to-end tests share: real LoRA adapters on the tiny model, AdapterVersions
registered as a FineTuneJob would register them, a RolloutPolicy, and a client that keeps traffic
flowing through the InferenceService's router while a rollout moves."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from substrate.httpjson import post
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_workloads.finetune.publish import build_manifest
from workloads.finetune_fixtures import cached_model

FAMILY = "qa"


def base_model() -> Path:
    return cached_model()


def make_adapter(out: Path, seed: int) -> str:
    """A LoRA adapter on the tiny base model with random (non-zero) weights, so each seed answers
    differently; returns the folder's sha256 as an AdapterVersion records it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if out.exists():
        shutil.rmtree(out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model())
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out)
    return str(build_manifest(out)["sha256"])


def register(api: client.ApiClient, namespace: str, version: int, uri: str, sha256: str) -> str:
    """An AdapterVersion with passing gates (Validated), as a FineTuneJob registers one."""
    name = f"{FAMILY}-v{version}"
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "AdapterVersion", "metadata": {"name": name},
        "spec": {
            "family": FAMILY, "version": version,
            "baseModel": {"uri": f"file://{base_model()}"},
            "artifact": {"uri": uri, "sha256": sha256},
            "metrics": {"validation.exactMatch": 0.9},
            "gates": [{"name": "retentionRegression", "value": 0.01, "threshold": 0.05, "passed": True}],
        },
    })
    return name


def get(api: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)  # type: ignore[no-any-return]


def av_phase(api: client.ApiClient, namespace: str, name: str) -> str | None:
    return (get(api, namespace, "adapterversions", name).get("status") or {}).get("phase")


def ask(url: str, prompt: str, model: str = "qa") -> tuple[int, dict[str, Any]]:
    return post(f"{url}/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 8})


def post_feedback(url: str, exchange_id: str, label: str) -> tuple[int, dict[str, Any]]:
    return post(f"{url}/v1/feedback", {"exchangeId": exchange_id, "label": label})


@dataclass
class Traffic:
    """Requests in a loop against the service's URL (read from its status each time, as a client
    resolving the service would), counting answers by adapter version and failures."""

    api: client.ApiClient
    namespace: str
    service: str
    pause: float = 0.15
    by_version: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def url(self) -> str | None:
        try:
            obj = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                "serving.kserve.io", "v1beta1", self.namespace, "inferenceservices", self.service)
        except client.ApiException:
            return None
        return (obj.get("status") or {}).get("url")

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True, name="traffic")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        url = None
        while not self._stop.is_set():
            url = url or self.url()
            if url:
                code, body = ask(url, "what color is plum ?")
                if code == 200:
                    self.by_version[(body.get("tunerag") or {}).get("adapterVersion", "?")] += 1
                else:
                    self.failures.append(f"{code}: {str(body)[:200]}")
            self._stop.wait(self.pause)

    def reset(self) -> None:
        self.by_version.clear()
        self.failures.clear()


def wait_status(api: client.ApiClient, namespace: str, name: str, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = get(api, namespace, "rolloutpolicies", name).get("status") or {}
        if predicate(status):
            return status
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; status: {json.dumps(status)[:3000]}")
