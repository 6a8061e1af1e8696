"""Two operator replicas with kopf peering, as the chart runs them: one reconciles, the other stands
by, and takes over when the active one dies (SIGKILL: within the peering lifetime) or stops
(SIGTERM: at once). Then the API server is killed and restarted under a running operator: every
watch is cut, and the operator reconnects and goes on; and etcd is killed and restarted under a
running API server and operator: nothing stored is lost and the operator goes on. On its own control plane, so that the
session's operator (standalone, cluster-wide) is not a third reconciler, and a restart of this API
server disturbs no other test; kopf's peering CRDs come from the chart."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from chart.conftest import Helm, helm  # noqa: F401 - the session fixture `helm`
from security.conftest import vectorindex_spec
from substrate import kube
from substrate.controlplane import ControlPlane
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import GROUP, VERSION

LIFETIME = 15
TEAM = "team"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, helm: Helm) -> Iterator[ControlPlane]:  # noqa: F811
    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    with ControlPlane(tmp_path_factory.mktemp("peering"), bin_dir=Path(bin_dir) if bin_dir else None) as plane:
        admin = config.new_client_from_config(str(plane.kubeconfig))
        peering = [d for d in helm.render() if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == "kopf.dev"]
        assert {d["spec"]["names"]["kind"] for d in peering} == {"ClusterKopfPeering", "KopfPeering"}
        kube.install_crds(admin, [*kube.crd_documents(include_kserve=False), *peering])
        kube.create_namespace(admin, TEAM)
        yield plane


def _replica(plane: ControlPlane, tmp_path: Path, name: str) -> OperatorProcess:
    return OperatorProcess(plane.kubeconfig, tmp_path / f"{name}.log", extra_env={
        "TUNERAG_PEERING": "tunerag", "TUNERAG_PEERING_LIFETIME": str(LIFETIME), "POD_ID": name,
        "TUNERAG_RETRY_DELAY": "2"})


def _index(api: client.ApiClient, name: str) -> float:
    """Creates a VectorIndex whose Secret is missing; returns when it was created."""
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, TEAM, "vectorindexes", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VectorIndex", "metadata": {"name": name},
        "spec": vectorindex_spec(uri="file:///docs")})
    return time.monotonic()


def _without_bookkeeping(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != "kopf"}


def _reconciled(api: client.ApiClient, name: str, timeout: float) -> float:
    """Waits until some replica has reported on the VectorIndex; returns when."""
    def reported() -> bool:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, TEAM, "vectorindexes", name)
        return any(c["type"] == "Accepted" and c["reason"] == "SecretNotFound" for c in (obj.get("status") or {}).get("conditions") or [])

    wait_for(reported, timeout, f"VectorIndex {name} to be reconciled", interval=0.2)
    return time.monotonic()


def _resumed(replica: OperatorProcess, since: int = 0) -> bool:
    """kopf starts a peered replica paused and logs when it resumes (no live peer of higher priority)."""
    with replica.log_path.open("rb") as f:
        f.seek(since)
        return b"Resuming operations" in f.read()


def _handled(replica: OperatorProcess, name: str) -> bool:
    """Whether this replica has seen the VectorIndex: its phase gauge is set from the watch events
    a replica handles, so a paused (or dead) one has none."""
    try:
        with urllib.request.urlopen(replica.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return False
    return any(line.startswith("tunerag_resource_phase{") and f'name="{name}"' in line and f'namespace="{TEAM}"' in line
               for line in text.splitlines())


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_one_replica_reconciles_and_a_standby_takes_over(plane: ControlPlane, tmp_path: Path) -> None:
    api = config.new_client_from_config(str(plane.kubeconfig))
    a, b = _replica(plane, tmp_path, "replica-a"), _replica(plane, tmp_path, "replica-b")
    a.start()
    b.start()  # started later: a lower priority, so it stands by
    try:
        wait_for(lambda: set(client.CustomObjectsApi(api).get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", "tunerag").get("status") or {}) >= {"replica-a", "replica-b"},
            60, "both replicas in the peering object")
        # A replica starts paused and resumes only when no live peer has a higher priority.
        wait_for(lambda: _resumed(a), 30, "replica-a to be active")

        _index(api, "first")
        _reconciled(api, "first", 30)
        time.sleep(3)  # a standby that handled anything would have logged it by now
        assert _handled(a, "first") and not _handled(b, "first") and not _resumed(b)

        # The active replica dies: the standby takes over once its record is older than the lifetime.
        a.stop(signal.SIGKILL)
        killed = time.monotonic()
        created = _index(api, "second")
        crash_failover = _reconciled(api, "second", LIFETIME + 45) - killed
        assert _handled(b, "second") and not _handled(a, "second")
        assert crash_failover <= LIFETIME + 15, f"failover after a crash took {crash_failover:.1f}s (lifetime {LIFETIME}s)"

        # Started again, the old active is now the newest replica: it stands by. A graceful stop of
        # the active one (SIGTERM: a rolling update) removes its record, so the handover is at once.
        restarted_at = a.log_path.stat().st_size
        a.start()
        wait_for(lambda: "replica-a" in (client.CustomObjectsApi(api).get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", "tunerag").get("status") or {}), 30, "replica-a back in the peering object")
        time.sleep(2)
        assert not _resumed(a, since=restarted_at), "the restarted replica took over from the active one"
        b.stop(signal.SIGTERM)
        stopped = time.monotonic()
        _index(api, "third")
        graceful_failover = _reconciled(api, "third", LIFETIME + 45) - stopped
        assert _handled(a, "third") and graceful_failover < LIFETIME, f"handover after a graceful stop took {graceful_failover:.1f}s"
        print(f"failover: {crash_failover:.1f}s after SIGKILL (lifetime {LIFETIME}s, created {created - killed:.1f}s after the kill), "
              f"{graceful_failover:.1f}s after SIGTERM")
    finally:
        a.stop()
        b.stop()


# What is killed and restarted (SIGKILL, down 5 s): the API server (every watch and request is
# cut; kopf re-opens its watches with back-off, settings.batching.error_delays, at most 30 s), or
# etcd under a running API server (which answers errors meanwhile and reconnects by itself).
RESTARTS = {"apiserver": ControlPlane.restart_apiserver, "etcd": ControlPlane.restart_etcd}


@pytest.mark.cluster
@pytest.mark.timeout(600)
@pytest.mark.parametrize("component", sorted(RESTARTS))
def test_the_operator_goes_on_after_a_control_plane_restart(plane: ControlPlane, tmp_path: Path, component: str) -> None:
    api = config.new_client_from_config(str(plane.kubeconfig))
    replica = _replica(plane, tmp_path, f"replica-{component}")
    replica.start()
    try:
        _index(api, f"before-{component}")
        _reconciled(api, f"before-{component}", 60)
        before = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, TEAM, "vectorindexes", f"before-{component}")
        RESTARTS[component](plane, down=5)
        restarted = time.monotonic()
        api = config.new_client_from_config(str(plane.kubeconfig))
        _index(api, f"after-{component}")
        reconnect = _reconciled(api, f"after-{component}", 180) - restarted
        assert replica.proc is not None and replica.proc.poll() is None, replica.tail()
        after = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, TEAM, "vectorindexes", f"before-{component}")
        # Nothing lost: the same object with the same status; kopf's own retry bookkeeping
        # (status.kopf: when the waiting reconcile is next due) moves on meanwhile, as it should.
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert _without_bookkeeping(after["status"]) == _without_bookkeeping(before["status"])
        assert reconnect <= 60, f"reconciled {reconnect:.1f}s after {component} came back"
        print(f"reconciled {reconnect:.1f}s after {component} came back (down 5 s)")
    finally:
        replica.stop()
