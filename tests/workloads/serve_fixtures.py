"""Helpers for the serving tests: real LoRA adapters published like the training workload publishes
them, the server as a child process (`python -m tunerag_workloads.serve`), and its metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_model: Path, out: Path, seed: int) -> str:
    """A LoRA adapter with random (not zero) B matrices, so that it changes the answers; saved and
    given a manifest as the training workload publishes one. Returns the folder's sha256."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunerag_workloads.finetune.publish import MANIFEST, build_manifest

    model = AutoModelForCausalLM.from_pretrained(base_model)
    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(str(out))
    config_file = out / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "base_model_name_or_path": f"file://{base_model}"}, indent=2))
    manifest = build_manifest(out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return str(manifest["sha256"])


def serve_config(base_model: Path, adapters: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {"namespace": "ns", "service": "qa", "baseModel": f"file://{base_model}", "loadIn4bit": False,
            "adapters": adapters, "retrieval": None, "feedback": None, "generation": {"maxNewTokens": 12}, **extra}


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNERAG_", "PORT"))}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TUNERAG_SERVE_HOST": "127.0.0.1",
                "PYTHONPATH": os.pathsep.join([str(REPO / "workloads/src"), os.environ.get("PYTHONPATH", "")])})
    env.update(extra)
    return env


@dataclass
class Server:
    """`python -m tunerag_workloads.serve` started at once (so that several start in parallel);
    `ready()` waits for its readiness probe."""

    name: str
    config: dict[str, Any]
    port: int
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _client: httpx.Client | None = None
    _terminated: bool = False

    def start(self) -> Server:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = child_env(TUNERAG_SERVE_CONFIG=json.dumps(self.config), PORT=str(self.port), **self.env)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tunerag_workloads.serve"], env=env, stdout=out, stderr=err,
                                         cwd=self.log_dir)
        return self

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.stderr"

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def wait_exit(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def ready(self, timeout: float = 240) -> httpx.Client:
        assert self.proc is not None
        if self._client is not None:
            return self._client
        client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if client.get("/v2/health/ready", timeout=2).status_code == 200:
                    self._client = client
                    return client
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready after {timeout} s:\n{self.output()[-3000:]}")

    def terminate(self) -> None:
        """SIGTERM, as the kubelet sends it; `stop()` waits for the exit."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 30) -> int | None:
        self.terminate()
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def metrics(client: httpx.Client) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200
    return [(s.name, dict(s.labels), float(s.value)) for family in text_string_to_metric_families(response.text)
            for s in family.samples]


def value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`; raises if there is none."""
    found = [v for n, ls, v in samples if n == name and all(ls.get(k) == want for k, want in labels.items())]
    if not found:
        raise KeyError(f"no sample {name}{labels}")
    return sum(found)
