"""The Prometheus a RolloutPolicy names is queried from the operator's pod, so the address is an
SSRF surface: a link-local address (cloud metadata) is always refused, an operator allow-list
bounds the rest, redirects are not followed, and no answer body is quoted into a status.

The session's operator runs with the allow-list `http://127.0.0.1` (tests/conftest.py), so every
end-to-end rollout also goes through the check."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from security.conftest import PLURAL, create, wait_condition
from substrate.kube import wait_for
from substrate.operatorproc import OperatorProcess
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.rollout.prometheus import QUOTED, address_problem, query

ALLOW = ("http://127.0.0.1", "https://prom.example:9443/tenant-a")


@pytest.mark.parametrize(("address", "allowed", "refused_because"), [
    ("http://127.0.0.1:9090", ALLOW, None),
    ("http://127.0.0.1:1/any/path", ALLOW, None),
    ("https://prom.example:9443/tenant-a", ALLOW, None),
    ("https://prom.example:9443/tenant-a/", ALLOW, None),
    ("https://prom.example:9443/tenant-ab", ALLOW, "allow-list"),  # a path prefix is a whole segment
    ("https://prom.example/tenant-a", ALLOW, "allow-list"),  # port 443, not 9443
    ("http://prom.example:9443/tenant-a", ALLOW, "allow-list"),  # scheme differs
    ("http://127.0.0.1.nip.io:9090", ALLOW, "allow-list"),  # a host is compared whole, not as a prefix
    ("http://10.0.0.7:9090", ALLOW, "allow-list"),
    ("http://169.254.169.254/latest/meta-data", (), "link-local"),
    ("http://[fe80::1]:9090", (), "link-local"),
    ("http://169.254.169.254", ("http://169.254.169.254",), "link-local"),  # even when allowed
    ("http://user:secret@127.0.0.1:9090", (), "credentials"),
    ("http://10.0.0.7:9090", (), None),  # no allow-list: any address that is not link-local
])
def test_which_addresses_the_operator_queries(address: str, allowed: tuple[str, ...], refused_because: str | None) -> None:
    problem = address_problem(address, allowed)
    if refused_because is None:
        assert problem is None, problem
    else:
        assert problem is not None and refused_because in problem, problem


class _Server:
    """A real HTTP server on loopback answering every GET with (status, headers, body); counts hits."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        outer = self
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    made: list[_Server] = []
    yield made
    for s in made:
        s.close()


def test_a_redirect_is_not_followed(servers: list[_Server]) -> None:
    inside = _Server(200, json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}}).encode())
    redirecting = _Server(302, b"", {"Location": inside.url + "/api/v1/query?query=up"})
    servers += [inside, redirecting]
    with pytest.raises(OSError, match="302"):
        query(redirecting.url, "up")
    assert inside.hits == 0
    assert query(inside.url, "up") == 1.0 and inside.hits == 1  # the control: it does answer


def test_an_answer_body_is_never_quoted_only_prometheus_error_cut_short(servers: list[_Server]) -> None:
    marker = "internal-token-" + "x" * 40
    html = _Server(500, f"<html>{marker}</html>".encode())
    error = _Server(400, json.dumps({"status": "error", "error": "parse error: " + "y" * 1000 + marker}).encode())
    servers += [html, error]
    with pytest.raises(OSError) as from_html:
        query(html.url, "up")
    assert "500" in str(from_html.value) and marker not in str(from_html.value)
    with pytest.raises(OSError) as from_error:
        query(error.url, "up")
    assert "parse error" in str(from_error.value) and marker not in str(from_error.value)
    assert len(str(from_error.value)) < QUOTED + 100


@pytest.mark.cluster
def test_a_policy_naming_a_refused_prometheus_is_not_accepted_until_fixed(
    operator: OperatorProcess, kserve_crds: None, api: client.ApiClient, namespace: str
) -> None:
    spec = {
        "target": {"inferenceService": "colors", "baseModel": "file:///models/base"},
        "adapterSelector": {"family": "colors"},
        "analysis": {"prometheusAddress": "http://169.254.169.254/latest/meta-data",
                     "metrics": [{"name": "errors", "builtin": "errorRate", "thresholdRange": {"max": 0.05}},
                                 {"name": "custom", "prometheus": {"address": "http://10.0.0.7:9090", "query": "up"},
                                  "thresholdRange": {"min": 1}}]},
    }
    create(api, namespace, "RolloutPolicy", "colors", spec)
    cond = wait_condition(api, namespace, "RolloutPolicy", "colors", "Accepted", "False", timeout=30, reason="PrometheusNotAllowed")
    assert "spec.analysis.prometheusAddress" in cond["message"] and "link-local" in cond["message"], cond
    assert "spec.analysis.metrics[1].prometheus.address" in cond["message"] and "allow-list" in cond["message"], cond
    assert not client.CustomObjectsApi(api).list_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", namespace, "inferenceservices")["items"]
    warning = wait_for(lambda: [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
                                if e.involved_object.name == "colors" and e.reason == "PrometheusNotAllowed"], 15, "a Warning")
    assert warning[0].type == "Warning"

    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL["RolloutPolicy"], "colors", {
        "spec": {"analysis": {"prometheusAddress": "http://127.0.0.1:9",
                              "metrics": [{"name": "errors", "builtin": "errorRate", "thresholdRange": {"max": 0.05}}]}}})
    wait_condition(api, namespace, "RolloutPolicy", "colors", "Accepted", "True", timeout=30)
