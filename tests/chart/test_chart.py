"""The Helm chart and the Dockerfile: lint, schema, server-side validation against the real local API
server, PodSecurity `restricted`, a real `helm install`, the exact RBAC table, and the images'
install commands replayed in a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from chart.conftest import CHART, KUBECTL, ROOT, Helm
from substrate import kube
from tunerag_operator.config import parse

# --------------------------------------------------------------------------------------------
# The RBAC table. Every (apiGroup, resource, verb) the operator is granted; a rule added to or
# removed from the chart without updating this table fails test_rbac_*.
# --------------------------------------------------------------------------------------------
CRUD = ("get", "list", "watch", "create", "patch", "update", "delete")
TUNERAG_KINDS = ("finetunejobs", "adapterversions", "vectorindexes", "rolloutpolicies", "finetuneschedules")
# Found by running the operator under exactly these grants (tests/security/test_rbac.py).
NAMESPACED_RULES: dict[tuple[str, str], tuple[str, ...]] = {
    **{("tunerag.dev", k): ("get", "list", "watch", "patch") for k in TUNERAG_KINDS},
    ("tunerag.dev", "adapterversions"): ("get", "list", "watch", "patch", "create"),
    ("tunerag.dev", "finetunejobs"): ("get", "list", "watch", "patch", "create", "delete"),
    **{("tunerag.dev", f"{k}/status"): ("patch",) for k in TUNERAG_KINDS},
    **{("tunerag.dev", f"{k}/finalizers"): ("update",) for k in TUNERAG_KINDS},
    ("batch", "jobs"): ("get", "list", "watch", "create", "delete"),
    ("", "configmaps"): ("get", "create", "delete"),
    ("", "secrets"): ("get",),
    ("", "persistentvolumeclaims"): ("get",),
    ("", "pods"): ("list",),
    ("", "pods/log"): ("get",),
    ("", "events"): ("create",),
    ("serving.kserve.io", "inferenceservices"): ("get", "create", "patch", "delete"),
    ("serving.kserve.io", "inferencegraphs"): ("get", "create", "patch", "delete"),
}
PEERING_VERBS = ("get", "list", "watch", "patch", "create")
CLUSTER_PEERING_RULES = {("kopf.dev", "clusterkopfpeerings"): PEERING_VERBS}
NAMESPACED_PEERING_RULES = {("kopf.dev", "kopfpeerings"): PEERING_VERBS}
CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): ("list", "watch")}
CLUSTERWIDE_ONLY_RULES: dict[tuple[str, str], tuple[str, ...]] = {}

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def grants(table: dict[tuple[str, str], tuple[str, ...]]) -> set[Grant]:
    return {(g, r, v) for (g, r), verbs in table.items() for v in verbs}


def rule_grants(rules: Iterable[dict[str, Any]]) -> set[Grant]:
    out: set[Grant] = set()
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], f"wildcard in {rule}"
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
        input=stdin, capture_output=True, text=True, timeout=120,
    )


def server_dry_run(kubeconfig: Path, docs: Iterable[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """`kubectl apply --server-side --dry-run=server`; every namespaced object names its namespace."""
    return kubectl(
        kubeconfig, "apply", "--server-side", "--dry-run=server", "--field-manager=tunerag-chart-test",
        "-f", "-", stdin=yaml.safe_dump_all(list(docs)),
    )


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}


def assert_namespaced_objects_name_their_namespace(docs: list[dict[str, Any]], namespaces: set[str]) -> None:
    for doc in docs:
        ns = doc["metadata"].get("namespace")
        if doc["kind"] in CLUSTER_SCOPED:
            assert ns is None, f"{doc['kind']}/{doc['metadata']['name']} is cluster-scoped"
        else:
            assert ns in namespaces, f"{doc['kind']}/{doc['metadata']['name']} in {ns!r}"


def release_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------------------------
# Lint and schema
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", [
    [],
    ["--set", "watchNamespaces={team-a,team-b}", "--set", "serviceMonitor.enabled=true"],
    ["--set", "crds.install=false", "--set", "image.digest=sha256:" + "a" * 64],
], ids=["defaults", "namespaced-servicemonitor", "no-crds-digest"])
def test_helm_lint_strict(helm: Helm, values: list[str]) -> None:
    out = helm.run("lint", "--strict", str(CHART), *values).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize(("values", "message"), [
    (["--set-string", "replicaCount=two"], "replicaCount: Invalid type. Expected: integer, given: string"),
    (["--set", "replicas=2"], "Additional property replicas is not allowed"),
    (["--set", "image.registry=docker.io"], "Additional property registry is not allowed"),
    (["--set", "logFormat=xml"], "logFormat: logFormat must be one of the following"),
    (["--set", "image.pullPolicy=Sometimes"], "image.pullPolicy: image.pullPolicy must be one of the following"),
    (["--set", "watchNamespaces={Not_A_Namespace}"], "watchNamespaces.0: Does not match pattern"),
    (["--set", "serviceMonitor.interval=soon"], "serviceMonitor.interval: Does not match pattern"),
], ids=["replicaCount-string", "unknown-top-level", "unknown-nested", "logFormat", "pullPolicy",
        "namespace-name", "duration"])
def test_values_schema_rejects(helm: Helm, values: list[str], message: str) -> None:
    for command in (["template", "t"], ["lint", "--strict"]):
        proc = helm.run(*command, str(CHART), *values, check=False)
        assert proc.returncode != 0, f"helm {command[0]} accepted {values}"
        assert "values don't meet the specifications of the schema" in proc.stdout + proc.stderr
        assert message in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_schema_documents_every_default() -> None:
    """Every top-level key of values.yaml is in the schema, and the schema holds no stale key."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) == set(schema["properties"]) - {"global"}


# --------------------------------------------------------------------------------------------
# Rendered objects
# --------------------------------------------------------------------------------------------
def test_deployment_defaults(helm: Helm) -> None:
    docs = helm.render("--set", "workloadsImage.tag=9.9.9")
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deploy["spec"]["replicas"] == 1
    assert container["image"] == "ghcr.io/tunerag/operator:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TUNERAG_NAMESPACES"] == ""
    assert env["TUNERAG_HEALTH_PORT"] == "8080"
    assert env["TUNERAG_METRICS_PORT"] == "9090"
    assert env["TUNERAG_WORKLOADS_IMAGE"] == "ghcr.io/tunerag/workloads:9.9.9"
    assert env["TUNERAG_LOG_FORMAT"] == "json"
    assert env["TUNERAG_PROMETHEUS_ALLOW"] == ""
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8080, "metrics": 9090}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert not by_kind(docs, "ServiceMonitor")
    assert {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")} == {
        f"{k}.tunerag.dev" for k in TUNERAG_KINDS} | {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert not by_kind(helm.render("--set", "crds.install=false"), "CustomResourceDefinition")
    # Peering is on: one active replica (tests/faults/test_two_replicas.py); its record names the pod.
    assert env["TUNERAG_PEERING"] == deploy["metadata"]["name"] and env["TUNERAG_PEERING_LIFETIME"] == "30"
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    only_ours = helm.render("--set", "peering.installCRDs=false")
    assert {d["metadata"]["name"] for d in by_kind(only_ours, "CustomResourceDefinition")} == {f"{k}.tunerag.dev" for k in TUNERAG_KINDS}
    standalone = helm.render("--set", "peering.enabled=false")
    (deploy,) = by_kind(standalone, "Deployment")
    assert "TUNERAG_PEERING" not in {e["name"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not any(r["apiGroups"] == ["kopf.dev"] for role in by_kind(standalone, "ClusterRole") for r in role["rules"])


def test_namespaced_mode_and_servicemonitor(helm: Helm) -> None:
    docs = helm.render("--set", "watchNamespaces={team-a,team-b}", "--set", "serviceMonitor.enabled=true",
                       "--set", "serviceMonitor.labels.release=prom", "--set", "logFormat=plain",
                       "--set", "analysis.prometheusAllowList={http://prom.monitoring.svc:9090,https://thanos.example}")
    (deploy,) = by_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TUNERAG_NAMESPACES"] == "team-a,team-b"
    assert env["TUNERAG_LOG_FORMAT"] == "plain"
    assert env["TUNERAG_PROMETHEUS_ALLOW"] == "http://prom.monitoring.svc:9090,https://thanos.example"
    with pytest.MonkeyPatch.context() as mp:  # what the operator makes of it
        mp.setenv("TUNERAG_PROMETHEUS_ALLOW", env["TUNERAG_PROMETHEUS_ALLOW"])
        assert parse([]).prometheus_allow == ("http://prom.monitoring.svc:9090", "https://thanos.example")
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]


# --------------------------------------------------------------------------------------------
# RBAC: exactly the table above
# --------------------------------------------------------------------------------------------
def test_rbac_clusterwide_grants_exactly_the_table(helm: Helm) -> None:
    docs = helm.render(namespace="ops")
    (role,) = by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    expected = grants({**NAMESPACED_RULES, **CLUSTER_PEERING_RULES, **CRD_RULES, **CLUSTERWIDE_ONLY_RULES})
    actual = rule_grants(role["rules"])
    assert actual == expected, f"added: {sorted(actual - expected)}, removed: {sorted(expected - actual)}"
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    (sa,) = by_kind(docs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ops"}]


def test_rbac_namespaced_grants_exactly_the_table(helm: Helm) -> None:
    docs = helm.render("--set", "watchNamespaces={team-a,team-b}", namespace="ops")
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert rule_grants(cluster_role["rules"]) == grants(CRD_RULES)
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in by_kind(docs, "Role")}
    fullname = cluster_role["metadata"]["name"]
    assert set(roles) == {("team-a", fullname), ("team-b", fullname)}
    for ns in ("team-a", "team-b"):
        assert rule_grants(roles[ns, fullname]["rules"]) == grants({**NAMESPACED_RULES, **NAMESPACED_PEERING_RULES})
    bindings = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in by_kind(docs, "RoleBinding")}
    assert set(bindings) == set(roles)
    for key, binding in bindings.items():
        assert binding["roleRef"]["name"] == key[1] and binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == "ops"


def test_rbac_every_rule_is_explained(helm: Helm) -> None:
    """Each rule in the rendered RBAC has a comment line right above it saying what uses it."""
    text = helm.template("--set", "crds.install=false", "--show-only", "templates/rbac.yaml")
    lines = text.splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rule_lines) >= len(NAMESPACED_RULES) // 4
    for i in rule_lines:
        assert lines[i - 1].strip().startswith("#"), f"rule without a comment: {lines[i:i + 3]}"


# --------------------------------------------------------------------------------------------
# Against the real local API server
# --------------------------------------------------------------------------------------------
@pytest.mark.cluster
@pytest.mark.parametrize("values", [[], ["--set", "serviceMonitor.enabled=false", "--set", "replicaCount=2"]],
                         ids=["clusterwide-with-crds", "replicas"])
def test_rendered_chart_accepted_by_api_server(helm: Helm, control_plane: Any, namespace: str,
                                               values: list[str]) -> None:
    docs = helm.render(*values, namespace=namespace)
    assert_namespaced_objects_name_their_namespace(docs, {namespace})
    proc = server_dry_run(control_plane.kubeconfig, docs)
    assert proc.returncode == 0, proc.stderr
    applied = [line for line in proc.stdout.splitlines() if "serverside-applied (server dry run)" in line]
    assert len(applied) == len(docs), proc.stdout


@pytest.mark.cluster
def test_rendered_namespaced_chart_accepted_by_api_server(helm: Helm, control_plane: Any, namespace: str,
                                                          api: client.ApiClient) -> None:
    watched = f"{namespace}-w"
    kube.create_namespace(api, watched)
    try:
        docs = helm.render("--set", f"watchNamespaces={{{watched}}}", "--set", "crds.install=false",
                           namespace=namespace)
        assert_namespaced_objects_name_their_namespace(docs, {namespace, watched})
        assert {d["metadata"].get("namespace") for d in by_kind(docs, "Role")} == {watched}  # peering lives there too
        proc = server_dry_run(control_plane.kubeconfig, docs)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("serverside-applied (server dry run)") == len(docs), proc.stdout
    finally:
        kube.delete_namespace(api, watched)


@pytest.mark.cluster
def test_pod_meets_pod_security_restricted(helm: Helm, control_plane: Any, api: client.ApiClient) -> None:
    ns = f"t-restricted-{uuid.uuid4().hex[:5]}"
    kube.create_namespace(api, ns, labels={
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
    })
    try:
        docs = helm.render("--set", "crds.install=false", namespace=ns)
        (deploy,) = by_kind(docs, "Deployment")
        template = deploy["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "operator-pod", "namespace": ns, "labels": template["metadata"]["labels"]},
               "spec": template["spec"]}
        proc = server_dry_run(control_plane.kubeconfig, [pod])
        assert proc.returncode == 0, proc.stderr
        assert "serverside-applied (server dry run)" in proc.stdout

        # The Deployment itself draws no PodSecurity warning (the plugin warns on pod templates).
        proc = server_dry_run(control_plane.kubeconfig, [deploy])
        assert proc.returncode == 0, proc.stderr
        assert "PodSecurity" not in proc.stderr, proc.stderr

        # Control: the namespace really enforces `restricted` (a weakened pod is refused).
        weak = json.loads(json.dumps(pod))
        weak["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        del weak["spec"]["containers"][0]["securityContext"]["capabilities"]
        proc = server_dry_run(control_plane.kubeconfig, [weak])
        assert proc.returncode != 0
        assert 'violates PodSecurity "restricted:latest"' in proc.stderr, proc.stderr
    finally:
        kube.delete_namespace(api, ns)


@pytest.mark.cluster
@pytest.mark.parametrize("mode", ["clusterwide", "namespaced"])
def test_helm_install_creates_every_object(helm: Helm, control_plane: Any, namespace: str,
                                           api: client.ApiClient, mode: str) -> None:
    release = release_name("inst")
    args = ["--namespace", namespace, "--set", "crds.install=false"]
    if mode == "namespaced":
        args += ["--set", f"watchNamespaces={{{namespace}}}"]
    kubeconfig = ["--kubeconfig", str(control_plane.kubeconfig)]
    helm.run("install", release, str(CHART), *args, *kubeconfig, "--timeout", "60s")
    try:
        manifest = helm.run("get", "manifest", release, "--namespace", namespace, *kubeconfig).stdout
        docs = [d for d in yaml.safe_load_all(manifest) if d]
        kinds = {d["kind"] for d in docs}
        expected_kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"}
        if mode == "namespaced":
            expected_kinds |= {"Role", "RoleBinding"}
        assert kinds == expected_kinds
        dyn = dynamic.DynamicClient(api)
        for doc in docs:
            resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            meta = doc["metadata"]
            try:
                live = resource.get(name=meta["name"], namespace=meta.get("namespace"))
            except ApiException as exc:
                pytest.fail(f"{doc['kind']}/{meta['name']} not found after helm install: {exc.status}")
            assert live.metadata.labels["app.kubernetes.io/instance"] == release
            assert live.metadata.annotations["meta.helm.sh/release-name"] == release
        status = helm.run("status", release, "--namespace", namespace, *kubeconfig, "-o", "json").stdout
        assert json.loads(status)["info"]["status"] == "deployed"
    finally:
        helm.run("uninstall", release, "--namespace", namespace, *kubeconfig, check=False)


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------
DOCKERFILE = ROOT / "Dockerfile"
TARGET_PYPROJECTS = {"operator": ROOT / "operator" / "pyproject.toml",
                     "workloads": ROOT / "workloads" / "pyproject.toml"}


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """The Dockerfile's stages by name, each with its (INSTRUCTION, arguments) after joining line
    continuations and dropping comments."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert m, line
            current = Stage(m.group(1), m.group(2) or f"stage{len(stages)}")
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((instr, rest.strip()))
    return stages


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it copies from (--from=<stage>), dependencies first."""
    out: list[Stage] = []
    for instr, args in stages[name].instructions:
        m = re.match(r"--from=(\S+)", args) if instr == "COPY" else None
        if m and m.group(1) in stages:
            out += [s for s in stage_chain(stages, m.group(1)) if s not in out]
    return [*out, stages[name]]


def pip_installs(stage: Stage) -> list[list[str]]:
    """The argument lists of `pip install` commands in the stage's RUN instructions."""
    out = []
    for instr, args in stage.instructions:
        if instr != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or (words[1:3] == ["-m", "pip"] and words[3:4] == ["install"]):
                out.append(words[words.index("install") + 1:])
    return out


def test_dockerfile_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_targets_and_bases() -> None:
    stages = dockerfile_stages()
    assert {"operator", "workloads"} <= set(stages)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", stages["operator"].base), stages["operator"].base
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu22\.04", stages["workloads"].base)
    for name, lock in (("operator", "requirements/operator.lock"), ("workloads", "requirements/workloads.lock")):
        runs = [args for stage in stage_chain(stages, name) for instr, args in stage.instructions if instr == "RUN"]
        assert any(lock in run for run in runs), f"the {name} target does not install from {lock}"
        users = [args for instr, args in stages[name].instructions if instr == "USER"]
        assert users and users[-1].split(":")[0] == "65532", f"{name} must end as UID 65532"


def test_dockerfile_copy_sources_exist() -> None:
    for stage in dockerfile_stages().values():
        for instr, args in stage.instructions:
            if instr not in ("COPY", "ADD"):
                continue
            words = shlex.split(args)
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            assert sources, f"{instr} {args}"
            for src in sources:
                assert (ROOT / src).exists(), f"{stage.name}: {instr} source {src} is not in the repository"


def test_dockerfile_entrypoints_are_declared_console_scripts() -> None:
    stages = dockerfile_stages()
    for target, pyproject in TARGET_PYPROJECTS.items():
        entrypoints = [args for instr, args in stages[target].instructions if instr == "ENTRYPOINT"]
        if not entrypoints:
            assert target != "operator", "the operator image needs an ENTRYPOINT"
            continue
        argv = json.loads(entrypoints[-1])  # exec form only: signals reach the process
        assert pyproject.exists(), f"{pyproject.relative_to(ROOT)} is missing"
        scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
        assert argv[0] in scripts, f"{target}: ENTRYPOINT {argv[0]} is not in {pyproject} [project.scripts]"


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Iterator[Path]:
    python = sys.executable if sys.version_info[:2] == (3, 11) else "3.11"
    subprocess.run(["uv", "venv", "--quiet", "--python", python, str(tmp_path / "venv")], check=True,
                   env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"}, timeout=60)
    yield tmp_path / "venv"


@pytest.mark.timeout(180)
def test_operator_image_install_commands_work(fresh_venv: Path) -> None:
    """The operator target's `pip install` lines, replayed with `uv pip install` from the repository
    root (the build stage's WORKDIR mirrors the repository layout), give a working entry point."""
    chain = stage_chain(dockerfile_stages(), "operator")
    installs = [args for stage in chain for args in pip_installs(stage)]
    assert installs, "no pip install in the operator target"
    assert any("requirements/operator.lock" in args for args in installs), "the lock file is not used"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for args in installs:
        args = [a for a in args if a != "--no-cache-dir"]
        proc = subprocess.run(["uv", "pip", "install", "--quiet", "--python", str(fresh_venv / "bin" / "python"),
                               *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
        assert proc.returncode == 0, f"uv pip install {shlex.join(args)}:\n{proc.stderr}"
    script = fresh_venv / "bin" / "tunerag-operator"
    if (ROOT / "operator" / "src" / "tunerag_operator" / "__main__.py").exists():
        proc = subprocess.run([str(script), "--help"], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "usage: tunerag-operator" in proc.stdout
    else:
        probe = ("import importlib.metadata as m; (ep,) = [e for e in m.entry_points(group='console_scripts') "
                 "if e.name == 'tunerag-operator']; print(ep.value)")
        proc = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", probe], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "tunerag_operator.__main__:main"
