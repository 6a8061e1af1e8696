"""A timer whose status write the API server refuses goes on, and says so on the object.

Before `owns_status`, kopf applied the timer's patch itself, outside any error handling: one
refused write (here, an A/B test's status without a required field) ended the policy's timer for
good, silently. These tests use a real API server and the CRDs, on a control plane of their own: the
session's operator would write the same statuses. The end-to-end A/B test in
tests/e2e/test_rollout.py is the scenario that stalled.

And an idle operator makes no writes: with one resource of each kind waiting (runs that never
start, a policy with no version, a schedule whose policy is missing), every timer keeps ticking
and the API server's audit log shows the operator writing nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kubernetes import client, config

from benchmarks.operator_load import KINDS, SPECS
from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.operatorproc import OperatorProcess
from tunerag_operator import kubeapi
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import ROLLOUTPOLICY
from tunerag_operator.handlers.timers import owns_status

TEST_AGENT = "tunerag-test"
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def _policy(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, ROLLOUTPOLICY.plural, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "RolloutPolicy", "metadata": {"name": "qa"},
            "spec": {"target": {"inferenceService": "qa", "baseModel": "file:///models/base"},
                     "adapterSelector": {"family": "qa"}}})


def _status(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, ROLLOUTPOLICY.plural, "qa")
    return obj.get("status") or {}  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    # An audit log of everyone's requests but the API server's own (the operator's are told apart
    # from the test's by the User-Agent).
    with ControlPlane(tmp_path_factory.mktemp("timers"), bin_dir=Path(bin_dir) if bin_dir else None,
                      audit_rules=[{"level": "None", "users": ["system:apiserver"]}, {"level": "Metadata"}]) as plane:
        kube.install_crds(config.new_client_from_config(str(plane.kubeconfig)), kube.crd_documents(include_kserve=False))
        yield plane


@pytest.fixture
def api(plane: ControlPlane) -> client.ApiClient:
    api = config.new_client_from_config(str(plane.kubeconfig))
    api.user_agent = TEST_AGENT
    return api


@pytest.fixture
def namespace(api: client.ApiClient) -> str:
    name = f"t-timers-{uuid.uuid4().hex[:5]}"
    kube.create_namespace(api, name)
    return name


@pytest.fixture
def as_operator(api: client.ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubeapi, "api_client", lambda: api)


def test_a_refused_status_write_is_reported_and_does_not_end_the_timer(
    as_operator: None, api: client.ApiClient, namespace: str
) -> None:
    body = kopf.Body(_policy(api, namespace))
    ticks: list[str] = []

    @owns_status(ROLLOUTPOLICY)
    def tick(body: kopf.Body, patch: kopf.Patch, write: dict[str, Any], **_: Any) -> None:
        ticks.append("tick")
        for key, value in write.items():
            patch.status[key] = value

    # The schema refuses this status (an unknown decision): nothing of it lands, nothing is raised.
    tick(body=body, patch=kopf.Patch(), write={"phase": "Progressing", "abTest": {"decision": "Bogus"}})
    status = _status(api, namespace)
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "False" and ready["reason"] == "StatusRejected", ready
    assert "abTest.decision" in ready["message"] and "report it" in ready["message"], ready
    assert "phase" not in status

    # The next tick writes a valid status; a NaN (which JSON cannot carry) drops its key.
    tick(body=kopf.Body({**body, "status": status}), patch=kopf.Patch(),
         write={"phase": "Progressing", "abTest": {"decision": "Running", "rates": {"stable": 0.5, "candidate": float("nan")}}})
    status = _status(api, namespace)
    assert ticks == ["tick", "tick"]
    assert status["phase"] == "Progressing" and status["abTest"]["rates"] == {"stable": 0.5}


def test_a_status_write_for_an_object_gone_is_dropped(as_operator: None, api: client.ApiClient, namespace: str) -> None:
    body = kopf.Body(_policy(api, namespace))
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, ROLLOUTPOLICY.plural, "qa")

    @owns_status(ROLLOUTPOLICY)
    def tick(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Idle"

    tick(body=body, patch=kopf.Patch())  # no exception, nothing recreated
    assert not client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, ROLLOUTPOLICY.plural)["items"]


def _operator_requests(audit_log: Path, since: float, until: float, verbs: Iterable[str] = WRITES,
                       resource: str | None = None) -> list[str]:
    """The operator's requests in [since, until) with one of `verbs` (on `resource`, if named)."""
    writes = []
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        at = dt.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        if (event.get("userAgent", "").startswith(TEST_AGENT) or event["user"]["username"].startswith("system:")
                or event["verb"] not in verbs or not since <= at < until):
            continue
        ref = event.get("objectRef") or {}
        if resource is not None and ref.get("resource") != resource:
            continue
        writes.append(f"{event['verb']} {ref.get('resource')}/{ref.get('subresource', '')} {ref.get('name')}")
    return writes


def test_an_idle_operator_makes_no_writes_and_reads_no_pods(plane: ControlPlane, api: client.ApiClient, namespace: str, tmp_path: Path) -> None:
    client.CoreV1Api(api).create_namespaced_secret(namespace, {"metadata": {"name": "db"}, "stringData": {"uri": "postgresql://x"}})
    operator = OperatorProcess(plane.kubeconfig, tmp_path / "operator.log", extra_env={
        "TUNERAG_PROGRESS_INTERVAL": "1", "TUNERAG_ROLLOUT_TICK": "1", "TUNERAG_ROLLOUT_RESYNC": "3",
        "TUNERAG_SCHEDULE_TICK": "1", "TUNERAG_SCHEDULE_RECHECK": "3"})
    operator.start()
    try:
        custom = client.CustomObjectsApi(api)
        for plural, spec in SPECS.items():
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": KINDS[plural], "metadata": {"name": f"{plural[:3]}-1"}, "spec": spec})

        def all_statused() -> bool:
            return all(item.get("status", {}).get("observedGeneration")
                       for plural in SPECS for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"])

        kube.wait_for(all_statused, 60, "a status on every resource")
        time.sleep(8)  # first passes done: Jobs created, conditions written
        since = time.time()
        time.sleep(12)  # four re-syncs of the policy and re-checks of the schedule, a dozen progress ticks
        until = time.time()
        writes = _operator_requests(plane.audit_log, since, until)
        # No pod runs (no Job harness here): nothing to read progress from, so no pod is listed.
        pod_reads = _operator_requests(plane.audit_log, since, until, ("get", "list"), "pods")
        assert operator.proc is not None and operator.proc.poll() is None, operator.tail()
    finally:
        operator.stop()
    assert writes == [], f"an idle operator wrote {len(writes)} times: {writes[:10]}"
    assert pod_reads == [], f"an idle operator read pods {len(pod_reads)} times: {pod_reads[:10]}"


def test_a_settled_policy_picks_up_a_new_version_at_its_next_tick_not_at_resync(
    plane: ControlPlane, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """A policy with nothing to roll out makes no API calls between resyncs (10 minutes here); a
    Validated AdapterVersion of its family registered meanwhile is still acted on within seconds,
    because the operator watches AdapterVersions and wakes that family's policies."""
    operator = OperatorProcess(plane.kubeconfig, tmp_path / "operator.log", extra_env={
        "TUNERAG_ROLLOUT_TICK": "1", "TUNERAG_ROLLOUT_RESYNC": "600"})
    operator.start()
    try:
        _policy(api, namespace)
        waiting = kube.wait_for(lambda: (s := _status(api, namespace)).get("observedGeneration") and any(
            c["reason"] == "NoCandidate" for c in s.get("conditions") or []) and s, 60, "the policy waiting for a version")
        time.sleep(4)  # settled: a few ticks with no pass
        assert _status(api, namespace)["lastSync"] == waiting["lastSync"]
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "AdapterVersion", "metadata": {"name": "qa-v1"},
            "spec": {"family": "qa", "version": 1, "baseModel": {"uri": "file:///models/base"},
                     "artifact": {"uri": "file:///artifacts/qa/1", "sha256": "a" * 64},
                     "gates": [{"name": "minExactMatch", "value": 0.9, "threshold": 0.5, "passed": True}]}})
        moved = kube.wait_for(lambda: (s := _status(api, namespace)).get("lastSync") != waiting["lastSync"] and s,
                              20, "the policy to act on qa-v1")  # not the 600 s resync
        assert operator.proc is not None and operator.proc.poll() is None, operator.tail()
    finally:
        operator.stop()
    ready = next(c for c in moved["conditions"] if c["type"] == "Ready")
    assert ready["reason"] != "NoCandidate" and "qa-v1" in json.dumps(moved), moved
