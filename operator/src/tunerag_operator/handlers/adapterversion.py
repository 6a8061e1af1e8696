"""AdapterVersion reconcile: the registry entry's phase from its gates, or from verifying a
hand-registered artifact."""

from __future__ import annotations

from typing import Any

import kopf

from tunerag_operator import events, kubeapi, references
from tunerag_operator.api.adapterversion import AdapterVersionSpec
from tunerag_operator.api.common import GROUP, VERSION, PodResources
from tunerag_operator.api.kinds import ADAPTERVERSION, ROLLOUTPOLICY
from tunerag_operator.conditions import set_condition
from tunerag_operator.config import OperatorConfig
from tunerag_operator.handlers import runs
from tunerag_operator.handlers.base import register
from tunerag_operator.references import Problem
from tunerag_operator.registry import size_ratio
from tunerag_operator.render.workload import Owner, WorkloadRun, run_name
from tunerag_operator.runstate import RunState

SERVING_PHASES = ("Canary", "Serving", "Retired", "RolledBack")


def check(spec: AdapterVersionSpec, namespace: str) -> list[Problem]:
    problems = references.uri(namespace, spec.artifact.uri, "spec.artifact.uri")
    if spec.quantized is not None:
        problems += references.uri(namespace, spec.quantized.uri, "spec.quantized.uri")
    return problems


def quantized_status(spec: AdapterVersionSpec, verified: dict[str, Any] | None = None) -> dict[str, Any]:
    """status.quantized: the quantized model's size over the 16-bit merged model's (from the spec, or
    from the size the verification Job measured) and the digest it was verified to have."""
    q = spec.quantized
    if q is None:
        return {}
    size = verified.get("sizeBytes") if verified else q.size_bytes
    out: dict[str, Any] = {"sizeRatio": size_ratio(size, q.reference_size_bytes)}
    if verified:
        out["verifiedSha256"] = verified.get("sha256")
    return {"quantized": {k: v for k, v in out.items() if v is not None}}


def decide(spec: AdapterVersionSpec, body: kopf.Body, config: OperatorConfig) -> dict[str, Any]:
    """A version with gate results (registered by a FineTuneJob, whose workload computed the
    checksums it publishes, the quantized model's too) is Validated when every gate passed and
    Rejected otherwise. A version registered by hand has no gates: a verification Job checks that the
    artifact (and the quantized model, if any) exists and has the recorded sha256. Phases set by a
    rollout (Canary, Serving, Retired) are left alone."""
    if body.status.get("phase") in SERVING_PHASES:
        return {}
    failed = [g for g in spec.gates if not g.passed]
    if failed:
        detail = "; ".join(f"{g.name} {g.value:.4g} vs {g.threshold:.4g}" for g in failed)
        return {"phase": "Rejected", "ready": ("False", "GateFailed", f"Failed gates: {detail}. Never served."),
                **quantized_status(spec)}
    if spec.gates:
        return {"phase": "Validated", "ready": ("True", "Ready", f"All {len(spec.gates)} gates passed."),
                **quantized_status(spec)}
    owner = Owner(ADAPTERVERSION.kind, body.meta["name"], body.meta["namespace"], body.meta["uid"], body.meta["generation"])
    if body.status.get("jobName") == run_name(owner, "verify"):
        return {}
    claims = references.claims_of(spec.artifact.uri, *([spec.quantized.uri] if spec.quantized else []))
    job_name = runs.start(WorkloadRun(
        owner=owner, component="verify", module="tunerag_workloads.finetune.verify",
        spec=spec.model_dump(mode="json", exclude_none=True), image=config.workloads_image,
        resources=PodResources(), claims=claims, backoff_limit=1, suffix="verify",
    ))
    what = spec.artifact.uri + (f" and {spec.quantized.uri}" if spec.quantized else "")
    return {"jobName": job_name, "ready": ("False", "Verifying", f"Verifying {what} ({job_name}).")}


@runs.observe(ADAPTERVERSION.kind)
def observe_run(namespace: str, name: str, job_name: str, state: RunState) -> None:
    obj = kubeapi.get_custom(namespace, ADAPTERVERSION.plural, name)
    if obj is None or (obj.get("status") or {}).get("jobName") != job_name or state.phase not in ("Succeeded", "Failed"):
        return
    status = obj.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return
    generation = obj["metadata"]["generation"]
    if state.phase == "Succeeded" and state.result:
        digest = str(state.result.get("sha256"))
        verified = state.result.get("quantized")
        also = f"; the quantized model has sha256 {verified.get('sha256')}" if isinstance(verified, dict) else ""
        conds = set_condition(status.get("conditions") or [], "Ready", "True", "Verified",
                              f"The artifact exists and has sha256 {digest}{also}.", generation)
        quantized = quantized_status(AdapterVersionSpec.model_validate(obj["spec"]), verified) if isinstance(verified, dict) else {}
        kubeapi.patch_status(namespace, ADAPTERVERSION.plural, name,
                             {"phase": "Validated", "verifiedSha256": digest, "conditions": conds, **quantized})
        events.info(obj, "Verified", f"The artifact has the recorded sha256 {digest}{also}.")
    else:
        conds = set_condition(status.get("conditions") or [], "Ready", "False", state.reason, state.message, generation)
        kubeapi.patch_status(namespace, ADAPTERVERSION.plural, name, {"phase": "Failed", "conditions": conds})
        events.warn(obj, state.reason, state.message)


register(ADAPTERVERSION, check, initial_phase="Pending", act=decide)
runs.follow(ADAPTERVERSION, lambda status: status.get("phase") in (None, "Pending"))


def serving_policies(namespace: str, name: str) -> list[str]:
    """The RolloutPolicies of the namespace that serve the version now: as their stable version,
    or as the candidate of a rollout in progress."""
    return sorted(p["metadata"]["name"] for p in kubeapi.list_custom(namespace, ROLLOUTPOLICY.plural, "")
                  if name in ((p.get("status") or {}).get("stable"), (p.get("status") or {}).get("candidate")))


@kopf.on.delete(GROUP, VERSION, ADAPTERVERSION.plural, id="in-use", retries=None)
def guard_deletion(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """A version that a RolloutPolicy serves is not deleted while it does (as a PVC in use is not):
    the finalizer stays, Ready says which policy serves it, and it goes once none does (a newer
    version promoted, or the policy deleted). Its artifact is never deleted by the operator."""
    namespace, name = body.meta["namespace"], body.meta["name"]
    users = serving_policies(namespace, name)
    if not users:
        return
    message = (f"{name} is being deleted but RolloutPolicy {', '.join(users)} serves it; it is deleted once no policy "
               "does (promote another version, or delete the policy).")
    before = body.status.get("conditions") or []
    conds = set_condition(before, "Ready", "False", "DeletionBlocked", message, body.meta.get("generation"))
    if conds != before:
        patch.status["conditions"] = conds
        kopf.warn(body, reason="DeletionBlocked", message=message)
    raise kopf.TemporaryError(message, delay=10)
