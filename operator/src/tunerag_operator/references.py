"""Checks that what a spec refers to exists in the resource's own namespace.

Each check returns Problems with a reason and a message that says what to fix. References are
always resolved in the resource's namespace: there is no field that could name another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunerag_operator import kubeapi
from tunerag_operator.api.common import DNS_SUBDOMAIN

PROBLEM_REASONS = (
    "SecretNotFound", "SecretKeyNotFound", "ConfigMapNotFound", "PersistentVolumeClaimNotFound",
    "VectorIndexNotFound", "FineTuneJobNotFound",
)


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


def secret_key(namespace: str, name: str, key: str, purpose: str) -> list[Problem]:
    secret = kubeapi.get_secret(namespace, name)
    if secret is None:
        return [Problem("SecretNotFound", f"Secret {namespace}/{name} ({purpose}) does not exist; create it with key {key!r}.")]
    if key not in (secret.get("data") or {}) and key not in (secret.get("stringData") or {}):
        return [Problem("SecretKeyNotFound", f"Secret {namespace}/{name} ({purpose}) has no key {key!r}; add it.")]
    return []


def secret(namespace: str, name: str, purpose: str) -> list[Problem]:
    if kubeapi.get_secret(namespace, name) is None:
        return [Problem("SecretNotFound", f"Secret {namespace}/{name} ({purpose}) does not exist; create it.")]
    return []


def configmap(namespace: str, name: str, purpose: str) -> list[Problem]:
    if kubeapi.get_configmap(namespace, name) is None:
        return [Problem("ConfigMapNotFound", f"ConfigMap {namespace}/{name} ({purpose}) does not exist; create it.")]
    return []


def claim_of(value: str) -> str | None:
    """The PersistentVolumeClaim a `pvc://claim/path` URI names; None for other schemes."""
    return value.removeprefix("pvc://").split("/", 1)[0] if value.startswith("pvc://") else None


def claims_of(*values: str | None) -> tuple[str, ...]:
    return tuple(c for v in values if v and (c := claim_of(v)))


def uri(namespace: str, value: str, purpose: str) -> list[Problem]:
    """pvc:// URIs name a claim in the namespace: it must exist. Other schemes are resolved by the
    workload at run time (their failures surface from the Job)."""
    claim = claim_of(value)
    if claim is None:
        return []
    if not re.fullmatch(DNS_SUBDOMAIN, claim) or len(claim) > 253:
        # Checked before the API is asked: GET .../persistentvolumeclaims/ (an empty name) is a list
        # and answers 200, so `pvc:///etc` would pass as an existing claim and mount nothing.
        return [Problem("PersistentVolumeClaimNotFound",
                        f"{purpose} {value!r} names no valid PersistentVolumeClaim; write pvc://<claim>/<path>.")]
    if kubeapi.get_pvc(namespace, claim) is None:
        return [Problem("PersistentVolumeClaimNotFound",
                        f"PersistentVolumeClaim {namespace}/{claim} ({purpose}, {value}) does not exist; create it or fix the URI.")]
    return []


def custom(namespace: str, plural: str, kind: str, name: str, purpose: str) -> list[Problem]:
    if kubeapi.get_custom(namespace, plural, name) is None:
        return [Problem(f"{kind}NotFound", f"{kind} {namespace}/{name} ({purpose}) does not exist; create it or fix the reference.")]
    return []
