"""The thin layer that talks to the Kubernetes API for reconciles (kopf watches on its own).

Reads return plain dicts or None for "not found"; other API errors propagate, so kopf retries.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tunerag_operator.api.common import GROUP, VERSION


@functools.cache
def api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def _get(call: Any, *args: Any) -> dict[str, Any] | None:
    try:
        resp = call(*args, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return json.loads(resp.data)  # type: ignore[no-any-return]


def get_secret(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(client.CoreV1Api(api_client()).read_namespaced_secret, name, namespace)


def get_configmap(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(client.CoreV1Api(api_client()).read_namespaced_config_map, name, namespace)


def get_pvc(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(client.CoreV1Api(api_client()).read_namespaced_persistent_volume_claim, name, namespace)


def get_custom(namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    api = client.CustomObjectsApi(api_client())
    return _get(api.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)
