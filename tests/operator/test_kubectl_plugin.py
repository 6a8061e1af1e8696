"""`kubectl tunerag`, run as kubectl runs a plugin: the console script declared in
operator/pyproject.toml found on PATH by kubectl's plugin discovery, talking to a real API server.

The resources and their statuses are written here directly (status subresource). They live in a
control plane of this module's own, where no operator runs: the session's operator, once a test
has started it, would rewrite their statuses under the assertions."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.fixtures import runner_env
from substrate.jobrunner import JobRunner
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.cli import describe
from tunerag_operator.handlers.vectorindex import INDEX_STEP, finalize_name
from tunerag_operator.render.workload import Owner

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NS = "ml"
Obj = dict[str, Any]
T0 = "2026-01-05T10:00:00Z"


@dataclass(frozen=True)
class Plugin:
    """Runs `kubectl tunerag ...` with the plugin's directory first on PATH."""

    env: dict[str, str]
    kubeconfig: Path
    api: client.ApiClient

    def run(self, *args: str, ok: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", "tunerag", *args], env=env or self.env, capture_output=True, text=True, timeout=60)
        if ok:
            assert proc.returncode == 0, f"kubectl tunerag {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Started as from a terminal, where Ctrl-C's SIGINT has its default action: a test run
        launched in the background (`cmd &` without job control) ignores SIGINT, children inherit
        that, and Python then never raises KeyboardInterrupt."""
        return subprocess.Popen(["env", "--default-signal=INT", "kubectl", "tunerag", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def console_script(bin_dir: Path, name: str) -> Path:
    """The executable pip would install for `name` from [project.scripts] (a wrapper calling the
    entry point with this interpreter); the project's sources come from PYTHONPATH, as in all tests."""
    scripts = tomllib.loads((ROOT / "operator" / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts[name].split(":")
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    with ControlPlane(tmp_path_factory.mktemp("kubectl-plugin"), bin_dir=Path(bin_dir) if bin_dir else None) as cp:
        api = config.new_client_from_config(str(cp.kubeconfig))
        kube.install_crds(api, kube.crd_documents(include_kserve=False))
        for ns in (NS, "other"):
            kube.create_namespace(api, ns)
        yield cp


@pytest.fixture(scope="module")
def plugin(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Plugin:
    bin_dir = tmp_path_factory.mktemp("plugin-bin")
    console_script(bin_dir, "kubectl-tunerag")
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
           "KUBECONFIG": str(plane.kubeconfig),
           "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("operator/src", "tests")),
           # Bytecode, as an installed console script has: without it every run compiles the
           # kubernetes client (3 s instead of 0.7 s here).
           "PYTHONPYCACHEPREFIX": str(tmp_path_factory.mktemp("pycache"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return Plugin(env, plane.kubeconfig, config.new_client_from_config(str(plane.kubeconfig)))


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def create(api: client.ApiClient, example: str, status: Obj, ns: str = NS, **overrides: Any) -> Obj:
    """Creates the example manifest (with `overrides` merged into its metadata and spec) and writes
    `status` through the status subresource, as the operator would."""
    body: Obj = yaml.safe_load((EXAMPLES / example).read_text())
    body["metadata"].update(overrides.get("metadata", {}))
    body["spec"].update(overrides.get("spec", {}))
    plural = {"FineTuneJob": "finetunejobs", "AdapterVersion": "adapterversions", "VectorIndex": "vectorindexes",
              "RolloutPolicy": "rolloutpolicies"}[body["kind"]]
    obj: Obj = custom(api).create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)
    if status:
        obj = custom(api).patch_namespaced_custom_object_status(GROUP, VERSION, ns, plural, obj["metadata"]["name"], {"status": status})
    return obj


def cond(type_: str, status: str, reason: str, message: str) -> Obj:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}


def rows(table: str) -> list[dict[str, str]]:
    """A kubectl table as dicts by header: columns are at least three spaces apart, cells hold
    single spaces at most."""
    lines = table.rstrip("\n").split("\n")
    header = re.split(r" {3,}", lines[0])
    return [dict(zip(header, re.split(r" {3,}", line), strict=True)) for line in lines[1:]]


ROLLOUT_STATUS: Obj = {
    "phase": "Progressing", "stable": "ticket-router-v1", "candidate": "ticket-router-v2",
    "currentStep": 1, "canaryWeight": 10, "failedChecks": 1, "message": "Analysing ticket-router-v2 (1 of 1 passed).",
    "analysisRuns": [
        {"time": "2026-01-05T10:01:00Z", "candidate": "ticket-router-v2", "step": 1, "weight": 10, "values": {"error-rate": 0.02, "latency-p95": 1.25}, "verdict": "Failed"},
        {"time": "2026-01-05T10:02:00Z", "candidate": "ticket-router-v2", "step": 1, "weight": 10, "values": {"error-rate": 0.004, "latency-p95": 1.5}, "verdict": "Passed"},
    ],
    "history": [{"candidate": "ticket-router-v1", "outcome": "Promoted", "time": "2026-01-04T09:00:00Z", "reason": "All steps passed."}],
    "conditions": [cond("Accepted", "True", "Accepted", "The spec is valid."),
                   cond("Ready", "False", "Progressing", "Analysing ticket-router-v2 at 10%.")],
}


@pytest.fixture(scope="module")
def resources(plugin: Plugin) -> None:
    """One resource of each kind in NS, mid-way through their work, and one RolloutPolicy elsewhere."""
    api = plugin.api
    create(api, "20-finetunejob.yaml", {
        "phase": "Training", "jobName": "ticket-router-1-g1",
        "progress": {"step": 120, "totalSteps": 500, "loss": 0.41234, "etaSeconds": 200},
        "conditions": [cond("Ready", "False", "Training", "Training: step 120 of 500.")],
    })
    create(api, "20-finetunejob.yaml", {
        "phase": "Succeeded", "adapterVersion": "ticket-router-v1",
        "progress": {"step": 500, "totalSteps": 500, "loss": 0.30118, "etaSeconds": 0},
    }, metadata={"name": "ticket-router-0"})
    create(api, "30-adapterversion.yaml", {"phase": "Serving", "servedBy": ["ticket-router"]},
           spec={"metrics": {"exactMatch": 0.9134, "validationLoss": 0.45678, "retentionRegression": 0.012, "trainLoss": 0.3}})
    create(api, "10-vectorindex.yaml", {
        "phase": "Ready", "documents": 12, "chunks": 340, "tableVersion": "handbook_v2",
        "embeddingModel": "sentence-transformers/all-MiniLM-L6-v2",
        "conditions": [cond("Ready", "True", "Indexed", "12 documents, 340 chunks.")],
    })
    create(api, "40-rolloutpolicy.yaml", ROLLOUT_STATUS)
    create(api, "40-rolloutpolicy.yaml", {"phase": "Idle", "stable": "chat-v3"}, ns="other", metadata={"name": "chat"})


def test_status_is_one_table_across_the_four_kinds(plugin: Plugin, resources: None) -> None:
    out = plugin.run("status", "-n", NS).stdout
    assert out == textwrap.dedent("""\
        KIND             NAME               PHASE         PROGRESS                         DETAILS
        FineTuneJob      ticket-router-0    Succeeded     500/500 steps (100%)             loss 0.3012, adapter ticket-router-v1
        FineTuneJob      ticket-router-1    Training      120/500 steps (24%), ETA 3m20s   loss 0.4123
        AdapterVersion   ticket-router-v1   Serving       served by ticket-router          ticket-router v1 exactMatch=0.9134 validationLoss=0.4568 retentionRegression=0.012
        VectorIndex      handbook           Ready         12 documents, 340 chunks         table handbook_v2, model sentence-transformers/all-MiniLM-L6-v2
        RolloutPolicy    ticket-router      Progressing   step 2/6, weight 10%             ticket-router-v1 -> ticket-router-v2
        """)

    wide = {r["NAME"]: r for r in rows(plugin.run("status", "-n", NS, "-o", "wide").stdout)}
    assert (wide["ticket-router-1"]["READY"], wide["ticket-router-1"]["REASON"]) == ("False", "Training")
    assert wide["ticket-router-1"]["MESSAGE"] == "Training: step 120 of 500."
    assert wide["ticket-router"]["MESSAGE"] == "Analysing ticket-router-v2 at 10%."
    assert wide["ticket-router-v1"]["READY"] == "<none>"

    everywhere = rows(plugin.run("status", "-A").stdout)
    assert {(r["KIND"], r["NAMESPACE"], r["NAME"]) for r in everywhere if r["KIND"] == "RolloutPolicy"} == {
        ("RolloutPolicy", NS, "ticket-router"), ("RolloutPolicy", "other", "chat")}
    assert next(r for r in everywhere if r["NAME"] == "chat")["DETAILS"] == "chat-v3"

    items = {i["name"]: i for i in json.loads(plugin.run("status", "-n", NS, "-o", "json").stdout)["items"]}
    assert items["ticket-router-1"]["progress"] == {"step": 120, "totalSteps": 500, "etaSeconds": 200}
    assert items["ticket-router-v1"]["metrics"]["trainLoss"] == 0.3
    assert items["ticket-router"].items() >= {"stable": "ticket-router-v1", "candidate": "ticket-router-v2", "currentStep": 1,
                                              "canaryWeight": 10, "steps": 6, "failedChecks": 1}.items()
    assert items["handbook"]["ready"] == {"status": "True", "reason": "Indexed", "message": "12 documents, 340 chunks."}


def test_status_follows_kubectl_connection_conventions(plugin: Plugin, resources: None, tmp_path: Path) -> None:
    """--kubeconfig and --context choose the cluster, the context's namespace is the default."""
    kc = yaml.safe_load(plugin.kubeconfig.read_text())
    ctx = kc["contexts"][0]
    kc["contexts"].append({"name": "team", "context": {**ctx["context"], "namespace": "other"}})
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kc))
    env = {k: v for k, v in plugin.env.items() if k != "KUBECONFIG"}
    out = plugin.run("status", "--kubeconfig", str(path), "--context", "team", env=env).stdout
    assert [r["NAME"] for r in rows(out)] == ["chat"]
    default = plugin.run("--kubeconfig", str(path), "status", env=env)  # flags before the command too
    assert (default.stdout, default.stderr) == ("", "No resources found in default namespace.\n")
    bad = plugin.run("status", "--kubeconfig", str(path), "--context", "nope", ok=False, env=env)
    assert bad.returncode == 1 and bad.stderr == 'error: context "nope" does not exist\n'


def event(api: client.ApiClient, obj: Obj, reason: str, message: str, when: str, type_: str = "Normal", count: int = 1) -> None:
    meta = obj["metadata"]
    client.CoreV1Api(api).create_namespaced_event(meta["namespace"], {
        "metadata": {"generateName": f"{meta['name']}."},
        "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "reason": reason, "message": message, "type": type_, "count": count,
        "firstTimestamp": T0, "lastTimestamp": when, "source": {"component": "tunerag-operator"},
    })


def test_describe_rollout(plugin: Plugin, resources: None) -> None:
    policy = custom(plugin.api).get_namespaced_custom_object(GROUP, VERSION, NS, "rolloutpolicies", "ticket-router")
    event(plugin.api, policy, "StepStarted", "ticket-router-v2 at 10%", "2026-01-05T10:00:30Z")
    event(plugin.api, policy, "AnalysisFailed", "error-rate 0.02 above 0.01", "2026-01-05T10:01:00Z", "Warning", count=2)
    adapter = custom(plugin.api).get_namespaced_custom_object(GROUP, VERSION, NS, "adapterversions", "ticket-router-v1")
    event(plugin.api, adapter, "Verified", "not about the policy", "2026-01-05T10:01:00Z")

    out = plugin.run("describe", "rollout", "ticket-router", "-n", NS).stdout
    head, rest = out.split("Steps:\n", 1)
    fields = dict(line.split(":", 1) for line in head.splitlines())
    assert {k: v.strip() for k, v in fields.items()} == {
        "Name": "ticket-router", "Namespace": NS, "Service": "ticket-router (Standard, tunerag runtime)",
        "Family": "ticket-router", "Phase": "Progressing", "Message": "Analysing ticket-router-v2 (1 of 1 passed).", "Stable": "ticket-router-v1",
        "Candidate": "ticket-router-v2", "Step": "2/6, analysis (all metrics)", "Canary weight": "10%",
        "Failed checks": "1 (limit 2)", "Paused": "false", "Promotion": "Automatic", "Strategy": "canary",
    }
    steps, rest = rest.split("Analysis runs:\n", 1)
    assert textwrap.dedent(steps) == textwrap.dedent("""\
              STEP   ACTION
              1      setWeight 10%
          >   2      analysis (all metrics)
              3      setWeight 50%
              4      pause 5m
              5      analysis (all metrics)
              6      setWeight 100%
        """)
    runs, rest = rest.split("History:\n", 1)
    assert textwrap.dedent(runs) == textwrap.dedent("""\
          TIME                   CANDIDATE          STEP   WEIGHT   error-rate   latency-p95   VERDICT
          2026-01-05T10:01:00Z   ticket-router-v2   2      10%      0.02         1.25          Failed
          2026-01-05T10:02:00Z   ticket-router-v2   2      10%      0.004        1.5           Passed
        """)
    history, rest = rest.split("Conditions:\n", 1)
    assert textwrap.dedent(history) == textwrap.dedent("""\
          TIME                   CANDIDATE          OUTCOME    REASON
          2026-01-04T09:00:00Z   ticket-router-v1   Promoted   All steps passed.
        """)
    conditions, events = rest.split("Events:\n", 1)
    assert textwrap.dedent(conditions) == textwrap.dedent("""\
          TYPE       STATUS   REASON        MESSAGE
          Accepted   True     Accepted      The spec is valid.
          Ready      False    Progressing   Analysing ticket-router-v2 at 10%.
        """)
    assert [r["REASON"] for r in rows(textwrap.dedent(events))] == ["StepStarted", "AnalysisFailed"]  # oldest first
    assert re.fullmatch(r"  Warning +AnalysisFailed +\S+ \(x2 over \S+\) +tunerag-operator +error-rate 0.02 above 0.01",
                        events.splitlines()[-1])

    missing = plugin.run("describe", "rp/nope", "-n", NS, ok=False)
    assert (missing.returncode, missing.stderr) == (1, 'Error from server (NotFound): rolloutpolicies.tunerag.dev "nope" not found\n')


def test_describe_shows_an_ab_test_and_a_finished_canary() -> None:
    """The parts of describe that depend only on the object (no API call, so no plugin run)."""
    ab: Obj = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "RolloutPolicy", "metadata": {"name": "ab", "namespace": NS},
        "spec": {"target": {"inferenceService": "ab", "deploymentMode": "Standard", "runtime": "tunerag"},
                 "strategy": {"type": "abTest", "abTest": {"split": 20, "duration": "1h", "metric": "feedbackRate",
                                                           "confidence": 0.95, "minSamples": 100}}},
        "status": {"phase": "Progressing", "abTest": {"startedAt": T0, "samples": {"stable": 400, "candidate": 100},
                                                      "rates": {"stable": 0.61, "candidate": 0.7}, "zScore": 1.6631,
                                                      "pValue": 0.0963, "decision": "Running"}},
    }
    out = describe.render(ab, [])
    assert "Strategy:      A/B test, 20% to the candidate for 1h\n" in out
    assert "Test:          feedbackRate, confidence 0.95, at least 100 samples per arm\n" in out
    assert textwrap.dedent(out.split("A/B test:\n")[1].split("History:")[0]) == textwrap.dedent(f"""\
        Started:  {T0}
        Samples:  stable=400 candidate=100
        Rates:    stable=0.61 candidate=0.7
        z / p:    1.663 / 0.0963
        Decision: Running
        """)
    canary: Obj = yaml.safe_load((EXAMPLES / "40-rolloutpolicy.yaml").read_text())
    canary["metadata"]["namespace"] = NS
    canary["status"] = {"phase": "Paused", "candidate": "v2", "currentStep": 6, "canaryWeight": 100}
    assert "Step:          6/6 steps done\n" in describe.render(canary, [])


def test_describe_rollout_plot(plugin: Plugin, resources: None, tmp_path: Path) -> None:
    """--plot also writes the analysis history as HTML, from the same read as the text (the page
    itself is checked in a browser by tests/operator/test_plots.py)."""
    out = tmp_path / "plot.html"
    proc = plugin.run("describe", "rollout", "ticket-router", "-n", NS, "--plot", str(out))
    assert proc.stdout.startswith("Name:") and "Analysis runs:\n" in proc.stdout
    assert proc.stderr == f"Plot written to {out}\n"
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') == 3
    for run in ROLLOUT_STATUS["analysisRuns"]:
        for value in run["values"].values():
            assert f'data-y="{value}"' in page
    assert 'data-side="max" data-value="0.01"' in page and 'data-side="max" data-value="2.5"' in page
    bad = plugin.run("describe", "rollout", "ticket-router", "-n", NS, "--plot", str(tmp_path / "no" / "plot.html"), ok=False)
    assert (bad.returncode, bad.stderr) == (1, f"error: cannot write {tmp_path}/no/plot.html: No such file or directory\n")


def test_promote_abort_pause_resume_patch_the_policy(plugin: Plugin, resources: None) -> None:
    status = {**ROLLOUT_STATUS, "phase": "Paused", "currentStep": 3, "canaryWeight": 50}
    create(plugin.api, "40-rolloutpolicy.yaml", status, metadata={"name": "canary"})

    def policy() -> Obj:
        return custom(plugin.api).get_namespaced_custom_object(GROUP, VERSION, NS, "rolloutpolicies", "canary")  # type: ignore[no-any-return]

    def annotations() -> dict[str, str]:
        return {k: v for k, v in (policy()["metadata"].get("annotations") or {}).items() if k.startswith("tunerag.dev/")}

    assert plugin.run("pause", "canary", "-n", NS).stdout == "rolloutpolicy.tunerag.dev/canary paused\n"
    assert policy()["spec"]["paused"] is True and annotations() == {}
    assert plugin.run("resume", "canary", "-n", NS).stdout == \
        "rolloutpolicy.tunerag.dev/canary resumed (ticket-router-v2 at step 4)\n"
    assert policy()["spec"]["paused"] is False
    assert annotations() == {"tunerag.dev/resume": "ticket-router-v2/3"}
    assert plugin.run("promote", "canary", "-n", NS).stdout == "rolloutpolicy.tunerag.dev/canary promote of ticket-router-v2 requested\n"
    assert plugin.run("abort", "canary", "-n", NS).stdout == "rolloutpolicy.tunerag.dev/canary abort of ticket-router-v2 requested\n"
    assert annotations() == {"tunerag.dev/resume": "ticket-router-v2/3", "tunerag.dev/promote": "ticket-router-v2",
                             "tunerag.dev/abort": "ticket-router-v2"}

    # Nothing rolling out: nothing to promote, and nothing is written.
    idle = plugin.run("promote", "chat", "-n", "other", ok=False)
    assert idle.returncode == 1 and idle.stdout == ""
    assert idle.stderr.startswith("error: rolloutpolicy.tunerag.dev/chat has no candidate to promote (phase: Idle)")
    chat = custom(plugin.api).get_namespaced_custom_object(GROUP, VERSION, "other", "rolloutpolicies", "chat")
    assert "tunerag.dev/promote" not in (chat["metadata"].get("annotations") or {})


@pytest.fixture(scope="module")
def job_runner(plugin: Plugin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobRunner]:
    with JobRunner(plugin.api, {NS}, tmp_path_factory.mktemp("jobrunner"), runner_env()) as runner:
        yield runner


def python_job(api: client.ApiClient, name: str, script: str, backoff_limit: int = 0, labels: dict[str, str] | None = None,
               completions: int | None = None, parallelism: int | None = None) -> None:
    """A Job running `script`; with `completions`, an Indexed Job ($JOB_COMPLETION_INDEX)."""
    spec: Obj = {"backoffLimit": backoff_limit, "template": {"metadata": {"labels": labels or {}}, "spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "python:3.11-slim", "command": ["python", "-c", textwrap.dedent(script)]}],
    }}}
    if completions:
        spec.update(completionMode="Indexed", completions=completions, parallelism=parallelism or completions)
    client.BatchV1Api(api).create_namespaced_job(NS, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels or {}}, "spec": spec})


def job_done(api: client.ApiClient, name: str) -> bool:
    status = client.BatchV1Api(api).read_namespaced_job(name, NS).status
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in status.conditions or [])


@pytest.mark.timeout(120)
def test_logs_of_the_current_job_pod(plugin: Plugin, resources: None, job_runner: JobRunner, tmp_path: Path) -> None:
    # A FineTuneJob whose Job was retried: the log is the newest pod's.
    create(plugin.api, "20-finetunejob.yaml", {"phase": "Training", "jobName": "retried-g1"}, metadata={"name": "retried"})
    python_job(plugin.api, "retried-g1", f"""
        import os, sys
        if not os.path.exists({str(tmp_path / "tried")!r}):
            open({str(tmp_path / "tried")!r}, "w").close()
            print("attempt 1")
            sys.exit(1)
        for i in range(3):
            print(f"attempt 2: line {{i}}")
    """, backoff_limit=1)
    kube.wait_for(lambda: job_done(plugin.api, "retried-g1"), 30, "the retried Job to finish")
    assert plugin.run("logs", "ftj", "retried", "--tail", "2", "-n", NS).stdout == "attempt 2: line 1\nattempt 2: line 2\n"

    # A VectorIndex's running Job, followed until its container exits.
    create(plugin.api, "10-vectorindex.yaml", {"phase": "Indexing", "jobName": "docs-g1"}, metadata={"name": "docs"})
    gate = tmp_path / "go"
    python_job(plugin.api, "docs-g1", f"""
        import os, time
        print("indexed 1", flush=True)
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.05)
        print("indexed 2", flush=True)
    """)
    follow = plugin.popen("logs", "vidx/docs", "-f", "-n", NS)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "indexed 1\n"  # streamed while the container still runs
        gate.touch()
        rest, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert (rest, err, follow.returncode) == ("indexed 2\n", "", 0)

    no_pods = plugin.run("logs", "ftj", "ticket-router-1", "-n", NS, ok=False)
    assert (no_pods.returncode, no_pods.stderr) == (
        1, "error: Job ticket-router-1-g1 of finetunejob.tunerag.dev/ticket-router-1 has no pods (yet, or any more)\n")


def running(api: client.ApiClient, job: str) -> int:
    pods = client.CoreV1Api(api).list_namespaced_pod(NS, label_selector=f"batch.kubernetes.io/job-name={job}").items
    return sum(p.status.phase == "Running" for p in pods)


@pytest.mark.timeout(120)
def test_logs_of_a_sharded_vectorindex(plugin: Plugin, resources: None, job_runner: JobRunner, tmp_path: Path) -> None:
    """parallelism 2: the shards' Indexed Job and then the finalize Job, named and labelled as the
    operator names them (their pods run stand-ins: a real shard needs a database and a model)."""
    obj = create(plugin.api, "10-vectorindex.yaml", {"phase": "Indexing", "jobName": "manuals-g1"},
                 metadata={"name": "manuals"}, spec={"parallelism": 2})
    python_job(plugin.api, "manuals-g1", f"""
        import os, time
        shard = os.environ["JOB_COMPLETION_INDEX"]
        print(f"shard {{shard}}: embedded 1 of 2", flush=True)
        while not os.path.exists(os.path.join({str(tmp_path)!r}, "go" + shard)):
            time.sleep(0.05)
        print(f"shard {{shard}}: embedded 2 of 2", flush=True)
    """, labels={INDEX_STEP: "shards"}, completions=2)
    kube.wait_for(lambda: running(plugin.api, "manuals-g1") == 2, 30, "both shards to run")

    # -f follows both shards at once, lines interleaved as they come, each prefixed with its shard.
    follow = plugin.popen("logs", "vidx", "manuals", "-f", "-n", NS)
    try:
        assert follow.stdout is not None
        assert {follow.stdout.readline(), follow.stdout.readline()} == {
            "[shard 0] shard 0: embedded 1 of 2\n", "[shard 1] shard 1: embedded 1 of 2\n"}
        (tmp_path / "go1").touch()
        assert follow.stdout.readline() == "[shard 1] shard 1: embedded 2 of 2\n"  # while shard 0 still runs
        (tmp_path / "go0").touch()
        rest, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert (rest, err, follow.returncode) == ("[shard 0] shard 0: embedded 2 of 2\n", "", 0)

    # The shards are done: the finalize Job runs, and its pod's log follows the shards'.
    kube.wait_for(lambda: job_done(plugin.api, "manuals-g1"), 30, "the shards to finish")
    meta = obj["metadata"]
    final = finalize_name(Owner("VectorIndex", "manuals", NS, meta["uid"], meta["generation"]), "manuals-g1")
    python_job(plugin.api, final, "print('finalize: built the index'); print('finalize: switched to manuals_v1')",
               labels={INDEX_STEP: "finalize"})
    kube.wait_for(lambda: job_done(plugin.api, final), 30, "the finalize Job to finish")
    everything = ("[shard 0] shard 0: embedded 1 of 2\n[shard 0] shard 0: embedded 2 of 2\n"
                  "[shard 1] shard 1: embedded 1 of 2\n[shard 1] shard 1: embedded 2 of 2\n"
                  "[finalize] finalize: built the index\n[finalize] finalize: switched to manuals_v1\n")
    done = plugin.run("logs", "vidx/manuals", "-n", NS)
    assert (done.stdout, done.stderr) == (everything, "")
    assert plugin.run("logs", "vidx/manuals", "--tail", "1", "-n", NS).stdout == (  # the tail of each pod
        "[shard 0] shard 0: embedded 2 of 2\n[shard 1] shard 1: embedded 2 of 2\n[finalize] finalize: switched to manuals_v1\n")
    followed = plugin.run("logs", "vidx/manuals", "-f", "-n", NS)  # a finished run: everything, then exit 0
    assert sorted(followed.stdout.splitlines()) == sorted(everything.splitlines()) and followed.stderr == ""

    # A shard that has no pod yet (one at a time here) is said so, and the others are shown.
    create(plugin.api, "10-vectorindex.yaml", {"phase": "Indexing", "jobName": "slow-g1"}, metadata={"name": "slow"},
           spec={"parallelism": 2})
    python_job(plugin.api, "slow-g1", f"""
        import os, time
        print("shard " + os.environ["JOB_COMPLETION_INDEX"] + ": started", flush=True)
        open(os.path.join({str(tmp_path)!r}, "started"), "w").close()
        while not os.path.exists(os.path.join({str(tmp_path)!r}, "go")):
            time.sleep(0.05)
    """, labels={INDEX_STEP: "shards"}, completions=2, parallelism=1)
    kube.wait_for(lambda: (tmp_path / "started").exists(), 30, "shard 0 to start")
    partial = plugin.run("logs", "vidx", "slow", "-n", NS)
    interrupted = plugin.popen("logs", "vidx", "slow", "-f", "-n", NS)
    try:
        assert interrupted.stdout is not None and interrupted.stdout.readline() == "[shard 0] shard 0: started\n"
        interrupted.send_signal(signal.SIGINT)  # Ctrl-C while following
        _, err = interrupted.communicate(timeout=30)
    finally:
        interrupted.kill()
        (tmp_path / "go").touch()
    assert (partial.stdout, partial.stderr) == ("[shard 0] shard 0: started\n", "shard 1: no pod yet\n")
    assert (interrupted.returncode, err) == (130, "shard 1: no pod yet\n")
