"""RolloutPolicy: a timer runs the rollout state machine (tunerag_operator.rollout.controller)
every TUNERAG_ROLLOUT_TICK seconds per policy. The AdapterVersions of the family are listed on
each pass that is not settled; a settled policy (nothing rolling out, spec unchanged) makes no API
calls and looks again every TUNERAG_ROLLOUT_RESYNC seconds (30 by default), or at its next tick
once an AdapterVersion of its family changes (this process watches them: `family_changed`), so a
new version is picked up within a tick, not a resync.

(A kopf index of AdapterVersions would save the LIST, but with it the timer stalled for good when
a new version arrived right after a promotion: kopf 1.45; see docs/design-notes.md.)"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import kopf
from kubernetes import client
from pydantic import ValidationError

from tunerag_operator import kubeapi, metrics, references
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.kinds import ADAPTERVERSION, ROLLOUTPOLICY, VECTORINDEX
from tunerag_operator.api.rolloutpolicy import RolloutPolicySpec
from tunerag_operator.conditions import set_condition
from tunerag_operator.config import OperatorConfig
from tunerag_operator.handlers.base import describe_validation_error
from tunerag_operator.handlers.timers import owns_status
from tunerag_operator.references import Problem
from tunerag_operator.rollout import analysis, prometheus
from tunerag_operator.rollout.candidates import Blocked, Version, version_of, versions
from tunerag_operator.rollout.controller import Pass, serving_binding

TICK = float(os.environ.get("TUNERAG_ROLLOUT_TICK", "5"))
# A settled policy looks for new versions and repairs drift of its InferenceService this often; in
# between its passes make no API calls.
RESYNC = float(os.environ.get("TUNERAG_ROLLOUT_RESYNC", "30"))
# After moving traffic a pass looks at the InferenceService again for this long (and an analysis
# due this soon is measured on time), so a step does not wait a whole tick for KServe.
SETTLE = float(os.environ.get("TUNERAG_ROLLOUT_SETTLE", str(min(TICK, 5.0))))


def check(spec: RolloutPolicySpec, namespace: str, prometheus_allow: tuple[str, ...] = ()) -> list[Problem]:
    problems = [Problem("PrometheusNotAllowed", f"{field} {address!r} {why}.")
                for field, address in analysis.addresses(spec)
                if (why := prometheus.address_problem(address, prometheus_allow))]
    problems += references.uri(namespace, spec.target.base_model, "spec.target.baseModel")
    if spec.retrieval is not None:
        problems += references.custom(namespace, VECTORINDEX.plural, VECTORINDEX.kind,
                                      spec.retrieval.vector_index.name, "spec.retrieval.vectorIndex")
    if spec.feedback is not None and spec.feedback.connection_secret is not None:
        ref = spec.feedback.connection_secret
        problems += references.secret_key(namespace, ref.name, ref.key, "spec.feedback.connectionSecret")
    return problems


def _family(namespace: str, family: str) -> list[Version]:
    """The family's AdapterVersions as the rollout needs them (one LIST per unsettled pass)."""
    api = client.CustomObjectsApi(kubeapi.api_client())
    resp = api.list_namespaced_custom_object(GROUP, VERSION, namespace, ADAPTERVERSION.plural, _preload_content=False)
    return [version_of(item) for item in json.loads(resp.data).get("items", [])
            if (item.get("spec") or {}).get("family") == family]


SYNCED = "tunerag_rollout_synced"  # per-object memo: when this operator last ran a full pass
# (namespace, family) -> when this process last saw an AdapterVersion of that family change.
FAMILY_CHANGED: dict[tuple[str, str], float] = {}


@kopf.on.event(GROUP, VERSION, ADAPTERVERSION.plural)
def family_changed(body: kopf.Body, **_: Any) -> None:
    """Marks the version's family as changed (created, validated, deleted), for `_settled`."""
    family = (body.get("spec") or {}).get("family")
    if isinstance(family, str):
        FAMILY_CHANGED[(str(body.meta.get("namespace")), family)] = time.monotonic()


def _settled(body: kopf.Body, memo: kopf.Memo) -> bool:
    """Nothing to do but wait: no rollout on, the spec unchanged since the last pass, no version of
    the family changed since, and that pass (by this operator: the time is kept in memory, not
    written) recent. Such passes make no API calls."""
    st = body.status
    synced = memo.get(SYNCED)
    family = ((body.spec.get("adapterSelector") or {}).get("family")) or ""
    return (not st.get("candidate") and st.get("phase") in ("Promoted", "RolledBack", "Idle")
            and st.get("observedGeneration") == body.meta.get("generation")
            and synced is not None and time.monotonic() - synced < RESYNC
            and FAMILY_CHANGED.get((str(body.meta.get("namespace")), family), 0.0) < synced)


@kopf.timer(GROUP, VERSION, ROLLOUTPOLICY.plural, id="rollout", interval=TICK, sharp=False, backoff=max(TICK, 2.0))
@owns_status(ROLLOUTPOLICY, stamp="lastSync")
def rollout(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    config = memo.get("config") or OperatorConfig.defaults()
    ns = body.meta["namespace"]
    generation = body.meta.get("generation")
    before = [dict(c) for c in body.status.get("conditions") or []]
    conds = before
    try:
        spec = RolloutPolicySpec.model_validate(dict(body.spec))
    except ValidationError as exc:
        message = describe_validation_error(exc)
        conds = set_condition(conds, "Accepted", "False", "InvalidSpec", message, generation)
        conds = set_condition(conds, "Ready", "False", "InvalidSpec", message, generation)
        _write(body, patch, before, conds, {"phase": "Failed"}, generation)
        return
    if _settled(body, memo):
        return
    started = time.monotonic()  # a version changed after this (and so maybe after the LIST) is looked at next tick
    family = versions(_family(ns, spec.adapter_selector.family))
    problems = check(spec, ns, config.prometheus_allow)
    if problems:
        message = " ".join(p.message for p in problems)
        conds = set_condition(conds, "Accepted", "False", problems[0].reason, message, generation)
        conds = set_condition(conds, "Ready", "False", problems[0].reason, message, generation)
        metrics.RECONCILE_ERRORS.labels(ROLLOUTPOLICY.kind, problems[0].reason).inc()
        _write(body, patch, before, conds, {"phase": body.status.get("phase") or "Idle"}, generation)
        return
    conds = set_condition(conds, "Accepted", "True", "Accepted", "The spec is valid and every reference resolves.", generation)
    raw = {"metadata": dict(body.meta), "status": dict(body.status), "apiVersion": body.get("apiVersion"), "kind": body.get("kind")}
    try:
        serving = serving_binding(spec, raw, config.workloads_image)
        outcome = Pass(raw, spec, family, serving, SETTLE).run()
    except Blocked as exc:
        conds = set_condition(conds, "Ready", "False", exc.reason, exc.message, generation)
        _write(body, patch, before, conds, {"phase": body.status.get("phase") or "Idle", "message": exc.message}, generation)
        return
    ready_status, reason, message = outcome.ready
    conds = set_condition(conds, "Ready", ready_status, reason, message, generation)  # type: ignore[arg-type]
    fields = dict(outcome.status)
    fields.setdefault("phase", body.status.get("phase") or "Idle")
    _write(body, patch, before, conds, fields, generation)
    memo[SYNCED] = started


def _write(body: kopf.Body, patch: kopf.Patch, before: list[dict[str, Any]], conds: list[dict[str, Any]],
           fields: dict[str, Any], generation: int | None) -> None:
    for key, value in fields.items():
        patch.status[key] = value
    patch.status["conditions"] = conds
    patch.status["observedGeneration"] = generation
    for type_ in ("Accepted", "Ready"):
        old = next((c for c in before if c["type"] == type_), None)
        new = next((c for c in conds if c["type"] == type_), None)
        if new and (old is None or (old["status"], old["reason"]) != (new["status"], new["reason"])) and new["status"] == "False" \
                and new["reason"] not in ("Progressing", "Promoting", "Waiting", "NoCandidate"):
            kopf.warn(body, reason=new["reason"], message=new["message"])
