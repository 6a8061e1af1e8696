"""The adapter registry: AdapterVersions allocated without races, idempotently.

A version number is claimed by creating the AdapterVersion named `<family>-v<N>`: the API server
accepts exactly one create per name, so two FineTuneJobs finishing together get distinct numbers
(the loser of a 409 tries N+1). A FineTuneJob's registration is found again by the label carrying
its uid, so a reconcile that runs twice (or after a crash between create and status write)
returns the same AdapterVersion instead of allocating another.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tunerag_operator import kubeapi
from tunerag_operator.api.common import API_VERSION, GROUP, VERSION

FAMILY = f"{GROUP}/family"
JOB_NAME = f"{GROUP}/fine-tune-job"
JOB_UID = f"{GROUP}/fine-tune-job-uid"
MAX_ATTEMPTS = 50


def size_ratio(size: Any, reference: Any) -> float | None:
    """A quantized model's size over the same merged model's in 16 bit (below 1: smaller), rounded to
    4 places, when both are known."""
    if isinstance(size, int) and isinstance(reference, int) and reference > 0:
        return round(size / reference, 4)
    return None


def _list(namespace: str, selector: str) -> list[dict[str, Any]]:
    api = client.CustomObjectsApi(kubeapi.api_client())
    resp = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions",
                                             label_selector=selector, _preload_content=False)
    return json.loads(resp.data).get("items", [])  # type: ignore[no-any-return]


def find_for_job(namespace: str, job_uid: str) -> dict[str, Any] | None:
    items = _list(namespace, f"{JOB_UID}={job_uid}")
    return items[0] if items else None


def next_version(namespace: str, family: str) -> int:
    return 1 + max((int(i["spec"]["version"]) for i in _list(namespace, f"{FAMILY}={family}")), default=0)


def register(namespace: str, family: str, job_name: str, job_uid: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Creates (or finds) the AdapterVersion for a FineTuneJob; `spec` lacks family and version."""
    if existing := find_for_job(namespace, job_uid):
        return existing
    api = client.CustomObjectsApi(kubeapi.api_client())
    version = next_version(namespace, family)
    for _ in range(MAX_ATTEMPTS):
        body = {
            "apiVersion": API_VERSION, "kind": "AdapterVersion",
            "metadata": {"name": f"{family}-v{version}", "namespace": namespace,
                         "labels": {FAMILY: family, JOB_NAME: job_name, JOB_UID: job_uid}},
            "spec": {**spec, "family": family, "version": version},
        }
        try:
            return api.create_namespaced_custom_object(GROUP, VERSION, namespace, "adapterversions", body)  # type: ignore[no-any-return]
        except ApiException as exc:
            if exc.status != 409:
                raise
            version += 1
    raise RuntimeError(f"could not allocate a version of {family} after {MAX_ATTEMPTS} attempts")
