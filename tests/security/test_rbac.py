"""The operator under the chart's RBAC, for real.

The other tests run the operator with the control plane's admin certificate (authorization
AlwaysAllow). Here one control plane runs with RBAC authorization and an audit log; the chart's
ServiceAccount, ClusterRole and ClusterRoleBinding (cluster-wide mode, `helm template`) are
applied, a token is minted for the ServiceAccount (TokenRequest API), and the operator runs with a
kubeconfig holding only that token, through every pipeline: a VectorIndex that waits for its
Secret, indexes, re-indexes and drops its tables; a FineTuneJob that trains and registers an
AdapterVersion; a hand-registered AdapterVersion that is verified; a RolloutPolicy that creates
its InferenceService (KServe's CRDs are installed; no KServe controller runs). Then:

- nothing was forbidden: no 403 in the audit log or the operator's log;
- every granted (apiGroup, resource, verb) was used, except the grants listed in UNUSED with the
  reason each stays.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from chart.conftest import Helm, helm  # noqa: F401 - the session fixture `helm`
from security.conftest import PLURAL, manifest, vectorindex_spec, write_docs
from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.fixtures import runner_env
from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from substrate.postgres import Postgres
from tunerag_operator.api.common import GROUP, VERSION
from workloads import finetune_fixtures as ff

RELEASE, RELEASE_NS, TEAM = "t", "tunerag-system", "team"
SERVICE_ACCOUNT = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}-tunerag"
Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Grants this run does not use, and why they stay. A grant missing from here that goes unused
# fails the test (remove it from the chart, or say here why it stays); one listed here that gets
# used fails it too (take it off the list).
FINALIZERS = "where OwnerReferencesPermissionEnforcement is on (not on this API server), creating a run's Job and " \
             "ConfigMap with blockOwnerDeletion needs update on the owner's finalizers"
SCHEDULE = "a FineTuneSchedule (none in this run) starts and prunes FineTuneJobs and their ConfigMaps, reads its policy"
AB_TEST = "an A/B test (tests/e2e/test_rollout.py, without RBAC) creates, reads and deletes its graph and second service"
UNUSED: dict[Grant, str] = {
    **{("kopf.dev", "clusterkopfpeerings", v): "peering of several replicas; this operator runs standalone "
       "(tests/faults/test_two_replicas.py runs two)" for v in ("get", "list", "watch", "patch", "create")},
    **{("tunerag.dev", f"{k}/finalizers", "update"): FINALIZERS
       for k in ("finetunejobs", "adapterversions", "vectorindexes", "rolloutpolicies", "finetuneschedules")},
    ("tunerag.dev", "finetunejobs", "create"): SCHEDULE,
    ("tunerag.dev", "finetunejobs", "delete"): SCHEDULE,
    ("", "configmaps", "delete"): SCHEDULE,
    ("tunerag.dev", "rolloutpolicies", "get"): SCHEDULE,
    ("tunerag.dev", "finetuneschedules", "get"): SCHEDULE,
    ("tunerag.dev", "finetuneschedules", "patch"): SCHEDULE,
    ("tunerag.dev", "finetuneschedules/status", "patch"): SCHEDULE,
    **{("serving.kserve.io", "inferencegraphs", v): AB_TEST for v in ("get", "create", "delete")},
    ("serving.kserve.io", "inferencegraphs", "patch"): "one rule for both KServe kinds; only services are patched",
    ("serving.kserve.io", "inferenceservices", "delete"): AB_TEST,
    ("serving.kserve.io", "inferenceservices", "patch"): "traffic moves once KServe reports the service ready; "
                                                        "no KServe controller runs here",
}


@pytest.fixture(scope="module")
def rbac_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The control plane with RBAC and an audit log of the ServiceAccount's requests (level Metadata)."""
    import os

    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    plane = ControlPlane(tmp_path_factory.mktemp("rbac"), rbac=True, bin_dir=Path(bin_dir) if bin_dir else None,
                         audit_rules=[{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}])
    with plane:
        admin = config.new_client_from_config(str(plane.kubeconfig))
        kube.install_crds(admin, kube.crd_documents(include_kserve=True), timeout=120)
        yield plane


def _granted(docs: list[dict[str, Any]]) -> set[Grant]:
    out: set[Grant] = set()
    for role in (d for d in docs if d["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def _audit(path: Path, user: str = SERVICE_ACCOUNT) -> tuple[set[Grant], list[str]]:
    """What the ServiceAccount did, and every request it was refused."""
    used: set[Grant] = set()
    forbidden: list[str] = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["user"]["username"] != user or "objectRef" not in event:
            continue
        if event["objectRef"].get("apiGroup") == "authorization.k8s.io":
            continue  # the test's own access reviews
        ref = event["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        grant = (ref.get("apiGroup", ""), resource, event["verb"])
        code = (event.get("responseStatus") or {}).get("code", 0)
        if code == 403:
            forbidden.append(f"{grant} {ref.get('namespace', '')}/{ref.get('name', '')}")
        else:
            used.add(grant)
    return used, forbidden


def _apply(kubeconfig: Path, docs: list[dict[str, Any]]) -> None:
    subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "apply", "--server-side", "-f", "-"],
                   input=yaml.safe_dump_all(docs), check=True, capture_output=True, text=True)


def _create(api: client.ApiClient, kind: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, TEAM, PLURAL[kind], manifest(kind, name, spec))


def _status(api: client.ApiClient, kind: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, TEAM, PLURAL[kind], name)
    return obj.get("status") or {}  # type: ignore[no-any-return]


def _phase(api: client.ApiClient, kind: str, name: str, phases: tuple[str, ...], timeout: float = 300) -> dict[str, Any]:
    return wait_for(lambda: (s := _status(api, kind, name)).get("phase") in phases and s, timeout,
                    f"{kind} {name} to reach {phases}", interval=0.5)


@pytest.mark.cluster
@pytest.mark.timeout(900)  # one control plane with KServe's CRDs (about 30 s), then every pipeline
def test_operator_runs_every_pipeline_under_the_charts_rbac_and_uses_what_it_is_granted(
    rbac_plane: ControlPlane, helm: Helm, postgres: Postgres, pg_database: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    admin = config.new_client_from_config(str(rbac_plane.kubeconfig))
    core = client.CoreV1Api(admin)
    kube.create_namespace(admin, RELEASE_NS)
    docs = [d for d in helm.render("--set", "crds.install=false", namespace=RELEASE_NS, release=RELEASE)
            if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    _apply(rbac_plane.kubeconfig, docs)
    (sa,) = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
    assert f"system:serviceaccount:{RELEASE_NS}:{sa}" == SERVICE_ACCOUNT
    token = core.create_namespaced_service_account_token(sa, RELEASE_NS, {"spec": {"expirationSeconds": 3600}}).status.token
    kubeconfig = rbac_plane.token_kubeconfig(token, tmp_path / "operator-kubeconfig")

    # Control: the token holds the chart's rights and no more (asked without being refused, so the
    # audit log's 403s are the operator's own).
    as_operator = client.AuthorizationV1Api(config.new_client_from_config(str(kubeconfig)))

    def allowed(verb: str, resource: str) -> bool:
        review = {"spec": {"resourceAttributes": {"namespace": TEAM, "verb": verb, "resource": resource}}}
        return bool(as_operator.create_self_subject_access_review(review).status.allowed)

    assert allowed("get", "secrets") and not allowed("list", "secrets") and not allowed("create", "pods")

    kube.create_namespace(admin, TEAM)
    with JobRunner(admin, workdir=tmp_path / "jobrunner", env_overrides=runner_env()) as runner:
        operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", extra_env={
            "TUNERAG_RETRY_DELAY": "2", "TUNERAG_PROGRESS_INTERVAL": "1", "TUNERAG_ROLLOUT_TICK": "1"})
        operator.start()
        try:
            _pipelines(admin, runner, pg_database, tmp_path)
        finally:
            operator.stop()
        log = operator.log_path.read_text(errors="replace")

    used, forbidden = _audit(rbac_plane.audit_log)
    assert not forbidden, forbidden
    # A refusal reads "(403)" / "Forbidden" in the log; a bare 403 also appears in timestamps (",403").
    refusals = [line for line in log.splitlines() if "(403)" in line or "Forbidden" in line]
    assert not refusals, refusals[:5]
    granted = _granted(docs)
    assert used <= granted  # anything else would have been refused
    unused = granted - used
    assert not unused - set(UNUSED), f"granted but not used (remove, or justify in UNUSED): {sorted(unused - set(UNUSED))}"
    assert not set(UNUSED) - unused, f"listed as unused but used: {sorted(set(UNUSED) - unused)}"


def _pipelines(admin: client.ApiClient, runner: JobRunner, pg_database: str, tmp_path: Path) -> None:
    core = client.CoreV1Api(admin)
    # VectorIndex: waits for its Secret (an Event), indexes, re-indexes a new generation, then is
    # deleted with deletionPolicy Delete (a drop Job, the finalizer).
    core.create_namespaced_persistent_volume_claim(TEAM, {"metadata": {"name": "docs"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    write_docs(runner.claim_path(TEAM, "docs") / "handbook")
    index = vectorindex_spec()
    index["store"]["deletionPolicy"] = "Delete"
    _create(admin, "VectorIndex", "handbook", index)
    wait_for(lambda: any(e.reason == "SecretNotFound" for e in core.list_namespaced_event(TEAM).items), 30, "SecretNotFound")
    core.create_namespaced_secret(TEAM, {"metadata": {"name": "db"}, "data": {"uri": base64.b64encode(pg_database.encode()).decode()}})

    # FineTuneJob: trains (progress read from the pod's log), registers an AdapterVersion.
    out = tmp_path / "artifacts"
    spec = ff.base_spec(ff.cached_model(), tmp_path / "data", out, training={"maxSteps": 6, "checkpointInterval": 3})
    spec["gates"] = {"maxRetentionRegression": 10.0}
    _create(admin, "FineTuneJob", "colors-1", spec)

    # A new generation while the first run is still going replaces it (the old Job is deleted).
    wait_for(lambda: _status(admin, "VectorIndex", "handbook").get("jobName") == "handbook-g1", 30, "generation 1")
    client.CustomObjectsApi(admin).patch_namespaced_custom_object(
        GROUP, VERSION, TEAM, "vectorindexes", "handbook", {"spec": {"chunking": {"size": 48}}})
    wait_for(lambda: _status(admin, "VectorIndex", "handbook").get("jobName") == "handbook-g2", 30, "generation 2")
    # A ConfigMap source is looked up by name (this one waits for a Secret that never comes).
    from_cm = vectorindex_spec()
    from_cm["source"] = {"configMap": {"name": "docs"}}
    from_cm["store"]["connectionSecret"]["name"] = "absent"
    _create(admin, "VectorIndex", "from-configmap", from_cm)
    wait_for(lambda: "ConfigMap team/docs" in str(_status(admin, "VectorIndex", "from-configmap").get("conditions")),
             30, "the ConfigMap to be looked up")

    ftj = _phase(admin, "FineTuneJob", "colors-1", ("Succeeded", "Rejected", "Failed"), timeout=420)
    assert ftj["phase"] == "Succeeded", ftj
    _phase(admin, "AdapterVersion", ftj["adapterVersion"], ("Validated",), timeout=60)
    av = client.CustomObjectsApi(admin).get_namespaced_custom_object(GROUP, VERSION, TEAM, "adapterversions", ftj["adapterVersion"])

    # A hand-registered AdapterVersion: a verification Job checks the artifact's sha256.
    _create(admin, "AdapterVersion", "byhand-v1", {
        "family": "byhand", "version": 1, "baseModel": av["spec"]["baseModel"],
        "artifact": {"uri": av["spec"]["artifact"]["uri"], "sha256": av["spec"]["artifact"]["sha256"]},
    })
    _phase(admin, "AdapterVersion", "byhand-v1", ("Validated",), timeout=120)

    # RolloutPolicy: the Validated version becomes the candidate; its InferenceService is created.
    _create(admin, "RolloutPolicy", "colors", {
        "target": {"inferenceService": "colors", "baseModel": av["spec"]["baseModel"]["uri"]},
        "adapterSelector": {"family": "colors"},
    })
    wait_for(lambda: client.CustomObjectsApi(admin).list_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", TEAM, "inferenceservices")["items"], 60, "the InferenceService")

    _phase(admin, "VectorIndex", "handbook", ("Ready",))
    client.CustomObjectsApi(admin).delete_namespaced_custom_object(GROUP, VERSION, TEAM, "vectorindexes", "handbook")
    wait_for(lambda: "handbook" not in {i["metadata"]["name"] for i in client.CustomObjectsApi(admin).list_namespaced_custom_object(
        GROUP, VERSION, TEAM, "vectorindexes")["items"]}, 180, "the VectorIndex to be dropped and deleted", interval=0.5)


NS_RELEASE, NS_RELEASE_NS, NS_TEAM = "ns", "tunerag-ns", "team-ns"


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_a_namespaced_install_runs_under_its_roles_with_peering(
    rbac_plane: ControlPlane, helm: Helm, pg_database: str, tmp_path: Path,  # noqa: F811
) -> None:
    """The chart with `watchNamespaces` (Roles in the watched namespace, no ClusterRole for the
    tunerag kinds) and peering on, as it is installed: the operator under its token indexes a
    VectorIndex that waits for its Secret, and creates a RolloutPolicy's InferenceService, with
    no request refused."""
    admin = config.new_client_from_config(str(rbac_plane.kubeconfig))
    core = client.CoreV1Api(admin)
    for ns in (NS_RELEASE_NS, NS_TEAM):
        kube.create_namespace(admin, ns)
    docs = helm.render("--set", f"watchNamespaces={{{NS_TEAM}}}", namespace=NS_RELEASE_NS, release=NS_RELEASE)
    peering = [d for d in docs if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == "kopf.dev"]
    kube.install_crds(admin, peering)
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    _apply(rbac_plane.kubeconfig, rbac)
    (sa,) = [d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    assert env["TUNERAG_NAMESPACES"] == NS_TEAM and env.get("TUNERAG_PEERING"), env
    token = core.create_namespaced_service_account_token(sa, NS_RELEASE_NS, {"spec": {"expirationSeconds": 3600}}).status.token
    kubeconfig = rbac_plane.token_kubeconfig(token, tmp_path / "operator-kubeconfig")

    with JobRunner(admin, namespaces={NS_TEAM}, workdir=tmp_path / "jobrunner", env_overrides=runner_env()) as runner:
        operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", extra_env={
            "TUNERAG_NAMESPACES": NS_TEAM, "TUNERAG_PEERING": env["TUNERAG_PEERING"], "POD_ID": "ns-operator-0",
            "TUNERAG_RETRY_DELAY": "2", "TUNERAG_PROGRESS_INTERVAL": "1", "TUNERAG_ROLLOUT_TICK": "1"})
        operator.start()
        try:
            core.create_namespaced_persistent_volume_claim(NS_TEAM, {"metadata": {"name": "docs"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
            write_docs(runner.claim_path(NS_TEAM, "docs") / "handbook")
            client.CustomObjectsApi(admin).create_namespaced_custom_object(
                GROUP, VERSION, NS_TEAM, "vectorindexes", manifest("VectorIndex", "handbook", vectorindex_spec()))
            wait_for(lambda: any(e.reason == "SecretNotFound" for e in core.list_namespaced_event(NS_TEAM).items), 60,
                     "SecretNotFound")
            core.create_namespaced_secret(NS_TEAM, {"metadata": {"name": "db"}, "data": {
                "uri": base64.b64encode(pg_database.encode()).decode()}})
            client.CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, NS_TEAM, "rolloutpolicies", manifest(
                "RolloutPolicy", "colors", {"target": {"inferenceService": "colors", "baseModel": "file:///models/base"},
                                            "adapterSelector": {"family": "colors", "version": 1}}))

            def status(plural: str, name: str) -> dict[str, Any]:
                obj = client.CustomObjectsApi(admin).get_namespaced_custom_object(GROUP, VERSION, NS_TEAM, plural, name)
                return obj.get("status") or {}  # type: ignore[no-any-return]

            wait_for(lambda: status("vectorindexes", "handbook").get("phase") == "Ready", 240, "the VectorIndex Ready", interval=0.5)
            wait_for(lambda: status("rolloutpolicies", "colors").get("conditions"), 60, "the RolloutPolicy's status")
        finally:
            operator.stop()
        log = operator.log_path.read_text(errors="replace")

    _, forbidden = _audit(rbac_plane.audit_log, f"system:serviceaccount:{NS_RELEASE_NS}:{sa}")
    assert not forbidden, forbidden
    refusals = [line for line in log.splitlines() if "(403)" in line or "Forbidden" in line]
    assert not refusals, refusals[:5]
    assert "Resuming operations" in log  # it took the lead through the namespace's KopfPeering
