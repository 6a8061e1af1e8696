"""Property-based tests (hypothesis) over the four spec models and what the operator renders.

Specs are drawn from the generated CRD schemas (so most are close to valid) with hostile strings
(unicode, control characters, shell and SQL text) and, at any node, arbitrary JSON. Properties:

- a model either accepts a value or raises pydantic's ValidationError, never anything else, and
  what it accepts survives a round trip through its JSON form;
- an accepted VectorIndex or FineTuneJob spec whose references resolve renders a ConfigMap and a
  Job whose names are DNS subdomains of at most 63 characters (the Job name is also a label
  value), whose command runs no shell and carries no spec text, whose environment and volumes
  hold no secret value, and whose pod keeps the restricted security settings;
- the real API server accepts the rendered objects (server-side dry run): admission refuses
  whatever the Job's own validation would (pod placement included), so a spec that is admitted
  never fails later for its form.

Example counts are kept modest (CI runs on 2 cores).
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from substrate import kube
from tunerag_operator import kubeapi
from tunerag_operator.api.common import DNS_SUBDOMAIN, GROUP, VERSION
from tunerag_operator.api.kinds import ALL_KINDS, FINETUNEJOB, VECTORINDEX
from tunerag_operator.handlers import finetunejob, vectorindex
from tunerag_operator.render.workload import PVC_ROOT, SOURCE_DIR, SPEC_DIR, Owner, WorkloadRun, config_map, job

SCHEMAS = {d["spec"]["names"]["kind"]: d["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
           for d in kube.crd_documents(include_kserve=False)}
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
SECRET_VALUE = f"postgresql://u:never-{uuid.uuid4().hex}@db:5432/x"
IMAGE = "ghcr.io/tunerag/workloads:test"

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
HOSTILE_TEXT = st.one_of(
    st.text(max_size=24),
    st.sampled_from([
        "", " ", "..", "../..", "/", "\x00", "\x1b[2J", "$(id)", "`id`", "; rm -rf /", "' OR 1=1; --",
        'x"; DROP TABLE t; --', "\u202e", "\U0001f512", "a" * 300, "pvc:///etc", "pvc://./x", "file:///proc/self/environ",
        "Bad Name", "UPPER", "a.b", "-a", "a-",
    ]),
)


def from_schema(schema: dict[str, Any], wild: bool = True) -> st.SearchStrategy[Any]:
    """Values for a structural schema. `wild`: patterns honoured only some of the time, bounds
    overstepped, one node in ten replaced by arbitrary JSON. Not wild: every pattern, bound and
    enum honoured, so most values are accepted, with hostile text wherever no pattern guards a
    string."""
    kind = schema.get("type")
    if "enum" in schema:
        base: st.SearchStrategy[Any] = st.sampled_from(schema["enum"])
    elif kind == "object" and "properties" in schema:
        props, required = schema["properties"], set(schema.get("required", []))
        base = st.fixed_dictionaries(
            {k: from_schema(v, wild) for k, v in props.items() if k in required},
            optional={k: from_schema(v, wild) for k, v in props.items() if k not in required},
        )
    elif kind == "object":
        values = from_schema(schema.get("additionalProperties") or {"type": "string"}, wild)
        base = st.dictionaries(st.from_regex(r"[a-z][a-z0-9./-]{0,20}", fullmatch=True) | HOSTILE_TEXT, values, max_size=3)
    elif kind == "string":
        longest = schema.get("maxLength", 10**6)
        patterned = [st.from_regex(schema["pattern"], fullmatch=True)] if "pattern" in schema else []
        choices = [*patterned, HOSTILE_TEXT] if wild or not patterned else patterned
        base = st.one_of(*choices).filter(lambda s: wild or len(s) <= longest)
    elif kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        base = (st.integers(lo - 1 if lo is not None else None, hi + 1 if hi is not None else None) | st.integers()
                if wild else st.integers(lo, hi))
    elif kind == "number":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        base = (st.floats(lo, hi) | st.floats() if wild else
                st.floats(lo, hi, exclude_min=bool(schema.get("exclusiveMinimum")), allow_nan=False, allow_infinity=False))
    elif kind == "boolean":
        base = st.booleans()
    elif kind == "array":
        items, most = from_schema(schema.get("items") or {}, wild), schema.get("maxItems", 3)
        base = st.lists(items, max_size=min(most + 1, 4)) if wild else st.lists(items, min_size=schema.get("minItems", 0),
                                                                                 max_size=min(most, 3))
    else:
        return JSON
    return st.integers(0, 9).flatmap(lambda i: base if i else JSON) if wild else base


SPECS = {kind: from_schema(schema) for kind, schema in SCHEMAS.items()}
VALID_SPECS = {kind: from_schema(schema, wild=False) for kind, schema in SCHEMAS.items()}
OWNER_NAMES = st.from_regex(DNS_SUBDOMAIN, fullmatch=True).filter(lambda n: len(n) <= 52)  # the CRDs' CEL limit
FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


# --------------------------------------------------------------------------------------------
# The models: ValidationError or a value that round-trips.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
@FAST
@given(data=st.data())
def test_a_model_accepts_or_raises_validation_error(kind: Any, data: st.DataObject) -> None:
    value = data.draw(SPECS[kind.kind] | VALID_SPECS[kind.kind] | JSON, label="spec")
    try:
        spec = kind.spec.model_validate(value)
    except ValidationError:
        return
    dumped = spec.model_dump(mode="json", exclude_none=True)
    assert kind.spec.model_validate(dumped) == spec
    json.dumps(dumped, allow_nan=True)


# --------------------------------------------------------------------------------------------
# Rendering: names, command, environment, volumes, pod security.
# --------------------------------------------------------------------------------------------
class _Cluster:
    """Every referenced object exists, and every Secret holds SECRET_VALUE under every key (so a
    render that copied secret data anywhere would show it)."""

    @staticmethod
    def get_secret(namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "data": _AnyKey(any=SECRET_VALUE)}

    @staticmethod
    def get_object(namespace: str, name: str, *_: Any) -> dict[str, Any]:
        return {"metadata": {"name": name}}


class _AnyKey(dict[str, str]):
    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return SECRET_VALUE


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubeapi, "get_secret", _Cluster.get_secret)
    monkeypatch.setattr(kubeapi, "get_configmap", _Cluster.get_object)
    monkeypatch.setattr(kubeapi, "get_pvc", _Cluster.get_object)


def _runs(kind: str, value: Any, owner: Owner, refresh: int, drop: int) -> list[WorkloadRun]:
    """The runs the operator would start for an accepted spec whose references resolve."""
    if kind == "VectorIndex":
        spec = VECTORINDEX.spec.model_validate(value)
        assume(not vectorindex.check(spec, owner.namespace))  # type: ignore[arg-type]
        return [vectorindex.workload_run(spec, owner, IMAGE), vectorindex.workload_run(spec, owner, IMAGE, refresh=refresh),  # type: ignore[arg-type]
                vectorindex.workload_run(spec, owner, IMAGE, drop_attempt=drop)]  # type: ignore[arg-type]
    spec = FINETUNEJOB.spec.model_validate(value)
    assume(not finetunejob.check(spec, owner.namespace))  # type: ignore[arg-type]
    return [finetunejob.workload_run(spec, owner, IMAGE)]  # type: ignore[arg-type]


def _model_accepts(kind: str, value: Any) -> str | None:
    """None when the operator's model accepts `value`, else why not."""
    try:
        (VECTORINDEX if kind == "VectorIndex" else FINETUNEJOB).spec.model_validate(value)
    except ValidationError as exc:
        return str(exc)
    return None


def _draw_runs(data: st.DataObject, kind: str, value: Any = None, name: str | None = None) -> list[WorkloadRun]:
    if value is None:
        value = data.draw(VALID_SPECS[kind], label="spec")
        assume(_model_accepts(kind, value) is None)
    owner = Owner(kind, name or data.draw(OWNER_NAMES, label="name"), "team-a", str(uuid.uuid4()),
                  data.draw(st.integers(1, 10**6), label="generation"))
    return _runs(kind, value, owner, data.draw(st.integers(1, 10**7), label="refresh"), data.draw(st.integers(1, 3)))


def _assert_safe(run: WorkloadRun, cm: dict[str, Any], jb: dict[str, Any]) -> None:
    name = jb["metadata"]["name"]
    assert cm["metadata"]["name"] == name
    assert len(name) <= 63 and re.fullmatch(DNS_SUBDOMAIN, name), name
    for labels in (jb["metadata"]["labels"], jb["spec"]["template"]["metadata"]["labels"], cm["metadata"]["labels"]):
        assert all(len(v) <= 63 and LABEL_VALUE.fullmatch(v) for v in labels.values()), labels

    pod = jb["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # No shell, no spec text: the spec reaches the workload only as the mounted JSON file.
    assert container["command"] == ["python", "-m", run.module, f"{SPEC_DIR}/spec.json"]
    assert run.module in ("tunerag_workloads.index", "tunerag_workloads.index.drop", "tunerag_workloads.finetune")
    assert "args" not in container and "workingDir" not in container

    fixed = {"TUNERAG_SPEC": f"{SPEC_DIR}/spec.json", "TUNERAG_PVC_ROOT": PVC_ROOT, "TUNERAG_RESULT_PATH": "/dev/termination-log",
             "HOME": "/tmp", "HF_HOME": "/tmp/huggingface", "TUNERAG_SOURCE_DIR": SOURCE_DIR,
             "TUNERAG_RUN_ID": f"{run.owner.namespace}-{name}"}
    for var in container["env"]:
        if "valueFrom" in var:  # a Secret is referenced by name and key, never copied
            assert var["name"] == "TUNERAG_DB_URI" and set(var["valueFrom"]) == {"secretKeyRef"}, var
            assert "value" not in var
        else:
            assert fixed[var["name"]] == var["value"], var
            assert "$(" not in var["value"]
    for source in container.get("envFrom", []):
        assert set(source) == {"secretRef"} and source["secretRef"]["name"] == run.env_from_secret

    claims = set()
    for volume in pod["volumes"]:
        kind = set(volume) - {"name"}
        assert kind <= {"configMap", "emptyDir", "persistentVolumeClaim"}, volume
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert re.fullmatch(DNS_SUBDOMAIN, claim), claim
            claims.add(claim)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {f"{PVC_ROOT}/{c}" for c in claims} <= mounts and all(m.startswith(("/etc/tunerag", "/tmp", PVC_ROOT)) for m in mounts)

    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert set(pod) <= {"restartPolicy", "automountServiceAccountToken", "enableServiceLinks", "securityContext",
                        "containers", "volumes", "nodeSelector", "tolerations", "priorityClassName"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}

    request = json.loads(cm["data"]["spec.json"])
    assert set(request) == {"kind", "namespace", "name", "generation", "spec"} and request["spec"] == run.spec
    rendered = json.dumps([cm, jb])
    assert SECRET_VALUE not in rendered and "never-" not in rendered


@pytest.mark.parametrize("kind", ["VectorIndex", "FineTuneJob"])
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_accepted_specs_render_safe_jobs(cluster: None, kind: str, data: st.DataObject) -> None:
    for run in _draw_runs(data, kind):
        _assert_safe(run, config_map(run), job(run))


@pytest.mark.parametrize(("name", "generation", "refresh"), [
    ("a" * 52, 1, 1), ("a" * 52, 10**8, 1), ("a" * 52, 100, 10_000), ("a" * 52, 10**6, 10**7), ("a.b" * 17, 7, 10**5),
])
def test_run_names_fit_63_characters_whatever_the_counters(name: str, generation: int, refresh: int) -> None:
    """A 52-character name (the CEL limit) with a long-lived index: generation and refresh counters
    only grow, and the Job name is also the value of the job-name label (at most 63)."""
    owner = Owner("VectorIndex", name, "team-a", "uid", generation)
    spec = VECTORINDEX.spec.model_validate({"source": {"uri": "file:///d"}, "store": {
        "connectionSecret": {"name": "db", "key": "uri"}, "table": "t"}})
    names = {run_name for run_name in (
        job(vectorindex.workload_run(spec, owner, IMAGE))["metadata"]["name"],
        job(vectorindex.workload_run(spec, owner, IMAGE, refresh=refresh))["metadata"]["name"],
        job(vectorindex.workload_run(spec, owner, IMAGE, refresh=refresh + 1))["metadata"]["name"],
    )}
    assert len(names) == 3  # distinct runs keep distinct names
    assert all(len(n) <= 63 and re.fullmatch(DNS_SUBDOMAIN, n) for n in names), names


# --------------------------------------------------------------------------------------------
# The real API server accepts what is rendered.
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dry_run_namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"t-properties-{uuid.uuid4().hex[:5]}"
    kube.create_namespace(api, name)
    yield name
    kube.delete_namespace(api, name)


@pytest.mark.cluster
@pytest.mark.parametrize("kind", ["VectorIndex", "FineTuneJob"])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_api_server_accepts_what_is_rendered(
    cluster: None, api: client.ApiClient, dry_run_namespace: str, kind: str, data: st.DataObject
) -> None:
    """What admission (the CRD's schema and CEL rules) admits, the operator's model accepts, and
    the Job rendered from it is one the API server creates: an admitted spec never fails later
    for its form. (The model may accept more than admission: CEL rules need not be repeated.)"""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    value = data.draw(VALID_SPECS[kind], label="spec")
    name = data.draw(OWNER_NAMES, label="name")  # admission sees the name too (CEL rules on the whole object)
    kind_def = VECTORINDEX if kind == "VectorIndex" else FINETUNEJOB
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, dry_run_namespace, kind_def.plural,
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": value}, dry_run="All")
        admission = None
    except ApiException as exc:
        assert exc.status == 422, exc.body
        admission = json.loads(exc.body)["message"]
    assume(admission is None)
    refused = _model_accepts(kind, value)
    assert refused is None, f"admitted, yet the operator's model refuses it: {refused}"
    for run in _draw_runs(data, kind, value, name):
        run = dataclasses.replace(run, owner=dataclasses.replace(run.owner, namespace=dry_run_namespace))
        cm, jb = config_map(run), job(run)
        for obj in (cm, jb):
            obj["metadata"].pop("ownerReferences")  # the owner does not exist in this namespace
        core.create_namespaced_config_map(dry_run_namespace, cm, dry_run="All")
        try:
            batch.create_namespaced_job(dry_run_namespace, jb, dry_run="All")
        except ApiException as exc:  # what admission accepts, the Job's own validation must accept too
            pytest.fail(f"the API server refused the Job rendered from an admitted spec: {exc.status} {exc.body}")
