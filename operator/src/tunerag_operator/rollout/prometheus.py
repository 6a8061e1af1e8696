"""Queries to the Prometheus a RolloutPolicy names, and which addresses the operator will query.

The address comes from a namespaced spec, but the request leaves from the operator's pod, which
can reach what the policy's author may not (cluster-internal services, a cloud's metadata
endpoint). So:

- an address that resolves to a link-local address (169.254.0.0/16, fe80::/10: the cloud
  metadata endpoints) is always refused;
- when the operator has an allow-list (`--prometheus-allow`, chart value
  `analysis.prometheusAllowList`), only addresses within one of its entries are queried; an entry
  `http://host` admits any port of that host, `http://host:9090/prefix` that port and path prefix;
- redirects are not followed (a redirect would lead anywhere), and from an answer only
  Prometheus's own `error` field is quoted, cut short, never a body.

A refused address is a spec problem (`Accepted=False`, reason `PrometheusNotAllowed`), checked
before anything is queried. Resolution happens at check time; a name that later resolves
elsewhere (DNS rebinding) is not caught, which the allow-list closes where it matters.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT = 5.0
QUOTED = 200  # characters of Prometheus's error message kept in a status


def address_problem(address: str, allowed: tuple[str, ...]) -> str | None:
    """Why the operator will not query `address`, or None when it will."""
    parts = urllib.parse.urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL with a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    for ip in _resolve(parts.hostname):
        if ip.is_link_local:
            return f"resolves to {ip}, a link-local address (cloud metadata endpoints live there)"
    if allowed and not any(_within(parts, urllib.parse.urlsplit(entry)) for entry in allowed):
        return (f"is outside the operator's allow-list ({', '.join(allowed)}); ask the platform team to add it "
                "(chart value analysis.prometheusAllowList)")
    return None


def _within(address: urllib.parse.SplitResult, entry: urllib.parse.SplitResult) -> bool:
    if (address.scheme, address.hostname) != (entry.scheme, entry.hostname):
        return False
    if entry.port is not None and _port(address) != entry.port:
        return False
    prefix = entry.path.rstrip("/")
    return not prefix or address.path == prefix or address.path.startswith(prefix + "/")


def _port(parts: urllib.parse.SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def _resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host.split("%")[0])]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []  # unresolvable now: the query fails as Inconclusive, nothing is reached
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to elsewhere refused ({code})", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirects)


def query(address: str, promql: str) -> float | None:
    """The query's single value, or None for no data. Raises OSError when Prometheus is
    unreachable or answers with an error."""
    url = address.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with _OPENER.open(url, timeout=TIMEOUT) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise OSError(f"Prometheus at {address} answered {exc.code}{_error_of(exc)}") from None
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise OSError(f"Prometheus at {address} did not answer: {reason}") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise OSError(f"Prometheus refused the query{_quote(body.get('error') if isinstance(body, dict) else None)}")
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar":
        values = [result[1]] if result else []
    else:
        values = [r["value"][1] for r in result or []]
    if len(values) != 1:
        return None
    value = float(values[0])
    return None if math.isnan(value) or math.isinf(value) else value


def _error_of(exc: urllib.error.HTTPError) -> str:
    if exc.code in range(300, 400):
        return f": {exc.msg}"
    try:
        body = json.loads(exc.read(65536))
    except (OSError, ValueError):
        return ""
    return _quote(body.get("error") if isinstance(body, dict) else None)


def _quote(error: Any) -> str:
    if not isinstance(error, str) or not error:
        return ""
    text = "".join(ch if ch.isprintable() else " " for ch in error)
    return ": " + (text if len(text) <= QUOTED else text[:QUOTED] + "...")
