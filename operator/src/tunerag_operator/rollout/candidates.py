"""Which AdapterVersion a RolloutPolicy rolls out next, and what a predictor loads for it: the
family index's entries (`Version`, built from AdapterVersion objects by `version_of`) and the
choice of candidate (`select`). Pure decisions, no API calls: the controller's pass reads the
family and acts on the answer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tunerag_operator.api.rolloutpolicy import RolloutPolicySpec
from tunerag_operator.render.inferenceservice import ServedAdapter

ELIGIBLE = ("Validated", "Retired")  # phases a version may be rolled out from


class Blocked(Exception):
    """The policy cannot act yet; (reason, message) go to its Ready condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class Version:
    """An AdapterVersion as the family index holds it. `quantized` is its merged, quantized model
    (spec.quantized) when one was registered and stayed within its quality tolerance."""

    name: str
    version: int
    phase: str | None
    uri: str
    sha256: str
    base_model: str
    quantized: ServedAdapter | None = None

    def served(self, artifact: str = "adapter") -> ServedAdapter:
        """What a predictor loads for this version: its adapter on the base model, or (`artifact`
        quantized, spec.target.artifact) its merged, quantized model alone."""
        if artifact != "quantized":
            return ServedAdapter(self.name, self.uri, self.sha256)
        if self.quantized is None:
            raise Blocked("NoQuantizedModel", f"{self.name} has no quantized model to serve (spec.quantized, made by a "
                          "FineTuneJob with spec.output.quantize, within its quality tolerance); the policy serves "
                          "quantized models (spec.target.artifact).")
        return self.quantized


def version_of(av: dict[str, Any]) -> Version:
    """The family index's entry for an AdapterVersion object."""
    spec, status = av.get("spec") or {}, av.get("status") or {}
    artifact, q = spec.get("artifact") or {}, spec.get("quantized") or {}
    name = av["metadata"]["name"]
    quantized = None
    if q.get("uri") and q.get("sha256") and q.get("withinTolerance") is not False:
        quantized = ServedAdapter(name, q["uri"], q["sha256"], q.get("format") or "merged-nf4")
    return Version(name, int(spec.get("version") or 0), status.get("phase"), artifact.get("uri", ""),
                   artifact.get("sha256", ""), (spec.get("baseModel") or {}).get("uri", ""), quantized)


def versions(items: Iterable[Version]) -> dict[str, Version]:
    return {v.name: v for v in items}


def select(spec: RolloutPolicySpec, family: dict[str, Version], stable: str | None, rolled_back: Iterable[str]) -> Version | None:
    """The next candidate: the pinned version, or the newest Validated one newer than the stable.
    A pinned version that is Rejected (or was rolled back) blocks with a condition saying so."""
    sel = spec.adapter_selector
    artifact = spec.target.artifact
    current = family.get(stable or "")
    if sel.version is not None:
        pinned = next((v for v in family.values() if v.version == sel.version), None)
        if pinned is None:
            raise Blocked("CandidateNotFound", f"AdapterVersion {sel.family} version {sel.version} does not exist (yet).")
        if pinned.name == stable:
            return None
        if pinned.phase in ("Rejected", "Failed"):
            raise Blocked("CandidateRejected", f"{pinned.name} is {pinned.phase}: it failed its gates or its verification and is never served.")
        if pinned.name in rolled_back or pinned.phase == "RolledBack":
            return None
        if pinned.phase not in ELIGIBLE:
            raise Blocked("CandidateNotValidated", f"{pinned.name} is {pinned.phase or 'Pending'}; waiting until it is Validated.")
        pinned.served(artifact)  # Blocked when there is nothing to serve in this form
        return pinned
    # "Canary" too: a rollout whose start was recorded on the version but not (yet) on the policy.
    newer = [v for v in family.values() if v.phase in ("Validated", "Canary") and v.name not in rolled_back
             and (current is None or v.version > current.version)]
    if artifact == "quantized" and newer:
        # Versions without a servable quantized model are passed over; the newest says why if none has one.
        servable = [v for v in newer if v.quantized is not None]
        if not servable:
            max(newer, key=lambda v: v.version).served(artifact)
        newer = servable
    return max(newer, key=lambda v: v.version) if newer else None

