"""The thin layer that talks to the Kubernetes API for reconciles (kopf watches on its own).

Reads return plain dicts or None for "not found"; other API errors propagate, so kopf retries.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tunerag_operator.api.common import GROUP, VERSION


@functools.cache
def api_client() -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    configuration.connection_pool_maxsize = 32  # as many connections as handler threads (settings.WORKERS)
    return client.ApiClient(configuration)


def _get(call: Any, *args: Any) -> dict[str, Any] | None:
    if any(arg in ("", ".", "..") for arg in args):
        # Not a name but a path: GET .../secrets/. is the list (200) and .../secrets/.. the
        # Namespace, so a reference named "." would pass for an existing object.
        return None
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


def api_message(exc: ApiException) -> str:
    """The API server's own message in an error answer (its Status `message`), else the body."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.body or f"{exc.status} {exc.reason}")


class Refused(Exception):
    """The API server refused an object the operator rendered from a spec (422 Invalid, or 400 when
    it cannot even decode it): admission checks the spec as the pod would, so this is a policy of
    the cluster's own (a ValidatingAdmissionPolicy, a webhook) refusing the object."""


def create_if_absent(body: dict[str, Any]) -> bool:
    """Creates a ConfigMap or Job; False when one of that name already exists (idempotent).
    Raises Refused when the API server finds the object invalid or undecodable."""
    ns = body["metadata"]["namespace"]
    create = {
        "ConfigMap": client.CoreV1Api(api_client()).create_namespaced_config_map,
        "Job": client.BatchV1Api(api_client()).create_namespaced_job,
    }[body["kind"]]
    try:
        create(ns, body)
    except ApiException as exc:
        if exc.status == 409:
            return False
        if exc.status in (400, 422):
            raise Refused(api_message(exc)[:2000]) from None
        raise
    return True


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(client.BatchV1Api(api_client()).read_namespaced_job, name, namespace)


def delete_job(namespace: str, name: str) -> None:
    try:
        client.BatchV1Api(api_client()).delete_namespaced_job(name, namespace, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


def list_jobs(namespace: str, label_selector: str) -> list[dict[str, Any]]:
    resp = client.BatchV1Api(api_client()).list_namespaced_job(namespace, label_selector=label_selector, _preload_content=False)
    return json.loads(resp.data).get("items", [])  # type: ignore[no-any-return]


def job_pods(namespace: str, job_name: str) -> list[dict[str, Any]]:
    resp = client.CoreV1Api(api_client()).list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}", _preload_content=False
    )
    return json.loads(resp.data).get("items", [])  # type: ignore[no-any-return]


def pod_log_tail(namespace: str, pod: str, lines: int = 50) -> str:
    # Raw bytes: the generated client mangles log text into a bytes repr (kubernetes-client/python#2596).
    try:
        resp = client.CoreV1Api(api_client()).read_namespaced_pod_log(pod, namespace, tail_lines=lines, _preload_content=False)
    except ApiException:
        return ""
    return bytes(resp.data).decode(errors="replace")


def patch_status(namespace: str, plural: str, name: str, status: dict[str, Any]) -> None:
    client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, {"status": status}
    )


KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSIONS = {"inferenceservices": "v1beta1", "inferencegraphs": "v1alpha1"}


def get_kserve(namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    api = client.CustomObjectsApi(api_client())
    return _get(api.get_namespaced_custom_object, KSERVE_GROUP, KSERVE_VERSIONS[plural], namespace, plural, name)


def create_kserve(body: dict[str, Any]) -> None:
    """Creates an InferenceService or InferenceGraph; one that exists already is left alone."""
    plural = {"InferenceService": "inferenceservices", "InferenceGraph": "inferencegraphs"}[body["kind"]]
    try:
        client.CustomObjectsApi(api_client()).create_namespaced_custom_object(
            KSERVE_GROUP, KSERVE_VERSIONS[plural], body["metadata"]["namespace"], plural, body)
    except ApiException as exc:
        if exc.status != 409:
            raise


def json_patch_kserve(namespace: str, plural: str, name: str, ops: list[dict[str, Any]]) -> None:
    """Applies a JSON Patch (RFC 6902). The generated client sends custom-object patches as merge
    patches, so the request is made with the content type set by hand."""
    path = f"/apis/{KSERVE_GROUP}/{KSERVE_VERSIONS[plural]}/namespaces/{namespace}/{plural}/{name}"
    api_client().call_api(
        path, "PATCH", header_params={"Content-Type": "application/json-patch+json", "Accept": "application/json"},
        body=ops, auth_settings=["BearerToken"], _preload_content=False,
    )


def delete_kserve(namespace: str, plural: str, name: str) -> None:
    try:
        client.CustomObjectsApi(api_client()).delete_namespaced_custom_object(
            KSERVE_GROUP, KSERVE_VERSIONS[plural], namespace, plural, name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def list_custom(namespace: str, plural: str, label_selector: str) -> list[dict[str, Any]]:
    resp = client.CustomObjectsApi(api_client()).list_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, label_selector=label_selector, _preload_content=False)
    return json.loads(resp.data).get("items", [])  # type: ignore[no-any-return]


def create_custom(namespace: str, plural: str, body: dict[str, Any]) -> bool:
    """Creates a tunerag object; False when one of that name exists. Raises Refused when the API
    server finds it invalid."""
    try:
        client.CustomObjectsApi(api_client()).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    except ApiException as exc:
        if exc.status == 409:
            return False
        if exc.status in (400, 422):
            raise Refused(api_message(exc)[:2000]) from None
        raise
    return True


def delete_custom(namespace: str, plural: str, name: str) -> None:
    try:
        client.CustomObjectsApi(api_client()).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


def delete_configmap(namespace: str, name: str) -> None:
    try:
        client.CoreV1Api(api_client()).delete_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise


def secret_value(namespace: str, name: str, key: str) -> str | None:
    """A Secret's value, decoded; None when the Secret or key is missing. Never log it."""
    import base64

    secret = get_secret(namespace, name)
    if secret is None:
        return None
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode()
    value = (secret.get("stringData") or {}).get(key)
    return str(value) if value is not None else None
