"""Hostile input: SQL-looking identifiers, path traversal, oversized specs, unicode and control
characters, YAML with unexpected types.

Each must be refused at admission by the real API server (with the field named), or, where
admission lets it through, reported by the operator with a clear condition; none may reach SQL
text, a shell, or a path outside its volume. tests/api/bad/ already covers a table name with
`; DROP TABLE`, `..` in pvc:// output, a bad scheme, a long name and a wrong type; the cases here
are the others.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from psycopg import sql

from security.conftest import (
    PLURAL,
    api_message,
    condition,
    create,
    get,
    jobs,
    minilm_path,
    pvc,
    secret,
    vectorindex_spec,
    wait_condition,
    wait_phase,
    write_docs,
)
from substrate.jobrunner import JobRunner
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import GROUP, NO_TRAVERSAL, URI_PATTERN, VERSION
from tunerag_workloads.contract import WorkloadError, resolve_uri

# --------------------------------------------------------------------------------------------
# Admission: the manifest as a user would write it in YAML (so YAML 1.1 typing applies: `no` is a
# boolean, `0x1F` an integer), applied to the real API server with the generated CRDs.
# --------------------------------------------------------------------------------------------
VIDX = """
source: {uri: "file:///docs"}
store: {connectionSecret: {name: db, key: uri}, table: docs}
"""
FTJ = """
baseModel: {uri: "file:///models/base"}
adapter: {family: demo}
dataset: {train: {uri: "file:///data/train.jsonl"}}
output: {uri: "file:///artifacts"}
"""
AV = """
family: demo
version: 1
baseModel: {uri: "file:///models/base"}
artifact: {uri: "file:///artifacts/demo/1", sha256: "%s"}
""" % ("a" * 64)
FTS = """
minNewSamples: 100
feedback: {rolloutPolicy: qa}
template:
  baseModel: {uri: "file:///models/base"}
  adapter: {family: demo}
  dataset: {train: {uri: "file:///data/train.jsonl"}}
  output: {uri: "file:///artifacts"}
"""
BASE = {"VectorIndex": VIDX, "FineTuneJob": FTJ, "AdapterVersion": AV, "FineTuneSchedule": FTS}


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
    doc[last] = value


def _hostile(kind: str, overrides: str) -> dict[str, Any]:
    """The kind's base spec with `overrides` (YAML `dotted.path: value` lines) applied."""
    spec = yaml.safe_load(BASE[kind])
    for path, value in (yaml.safe_load(textwrap.dedent(overrides)) or {}).items():
        if value == "<delete>":
            *parents, last = path.split(".")
            target = spec
            for key in parents:
                target = target[key]
            del target[last]
        else:
            _set(spec, path, value)
    return spec


# (id, kind, YAML overrides, fragments the API server's message must contain)
REFUSED: list[tuple[str, str, str, list[str]]] = [
    # SQL-looking identifiers: only ^[a-z_][a-z0-9_]*$ reaches the workload.
    ("schema-quote-injection", "VectorIndex", """store.schema: 'public"; DROP SCHEMA public CASCADE; --'""",
     ["spec.store.schema", "should match"]),
    ("table-comment", "VectorIndex", "store.table: docs--", ["spec.store.table", "should match"]),
    ("table-quote", "VectorIndex", """store.table: 'do"cs'""", ["spec.store.table", "should match"]),
    ("table-homoglyph", "VectorIndex", "store.table: d\u043ecs", ["spec.store.table", "should match"]),  # Cyrillic o
    ("table-nul", "VectorIndex", 'store.table: "docs\\0"', ["spec.store.table", "should match"]),
    ("table-too-long", "VectorIndex", f"store.table: {'a' * 49}", ["spec.store.table", "Too long", "48"]),
    ("schema-too-long", "VectorIndex", f"store.schema: {'a' * 64}", ["spec.store.schema", "Too long", "63"]),
    # YAML with unexpected types.
    ("table-yaml-boolean", "VectorIndex", "store.table: no", ["spec.store.table", "must be of type string"]),
    ("table-yaml-hex-int", "VectorIndex", "store.table: 0x1F", ["spec.store.table", "must be of type string"]),
    ("table-list", "VectorIndex", "store.table: [docs]", ["spec.store.table", "must be of type string"]),
    ("include-scalar", "VectorIndex", 'source.include: "**/*.md"', ["spec.source.include", "must be of type array"]),
    ("chunking-scalar", "VectorIndex", "chunking: 256", ["spec.chunking", "must be of type object"]),
    ("parallelism-string", "VectorIndex", 'parallelism: "2"', ["spec.parallelism", "must be of type integer"]),
    ("parallelism-float", "VectorIndex", "parallelism: 1.5", ["spec.parallelism", "must be of type integer"]),
    ("size-beyond-int64", "VectorIndex", "chunking.size: 9223372036854775808", ["spec.chunking.size"]),
    ("normalize-string", "VectorIndex", 'embedding.normalize: "yes"', ["spec.embedding.normalize", "must be of type boolean"]),
    ("secret-ref-scalar", "VectorIndex", "store.connectionSecret: db", ["spec.store.connectionSecret", "must be of type object"]),
    ("epochs-infinity-string", "FineTuneJob", 'training.epochs: ".inf"', ["spec.training.epochs", "must be of type number"]),
    # Path traversal and odd URIs (tests/api/bad has `..` in a pvc:// output and an http:// scheme).
    ("uri-dotdot-at-end", "VectorIndex", 'source.uri: "pvc://docs/handbook/.."', ["spec.source.uri", "must not contain '..'"]),
    ("uri-dotdot-as-claim", "VectorIndex", 'source.uri: "pvc://../etc"', ["spec.source.uri", "must not contain '..'"]),
    ("file-uri-dotdot", "FineTuneJob", 'baseModel.uri: "file:///models/../../etc/shadow"', ["spec.baseModel.uri", "must not contain '..'"]),
    ("s3-uri-dotdot", "FineTuneJob", 'dataset.retention: {uri: "s3://bucket/a/../../b"}', ["spec.dataset.retention.uri", "must not contain '..'"]),
    ("gs-artifact-dotdot", "AdapterVersion", 'artifact.uri: "gs://bucket/../other"', ["spec.artifact.uri", "must not contain '..'"]),
    ("uri-newline", "VectorIndex", 'source.uri: "pvc://docs/a\\nb"', ["spec.source.uri", "should match"]),
    ("uri-tab", "VectorIndex", 'source.uri: "file:///docs\\tx"', ["spec.source.uri", "should match"]),
    ("uri-scheme-uppercase", "VectorIndex", 'source.uri: "PVC://docs/x"', ["spec.source.uri", "should match"]),
    ("uri-single-slash", "FineTuneJob", 'output.uri: "file:/etc"', ["spec.output.uri", "should match"]),
    ("uri-too-long", "VectorIndex", f'source.uri: "file:///{"a" * 2048}"', ["spec.source.uri", "Too long", "2048"]),
    # A pvc:// URI that names no claim that could exist: the claim is a DNS subdomain (these were
    # refused by the reconcile, PersistentVolumeClaimNotFound, before admission said so).
    ("pvc-without-claim", "VectorIndex", 'source.uri: "pvc:///etc/passwd"', ["spec.source.uri", "must name a PersistentVolumeClaim"]),
    ("pvc-dot-claim", "VectorIndex", 'source.uri: "pvc://./handbook"', ["spec.source.uri", "must name a PersistentVolumeClaim"]),
    ("pvc-claim-not-a-name", "VectorIndex", 'source.uri: "pvc://Docs_1/handbook"', ["spec.source.uri", "must name a PersistentVolumeClaim"]),
    ("pvc-output-without-claim", "FineTuneJob", 'output.uri: "pvc:///"', ["spec.output.uri", "must name a PersistentVolumeClaim"]),
    ("pvc-claim-double-dot", "FineTuneJob", 'dataset.train.uri: "pvc://a..b/train.jsonl"',
     ["spec.dataset.train.uri", "must name a PersistentVolumeClaim"]),
    # References: names and keys that try to leave the namespace or the Secret.
    ("secret-key-traversal", "VectorIndex", 'store.connectionSecret.key: "../uri"', ["spec.store.connectionSecret.key", "should match"]),
    ("secret-key-dot", "VectorIndex", 'store.connectionSecret.key: "."', ["spec.store.connectionSecret.key", "should match"]),
    ("secret-key-dotdot", "VectorIndex", 'store.connectionSecret.key: ".."', ["spec.store.connectionSecret.key", "should match"]),
    ("secret-key-leading-dotdot", "VectorIndex", 'store.connectionSecret.key: "...uri"', ["spec.store.connectionSecret.key", "should match"]),
    ("secret-name-with-namespace", "VectorIndex", 'store.connectionSecret.name: "kube-system/db"', ["spec.store.connectionSecret.name", "should match"]),
    ("configmap-name-unicode", "VectorIndex", 'source.uri: <delete>\nsource.configMap: {name: "dócs"}', ["spec.source.configMap.name", "should match"]),
    # Shell-looking text where a name is expected.
    ("family-shell", "FineTuneJob", 'adapter.family: "demo; rm -rf /"', ["spec.adapter.family", "should match"]),
    ("family-command-substitution", "AdapterVersion", 'family: "$(id)"', ["spec.family", "should match"]),
    # Oversized fields and lists.
    ("include-too-many", "VectorIndex", f"source.include: {json.dumps(['*.md'] * 65)}", ["spec.source.include", "Too many", "64"]),
    ("include-glob-100k", "VectorIndex", f"source.include: {json.dumps(['*a' * 50_000])}", ["spec.source.include[0]", "Too long", "512"]),
    ("exclude-glob-empty", "VectorIndex", 'source.exclude: [""]', ["spec.source.exclude[0]", "at least 1"]),
    ("model-too-long", "VectorIndex", f'embedding.model: "{"m" * 513}"', ["spec.embedding.model", "Too long", "512"]),
    ("target-modules-too-many", "FineTuneJob", f"method.lora.targetModules: {json.dumps(['q_proj'] * 65)}",
     ["spec.method.lora.targetModules", "Too many"]),
    ("tolerations-too-many", "VectorIndex", f"resources.tolerations: {json.dumps([{'operator': 'Exists'}] * 33)}",
     ["spec.resources.tolerations", "Too many"]),
    ("node-selector-too-many", "VectorIndex", f"resources.nodeSelector: {json.dumps({f'k{i}': 'v' for i in range(65)})}",
     ["spec.resources.nodeSelector", "Too many", "64"]),
    # Pod placement: what the pod's own validation would refuse is refused here, with the field
    # named, rather than when the Job is created.
    ("node-selector-key", "VectorIndex", 'resources.nodeSelector: {"bad key!": x}', ["spec.resources.nodeSelector", "label keys"]),
    ("node-selector-key-two-slashes", "VectorIndex", "resources.nodeSelector: {a/b/c: x}", ["spec.resources.nodeSelector", "label keys"]),
    ("node-selector-key-long-prefix", "VectorIndex", f"resources.nodeSelector: {{{'a' * 254}/b: x}}",
     ["spec.resources.nodeSelector", "at most 253"]),
    ("node-selector-value", "VectorIndex", 'resources.nodeSelector: {pool: "a b"}', ["spec.resources.nodeSelector.pool", "should match"]),
    ("gpu-resource-name", "VectorIndex", 'resources.gpuResourceName: "not a resource"', ["spec.resources.gpuResourceName", "should match"]),
    ("gpu-resource-native", "FineTuneJob", "resources.gpuResourceName: kubernetes.io/gpu",
     ["spec.resources.gpuResourceName", "kubernetes.io"]),
    ("gpu-resource-unprefixed", "FineTuneJob", "resources.gpuResourceName: gpu", ["spec.resources.gpuResourceName", "should match"]),
    ("priority-class-name", "FineTuneJob", "resources.priorityClassName: Not_A_Name", ["spec.resources.priorityClassName", "should match"]),
    ("memory-decimal-kilo-uppercase", "VectorIndex", "resources.memory: 16K", ["spec.resources.memory", "should match"]),
    ("image-with-space", "VectorIndex", 'resources.image: "repo/img :1"', ["spec.resources.image", "should match"]),
    ("toleration-key", "FineTuneJob", 'resources.tolerations: [{key: "a b", operator: Exists}]',
     ["spec.resources.tolerations[0].key", "should match"]),
    ("toleration-without-key-equal", "FineTuneJob", "resources.tolerations: [{operator: Equal, value: x}]",
     ["spec.resources.tolerations[0].operator", "without a key"]),
    ("toleration-exists-with-value", "FineTuneJob", "resources.tolerations: [{key: gpu, operator: Exists, value: x}]",
     ["spec.resources.tolerations[0].value", "takes no value"]),
    ("toleration-seconds-beyond-int64", "FineTuneJob",
     "resources.tolerations: [{key: gpu, effect: NoExecute, tolerationSeconds: 9223372036854775808}]",
     ["spec.resources.tolerations[0].tolerationSeconds"]),
    ("toleration-seconds-without-noexecute", "FineTuneJob", "resources.tolerations: [{key: gpu, tolerationSeconds: 60}]",
     ["spec.resources.tolerations[0].tolerationSeconds", "NoExecute"]),
    ("credentials-secret-dot", "FineTuneJob", 'output.credentialsSecret: "."', ["spec.output.credentialsSecret", "should match"]),
    ("credentials-secret-dotdot", "FineTuneJob", 'output.credentialsSecret: ".."', ["spec.output.credentialsSecret", "should match"]),
    ("secret-name-double-dot", "VectorIndex", 'store.connectionSecret.name: "a..b"', ["spec.store.connectionSecret.name", "should match"]),
]


@pytest.mark.parametrize(("kind", "overrides", "expected"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_hostile_spec_is_refused_at_admission_naming_the_field(
    api: client.ApiClient, namespace: str, kind: str, overrides: str, expected: list[str]
) -> None:
    with pytest.raises(ApiException) as refused:
        create(api, namespace, kind, "hostile", _hostile(kind, overrides))
    assert refused.value.status == 422, refused.value.body
    message = api_message(refused.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("name", ["dócs", "a;b", "a\nb", "docs\x00", "Docs", "a b", "$(id)"],
                         ids=["unicode", "semicolon", "newline", "nul", "uppercase", "space", "command"])
def test_hostile_metadata_name_is_refused(api: client.ApiClient, namespace: str, name: str) -> None:
    with pytest.raises(ApiException) as refused:
        create(api, namespace, "VectorIndex", name, _hostile("VectorIndex", ""))
    assert refused.value.status == 422
    assert "metadata.name" in api_message(refused.value)


def test_oversized_spec_is_refused_before_storage(api: client.ApiClient, namespace: str) -> None:
    """A 3.3 MB request is refused by the API server's request limit before it is decoded; a
    1.7 MB one by the schema's bounds (every map and list in the spec has one)."""
    spec = _hostile("VectorIndex", "")
    spec["resources"] = {"nodeSelector": {f"k{i}": "v" * 1000 for i in range(3300)}}
    with pytest.raises(ApiException) as refused:
        create(api, namespace, "VectorIndex", "huge", spec)
    assert refused.value.status == 413, refused.value.status
    spec["resources"] = {"nodeSelector": {f"k{i}": "v" * 1000 for i in range(1700)}}
    with pytest.raises(ApiException) as bounded:
        create(api, namespace, "VectorIndex", "large", spec)
    assert bounded.value.status == 422 and "spec.resources.nodeSelector" in api_message(bounded.value)
    assert not client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes")["items"]


def test_unknown_fields_are_pruned_not_passed_on(api: client.ApiClient, namespace: str) -> None:
    """A field the schema does not know (a namespace on a reference, a hostPath) never reaches the
    operator: the API server drops it."""
    spec = _hostile("VectorIndex", "")
    spec["store"]["connectionSecret"]["namespace"] = "kube-system"
    spec["hostPath"] = "/etc"
    spec["resources"] = {"securityContext": {"privileged": True}}
    stored = create(api, namespace, "VectorIndex", "pruned", spec)["spec"]
    assert stored["store"]["connectionSecret"] == {"name": "db", "key": "uri"}
    assert "hostPath" not in stored and "securityContext" not in stored["resources"]


# --------------------------------------------------------------------------------------------
# What admission lets through: the operator's condition says what is wrong, and no Job starts.
# --------------------------------------------------------------------------------------------
ACCEPTED_BUT_REFUSED: list[tuple[str, str, dict[str, Any], str, list[str]]] = [
    # (id, kind, spec changes, Accepted reason, fragments of the message)
    ("pvc-claim-absent", "VectorIndex", {"source": {"uri": "pvc://absent/handbook"}},
     "PersistentVolumeClaimNotFound", ["absent", "spec.source.uri"]),
    ("pvc-output-claim-absent", "FineTuneJob", {"output": {"uri": "pvc://absent"}},
     "PersistentVolumeClaimNotFound", ["spec.output.uri"]),
    ("credentials-secret-absent", "FineTuneJob", {"output": {"credentialsSecret": "s3-keys"}},
     "SecretNotFound", ["spec.output.credentialsSecret", "s3-keys"]),
    # What CEL cannot say: whether a cron expression ever fires (February 30th never comes); the
    # schedule's model refuses it, so no dataset Job and no FineTuneJob is ever made.
    ("cron-never-fires", "FineTuneSchedule", {"schedule": "0 0 30 2 *"}, "InvalidSpec", ["spec.schedule", "never fires"]),
    ("cron-on-the-31st-of-a-short-month", "FineTuneSchedule", {"schedule": "0 3 31 4,6,9,11 *"},
     "InvalidSpec", ["spec.schedule", "never fires"]),
]


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


@pytest.mark.parametrize(("kind", "changes", "reason", "fragments"), [c[1:] for c in ACCEPTED_BUT_REFUSED],
                         ids=[c[0] for c in ACCEPTED_BUT_REFUSED])
def test_what_admission_accepts_the_operator_reports(
    operator: OperatorProcess, api: client.ApiClient, namespace: str,
    kind: str, changes: dict[str, Any], reason: str, fragments: list[str],
) -> None:
    secret(api, namespace, "db", {"uri": "postgresql://u:p@127.0.0.1:9/x"})
    spec = _merge(_hostile(kind, ""), changes)
    if kind == "VectorIndex" and "uri" not in changes.get("source", {}):
        pvc(api, namespace, "docs")
        spec["source"] = {"uri": "pvc://docs/handbook"}
    create(api, namespace, kind, "hostile", spec)
    cond = wait_condition(api, namespace, kind, "hostile", "Accepted", "False", timeout=30)
    assert cond["reason"] == reason, cond
    for fragment in fragments:
        assert fragment in cond["message"], cond
    assert (get(api, namespace, kind, "hostile")["status"].get("jobName")) is None
    assert not jobs(api, namespace)
    if kind == "FineTuneSchedule":  # nor a run of it
        assert not client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL["FineTuneJob"])["items"]
    warning = wait_for(lambda: [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
                                if e.involved_object.name == "hostile" and e.reason == reason], 15, "a Warning event")
    assert warning[0].type == "Warning"


def test_a_job_refused_by_cluster_policy_is_reported_and_heals_when_the_spec_changes(
    operator: OperatorProcess, api: client.ApiClient, namespace: str,
) -> None:
    """Admission admits the VectorIndex, but the cluster's own policy (here a real
    ValidatingAdmissionPolicy, as platform teams write them) refuses its Job: the operator says so
    with the policy's message, starts nothing, retries nothing, and heals when the spec changes."""
    admission = client.AdmissionregistrationV1Api(api)
    policy = f"no-reserved-pool-{namespace}"
    admission.create_validating_admission_policy({
        "metadata": {"name": policy},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["batch"], "apiVersions": ["v1"],
                                                         "operations": ["CREATE"], "resources": ["jobs"]}]},
                 "validations": [{"expression": "object.spec.template.spec.?nodeSelector.pool.orValue('') != 'reserved'",
                                  "message": "the reserved node pool is for the platform team"}]}})
    admission.create_validating_admission_policy_binding({
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}})
    try:
        secret(api, namespace, "db", {"uri": "postgresql://u:p@127.0.0.1:9/x"})
        pvc(api, namespace, "docs")
        probe = {"metadata": {"name": "probe"}, "spec": {"template": {"spec": {
            "nodeSelector": {"pool": "reserved"}, "restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}
        wait_for(lambda: _refused(lambda: client.BatchV1Api(api).create_namespaced_job(namespace, probe, dry_run="All")),
                 15, "the policy to take effect")
        spec = _hostile("VectorIndex", "")
        spec["source"] = {"uri": "pvc://docs/handbook"}
        spec["resources"] = {"nodeSelector": {"pool": "reserved"}}
        create(api, namespace, "VectorIndex", "heals", spec)
        cond = wait_condition(api, namespace, "VectorIndex", "heals", "Accepted", "False", timeout=30, reason="InvalidSpec")
        assert "the reserved node pool is for the platform team" in cond["message"], cond
        assert get(api, namespace, "VectorIndex", "heals")["status"]["phase"] == "Failed"
        assert not jobs(api, namespace)
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL["VectorIndex"], "heals", {"spec": {"resources": {"nodeSelector": {"pool": "shared"}}}})
        wait_condition(api, namespace, "VectorIndex", "heals", "Accepted", "True", timeout=30)
        assert jobs(api, namespace) == ["heals-g2"]
    finally:
        admission.delete_validating_admission_policy_binding(policy)
        admission.delete_validating_admission_policy(policy)


def _refused(call: Any) -> bool:
    try:
        call()
    except ApiException as exc:
        return exc.status == 422
    return False


def test_control_character_in_a_uri_fails_the_run_once_with_a_clear_reason(
    operator: OperatorProcess, job_runner: JobRunner, api: client.ApiClient, namespace: str
) -> None:
    """Admission's `[^\\s]+` lets control characters other than whitespace through; the workload
    refuses them as a user error (exit code 2: no retries), not with a traceback."""
    secret(api, namespace, "db", {"uri": "postgresql://u:p@127.0.0.1:9/x"})
    pvc(api, namespace, "docs")
    write_docs(job_runner.claim_path(namespace, "docs") / "handbook")
    create(api, namespace, "VectorIndex", "ctrl", vectorindex_spec(uri="pvc://docs/hand\x00book\x1b[2J"))
    obj = wait_phase(api, namespace, "VectorIndex", "ctrl", "Failed", timeout=120)
    ready = condition(obj, "Ready")
    assert ready and ready["reason"] == "InvalidUri", ready
    assert "control character" in ready["message"]
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    assert len(pods) == 1, [p.metadata.name for p in pods]


# --------------------------------------------------------------------------------------------
# The workload: a URI never resolves outside its volume; identifiers reach SQL only quoted.
# --------------------------------------------------------------------------------------------
ROOT = "/mnt/pvc"


def _admitted(uri: str) -> bool:
    """What the CRD admits for a URI field, as far as the pattern and the CEL rule against `..`
    segments go (its other URI rules only refuse more: a claim must be a DNS subdomain)."""
    import re

    traversal = NO_TRAVERSAL["rule"].split("'")[1]  # the regex inside !self.matches('...')
    return bool(re.fullmatch(URI_PATTERN, uri)) and not re.search(traversal, uri) and len(uri) <= 2048


def _inside(path: str, folder: str) -> bool:
    return os.path.normpath(path) == folder or os.path.normpath(path).startswith(folder + "/")


@pytest.mark.parametrize("uri", [
    "pvc:///etc/passwd", "pvc://./x", "pvc://", "pvc:////etc", "pvc://docs/a\x00b", "pvc://docs/a\x7fb",
    "pvc://Docs/x", "pvc://docs/../../etc",
])
def test_resolve_uri_refuses_what_would_leave_the_volume(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNERAG_PVC_ROOT", ROOT)
    with pytest.raises(WorkloadError) as refused:
        resolve_uri(uri)
    assert refused.value.reason == "InvalidUri"


@pytest.mark.parametrize(("uri", "expected"), [
    ("pvc://docs/handbook", "/mnt/pvc/docs/handbook"),
    ("pvc://docs", "/mnt/pvc/docs"),
    ("pvc://docs/", "/mnt/pvc/docs"),
    ("pvc://docs//handbook/./a.md", "/mnt/pvc/docs/handbook/a.md"),
    ("pvc://docs/...", "/mnt/pvc/docs/..."),
    ("pvc://docs/%2e%2e/%2e%2e/etc", "/mnt/pvc/docs/%2e%2e/%2e%2e/etc"),
    ("pvc://docs/..\\..\\etc", "/mnt/pvc/docs/..\\..\\etc"),
    ("file:///data/train.jsonl", "/data/train.jsonl"),
    ("s3://bucket/key", "s3://bucket/key"),
])
def test_resolve_uri_stays_in_the_volume(uri: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNERAG_PVC_ROOT", ROOT)
    assert resolve_uri(uri) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(st.characters(codec="utf-8"), max_size=40)
       | st.lists(st.sampled_from(["docs", "..", ".", "", "/", "a", "~", "%2e", "\\", "\x00", "é"]), max_size=8).map("/".join))
def test_no_admitted_pvc_uri_resolves_outside_its_claim(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNERAG_PVC_ROOT", ROOT)
    uri = "pvc://" + path
    try:
        resolved = resolve_uri(uri)
    except WorkloadError as exc:
        assert exc.reason == "InvalidUri"
        return
    assert _admitted(uri) or ".." in path.split("/"), uri  # only what admission lets through, or plain `..`, resolves
    claim = path.split("/", 1)[0]
    assert claim and _inside(resolved, f"{ROOT}/{claim}"), (uri, resolved)


def test_symlinks_in_a_source_folder_do_not_leave_it(tmp_path: Path) -> None:
    """A document folder (say, a synced git repository) holding a link to the container's own files
    (/proc/self/environ carries the database URI) or to a folder outside: neither is read."""
    from tunerag_workloads.index.sources import iter_hashes, list_source, read_bytes
    from tunerag_workloads.index.spec import Source

    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.md").write_text("# Secret\n\nOUTSIDE-MARKER\n")
    (outside / "dir" / "inner.md").write_text("# Inner\n\nOUTSIDE-MARKER\n")
    docs = write_docs(tmp_path / "docs")
    (docs / "sub").mkdir()
    (docs / "sub" / "ok.md").write_text("# Fine\n\nInside.\n")
    (docs / "leak.md").symlink_to(outside / "secret.md")
    (docs / "environ.md").symlink_to("/proc/self/environ")
    (docs / "linked-dir").symlink_to(outside / "dir", target_is_directory=True)
    (docs / "inside-link.md").symlink_to(docs / "sub" / "ok.md")

    fs, files = list_source(Source(uri=f"file://{docs}"))
    read = {}
    for file, _digest, reason in iter_hashes(fs, files):
        if reason is None:
            read[file.path] = read_bytes(fs, file).decode()
        else:
            assert "outside" in reason or file.path.startswith("linked-dir"), (file.path, reason)
    assert set(read) == {"returns.md", "shipping.md", "sub/ok.md", "inside-link.md"}
    assert not any("OUTSIDE-MARKER" in text or "PATH=" in text for text in read.values())


def test_symlinks_in_a_dataset_folder_do_not_leave_it(tmp_path: Path) -> None:
    from tunerag_workloads.finetune.data import read_rows
    from tunerag_workloads.finetune.spec import DatasetSource

    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"prompt": "OUTSIDE-MARKER", "completion": "x"}) + "\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    (data / "b.jsonl").symlink_to(outside)
    (data / "c.jsonl").symlink_to("/proc/self/environ")
    with pytest.raises(WorkloadError) as refused:
        read_rows(DatasetSource.model_validate({"uri": f"file://{data}", "format": "jsonl"}))
    assert refused.value.reason == "LinkOutsideFolder" and "'b.jsonl'" in refused.value.message
    assert "OUTSIDE-MARKER" not in refused.value.message
    (data / "b.jsonl").unlink()
    (data / "c.jsonl").unlink()
    rows, _ = read_rows(DatasetSource.model_validate({"uri": f"file://{data}", "format": "jsonl"}))
    assert rows == [{"prompt": "p", "completion": "c"}]


@pytest.fixture(scope="module")
def minilm() -> Any:
    from tunerag_workloads.index import embed

    return embed.load_model(minilm_path(), "cpu")


HOSTILE_DOCS: dict[str, bytes] = {
    "x'); DROP TABLE canary; --.md": b"# Quote\n\nRobert'); DROP TABLE canary; -- was here.\n",
    'semi;colon "quoted" $(id) `id`.md': b"# Shell\n\n$(rm -rf /) and `id` are text, not commands.\n",
    "\u202eevil\u202c.md": "# Bidi\n\nRight-to-left override \u202e in text, emoji \U0001f512, CJK \u6f22\u5b57.\n".encode(),
    "crlf.md": b"# Windows\r\n\r\nCarriage returns\r\nare normalised.\r\n",
    "nul.md": b"# NUL\n\nbinary \x00 content\n",
    "latin1.md": "# Caf\u00e9\n\nnot utf-8\n".encode("latin-1"),
    "tabs\tand\nnewline.md": b"# Control characters in a name\n\nStill a document.\n",
}


def _relations(conn: psycopg.Connection[Any]) -> set[tuple[str, str]]:
    return {(s, r) for s, r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')").fetchall()}


def test_documents_and_identifiers_reach_sql_only_as_data(tmp_path: Path, pg_database: str, minilm: Any) -> None:
    """Reserved words as schema and table (valid per the SQL_IDENTIFIER pattern) only work when
    quoted; hostile file names and contents go in as parameters or COPY data, never as SQL."""
    from tunerag_workloads.index import run_index
    from tunerag_workloads.retrieval import search

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, data in HOSTILE_DOCS.items():
        (docs / name).write_bytes(data)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE canary (x int)")
    spec = vectorindex_spec(uri=f"file://{docs}", table="select")
    spec["store"]["schema"] = "order"
    result = run_index(spec, db_uri=pg_database, model=minilm)

    skipped = {f["path"]: f["reason"] for f in result["skippedFiles"]}
    assert set(skipped) == {"nul.md", "latin1.md"}, skipped
    assert result["documents"] == len(HOSTILE_DOCS) - 2
    with psycopg.connect(pg_database) as conn:
        assert ("public", "canary") in _relations(conn)
        stored = {d for (d,) in conn.execute(sql.SQL("SELECT DISTINCT document FROM {}").format(
            sql.Identifier("order", "select"))).fetchall()}
    assert stored == set(HOSTILE_DOCS) - {"nul.md", "latin1.md"}
    hits = search(pg_database, "order", "select", "Robert dropped a table", k=1, model=minilm_path())
    assert hits[0].document == "x'); DROP TABLE canary; --.md"


def test_hostile_identifiers_past_validation_are_still_quoted(tmp_path: Path, pg_database: str, minilm: Any) -> None:
    """Defence in depth: even a schema and table that admission would refuse (quotes, semicolons,
    comments) and that skip the workload's own validation are composed with psycopg.sql."""
    from tunerag_workloads.index import parse_spec, run_index
    from tunerag_workloads.retrieval import search

    schema, table = 'sch"ema; DROP TABLE public.canary; --', "t'bl\"; DROP TABLE public.canary; --"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE canary (x int)")
    docs = write_docs(tmp_path / "docs")
    parsed = parse_spec(vectorindex_spec(uri=f"file://{docs}"))
    hostile = parsed.model_copy(update={"store": parsed.store.model_copy(update={"schema_": schema, "table": table})})

    result = run_index(hostile, db_uri=pg_database, model=minilm)
    assert result["documents"] == 2
    with psycopg.connect(pg_database) as conn:
        relations = _relations(conn)
    assert ("public", "canary") in relations
    assert (schema, table) in relations and (schema, f"{table}_v1") in relations
    assert search(pg_database, schema, table, "refund", k=1, model=minilm_path())[0].document == "returns.md"
