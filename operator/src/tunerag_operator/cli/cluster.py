"""The plugin's connection to the API server, chosen as kubectl chooses it, and the few calls it
makes. Objects are plain dicts as the API server sends them (camelCase)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tunerag_operator.api.common import GROUP, VERSION

Obj = dict[str, Any]
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MERGE_PATCH = "application/merge-patch+json"


class CliError(Exception):
    """An error worth one line on stderr and exit status 1."""


def api_error(exc: ApiException) -> CliError:
    """kubectl's wording: `Error from server (NotFound): rolloutpolicies.tunerag.dev "x" not found`."""
    try:
        body = json.loads(exc.body)
        return CliError(f"Error from server ({body.get('reason') or exc.reason}): {body.get('message', exc.body)}")
    except (TypeError, ValueError):
        return CliError(f"Error from server ({exc.reason}): {exc.body or exc.status}")


class Cluster:
    """An API client and the namespace commands act in when no -n is given."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None) -> None:
        self.api, default_ns = _connect(kubeconfig, context)
        self.namespace = namespace or default_ns

    def _json(self, call: Any, *args: Any, **kwargs: Any) -> Obj:
        try:
            resp = call(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise api_error(exc) from exc
        return json.loads(resp.data)  # type: ignore[no-any-return]

    def items(self, plural: str, all_namespaces: bool = False) -> list[Obj]:
        api = client.CustomObjectsApi(self.api)
        if all_namespaces:
            return self._json(api.list_cluster_custom_object, GROUP, VERSION, plural).get("items", [])  # type: ignore[no-any-return]
        return self._json(api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, plural).get("items", [])  # type: ignore[no-any-return]

    def get(self, plural: str, name: str) -> Obj:
        return self._json(client.CustomObjectsApi(self.api).get_namespaced_custom_object, GROUP, VERSION, self.namespace, plural, name)

    def merge_patch(self, plural: str, name: str, body: Obj) -> Obj:
        return self._json(client.CustomObjectsApi(self.api).patch_namespaced_custom_object,
                          GROUP, VERSION, self.namespace, plural, name, body, _content_type=MERGE_PATCH)

    def events(self, obj: Obj) -> list[Obj]:
        """Events about `obj` (this object, not an earlier one of the same name), oldest first."""
        meta = obj["metadata"]
        selector = f"involvedObject.kind={obj['kind']},involvedObject.name={meta['name']}"
        if meta.get("uid"):
            selector += f",involvedObject.uid={meta['uid']}"
        items: list[Obj] = self._json(client.CoreV1Api(self.api).list_namespaced_event, meta["namespace"],
                                      field_selector=selector).get("items", [])
        return sorted(items, key=event_time)

    def job(self, name: str) -> Obj | None:
        """The Job, or None where it is gone."""
        try:
            resp = client.BatchV1Api(self.api).read_namespaced_job(name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise api_error(exc) from exc
        return json.loads(resp.data)  # type: ignore[no-any-return]

    def job_pods(self, job: str) -> list[Obj]:
        return self._json(client.CoreV1Api(self.api).list_namespaced_pod, self.namespace,  # type: ignore[no-any-return]
                          label_selector=f"batch.kubernetes.io/job-name={job}").get("items", [])

    def log(self, pod: str, container: str | None, follow: bool, tail: int | None) -> Iterator[bytes]:
        """The container's log as raw bytes (the generated client garbles text responses,
        kubernetes-client/python#2596); with `follow`, until the container exits."""
        kwargs: Obj = {"follow": follow}
        if container:
            kwargs["container"] = container
        if tail is not None and tail >= 0:
            kwargs["tail_lines"] = tail
        try:
            resp = client.CoreV1Api(self.api).read_namespaced_pod_log(pod, self.namespace, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise api_error(exc) from exc
        try:
            yield from resp.stream(4096, decode_content=False) if follow else [bytes(resp.data)]
        finally:
            resp.release_conn()


def event_time(event: Obj) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event["metadata"].get("creationTimestamp") or "")


def _connect(kubeconfig: str | None, context: str | None) -> tuple[client.ApiClient, str]:
    """kubectl's order: --kubeconfig, else $KUBECONFIG, else ~/.kube/config; in a pod without any
    of them, the pod's ServiceAccount. The namespace is the context's, else `default`."""
    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    in_pod = not kubeconfig and not os.environ.get("KUBECONFIG") and not Path(path).exists() and _SA_NAMESPACE.exists()
    if in_pod:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration), _SA_NAMESPACE.read_text().strip() or "default"
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else active
        if chosen is None:
            raise CliError(f'error: context "{context}" does not exist')
        api = config.new_client_from_config(config_file=path, context=chosen["name"])
    except config.ConfigException as exc:
        raise CliError(f"error: {exc}") from exc
    return api, chosen.get("context", {}).get("namespace") or "default"
