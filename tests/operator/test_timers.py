"""A timer whose status write the API server refuses goes on, and says so on the object.

Before `owns_status`, kopf applied the timer's patch itself, outside any error handling: one
refused write (here, an A/B test's status without a required field) ended the policy's timer for
good, silently. These tests use a real API server and the CRDs, on a control plane of their own: the
session's operator would write the same statuses. The end-to-end A/B test in
tests/e2e/test_rollout.py is the scenario that stalled."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kubernetes import client, config

from substrate import kube
from substrate.controlplane import ControlPlane
from tunerag_operator import kubeapi
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import ROLLOUTPOLICY
from tunerag_operator.handlers.timers import owns_status


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
    with ControlPlane(tmp_path_factory.mktemp("timers"), bin_dir=Path(bin_dir) if bin_dir else None) as plane:
        kube.install_crds(config.new_client_from_config(str(plane.kubeconfig)), kube.crd_documents(include_kserve=False))
        yield plane


@pytest.fixture
def api(plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(str(plane.kubeconfig))


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
