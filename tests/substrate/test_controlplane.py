"""The control plane's switches: RBAC authorization and PodSecurity admission, for real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from substrate.controlplane import ControlPlane


@pytest.fixture(scope="module")
def rbac_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    import os

    bin_dir = os.environ.get("TUNERAG_CONTROLPLANE_BIN")
    with ControlPlane(tmp_path_factory.mktemp("rbac"), rbac=True, bin_dir=Path(bin_dir) if bin_dir else None) as cp:
        yield cp


def test_rbac_mode_enforces_a_service_accounts_permissions(rbac_plane: ControlPlane, tmp_path: Path) -> None:
    admin = config.new_client_from_config(str(rbac_plane.kubeconfig))
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_service_account("team", {"metadata": {"name": "bot"}})
    token = core.create_namespaced_service_account_token("bot", "team", {"spec": {"expirationSeconds": 600}}).status.token
    bot = client.CoreV1Api(config.new_client_from_config(str(rbac_plane.token_kubeconfig(token, tmp_path / "bot"))))

    with pytest.raises(ApiException) as denied:
        bot.list_namespaced_config_map("team")
    assert denied.value.status == 403

    rbac.create_namespaced_role("team", {"metadata": {"name": "read-cm"},
                                         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]})
    rbac.create_namespaced_role_binding("team", {
        "metadata": {"name": "bot-read-cm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
        "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": "team"}],
    })
    assert bot.list_namespaced_config_map("team").items is not None
    with pytest.raises(ApiException) as still_denied:
        bot.list_namespaced_secret("team")
    assert still_denied.value.status == 403


def test_pod_security_admission_is_on_by_default(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    privileged = {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "image": "x", "securityContext": {"privileged": True}}]}}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, privileged, dry_run="All")
    assert refused.value.status == 403 and "restricted" in refused.value.body
