"""The rollout state machine: one level-triggered pass over a RolloutPolicy.

All state lives in the policy's status (stable, candidate, current step, when it started, the
analysis runs, failed checks); the InferenceService is rendered from it on every pass and patched
only where it differs. So a pass may run twice, or after the operator restarted mid-rollout, and it
resumes at the same step: a step advances only when its condition holds (the candidate's effective
traffic reached the weight; the pause elapsed; enough analysis measurements passed), and the advance
is written in the same status patch as its record.

    candidate appears ──► Progressing: step 0 … step n ──► promote ──► Promoted (stable := candidate)
                                │  failed checks > failureLimit, load failure, deadline, abort
                                └──────────────────────────► RolledBack (traffic back on stable)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunerag_operator import durations, events, kubeapi, metrics
from tunerag_operator.api.kinds import ADAPTERVERSION, VECTORINDEX
from tunerag_operator.api.rolloutpolicy import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    RESUME_ANNOTATION,
    RolloutPolicySpec,
)
from tunerag_operator.conditions import now
from tunerag_operator.render import inferenceservice as render
from tunerag_operator.render.inferenceservice import Desired, FeedbackBinding, RetrievalBinding, ServedAdapter, Serving
from tunerag_operator.rollout import analysis, steps
from tunerag_operator.rollout.candidates import ELIGIBLE, Blocked, Version, select
from tunerag_operator.rollout.observe import Observed, failed_since, observe

log = logging.getLogger(__name__)
MAX_RUNS = 50
MAX_HISTORY = 20


@dataclass
class Outcome:
    """What a pass decided: status fields to write, the Ready condition, and whether it is waiting
    on something other than time."""

    status: dict[str, Any] = field(default_factory=dict)
    ready: tuple[str, str, str] = ("False", "Waiting", "")


def serving_binding(spec: RolloutPolicySpec, body: dict[str, Any], image: str) -> Serving:
    """Resolves the retrieval VectorIndex (its table, settings and database Secret) into what the
    predictors need. Raises Blocked while the index has not completed a first run."""
    meta = body["metadata"]
    ns = meta["namespace"]
    retrieval = feedback = database = None
    if spec.retrieval is not None:
        vi = kubeapi.get_custom(ns, VECTORINDEX.plural, spec.retrieval.vector_index.name)
        if vi is None:
            raise Blocked("VectorIndexNotFound", f"VectorIndex {ns}/{spec.retrieval.vector_index.name} does not exist.")
        if not (vi.get("status") or {}).get("tableVersion"):
            raise Blocked("WaitingForIndex", f"VectorIndex {spec.retrieval.vector_index.name} has not completed a first run yet.")
        store = vi["spec"]["store"]
        retrieval = RetrievalBinding.of(store, spec.retrieval)
        from tunerag_operator.api.common import SecretKeyRef

        database = SecretKeyRef.model_validate(store["connectionSecret"])
    if spec.feedback is not None:
        feedback = FeedbackBinding(spec.feedback.schema_, spec.feedback.table)
        database = spec.feedback.connection_secret or database
    return Serving(
        namespace=ns, policy=meta["name"], policy_uid=meta["uid"], service=spec.target.inference_service,
        target=spec.target, image=image, retrieval=retrieval, feedback=feedback, database=database)


def _append(items: list[dict[str, Any]], item: dict[str, Any], bound: int) -> list[dict[str, Any]]:
    return [*items, item][-bound:]


def _age(ts: str | None) -> float:
    return durations.since(ts) if ts else 0.0


class Pass:
    """One pass over one policy. `family` is the index of its adapter family."""

    def __init__(self, body: dict[str, Any], spec: RolloutPolicySpec, family: dict[str, Version], serving: Serving,
                 settle: float = 0.0) -> None:
        """`settle`: how long a pass may wait, after moving traffic, for KServe to report the move
        (or for an analysis that is due that soon), instead of leaving it to the next pass."""
        self.body = body
        self.settle = settle
        self.spec = spec
        self.family = family
        self.serving = serving
        self.ns = body["metadata"]["namespace"]
        self.name = body["metadata"]["name"]
        self.annotations = body["metadata"].get("annotations") or {}
        self.status: dict[str, Any] = dict(body.get("status") or {})
        self.out = Outcome()
        self.mode = spec.target.deployment_mode
        self.steps = steps.expand(spec.strategy.canary) if spec.strategy.canary else []

    # -- status helpers --------------------------------------------------------------------

    def set(self, **fields: Any) -> None:
        self.status.update(fields)
        self.out.status.update(fields)

    def version(self, name: str | None) -> Version | None:
        return self.family.get(name) if name else None

    def adapter(self, name: str | None) -> ServedAdapter | None:
        v = self.version(name)
        return v.served(self.spec.target.artifact) if v else None

    def mark_adapter(self, name: str | None, phase: str, served: bool) -> None:
        """AdapterVersion phases follow the rollout (Canary, Serving, Retired, RolledBack)."""
        if not name:
            return
        av = kubeapi.get_custom(self.ns, ADAPTERVERSION.plural, name)
        if av is None:
            return
        st = av.get("status") or {}
        served_by = [p for p in st.get("servedBy") or [] if p != self.name] + ([self.name] if served else [])
        if st.get("phase") != phase or (st.get("servedBy") or []) != served_by:
            kubeapi.patch_status(self.ns, ADAPTERVERSION.plural, name, {"phase": phase, "servedBy": served_by})

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        (events.warn if warning else events.info)(self.body, reason, message)

    # -- the InferenceService ------------------------------------------------------------------

    def desired(self) -> Desired:
        stable, cand = self.adapter(self.status.get("stable")), self.adapter(self.status.get("candidate"))
        if cand is not None and stable is None:  # the first version: deployed as it is
            return Desired(stable=cand)
        if cand is not None and self.status.get("promoting"):
            return Desired(stable=cand)
        if cand is not None and self.spec.strategy.type == "abTest":
            return Desired(stable=stable)  # the candidate has its own service (`<service>-b`)
        if cand is not None:
            return Desired(stable=stable, candidate=cand, weight=int(self.status.get("canaryWeight") or 0))
        parked = self.adapter(self.status.get("parked")) if self.mode == "Knative" else None
        return Desired(stable=stable, parked=parked)

    def sync_service(self) -> Observed:
        """Creates or patches the InferenceService to the desired state; returns what KServe
        reports now (the patch shows in its status on a later pass)."""
        d = self.desired()
        if d.stable is None and d.candidate is None:
            return observe(None, self.mode)
        isvc = kubeapi.get_kserve(self.ns, "inferenceservices", self.serving.service)
        if isvc is None:
            if self.spec.target.adopt:
                raise Blocked("InferenceServiceNotFound", f"InferenceService {self.ns}/{self.serving.service} does not exist; adopt: true expects it.")
            kubeapi.create_kserve(render.inference_service(self.serving, self.mode, d))
            self.event("InferenceServiceCreated", f"Created InferenceService {self.serving.service} ({self.mode} mode).")
            return observe(None, self.mode)
        ops = render.spec_patch(isvc, render.service_spec(self.serving, self.mode, d))
        if ops:
            kubeapi.json_patch_kserve(self.ns, "inferenceservices", self.serving.service, ops)
            return observe({**isvc, "status": {}}, self.mode)  # what KServe reports is stale now
        return observe(isvc, self.mode)

    def observed(self) -> Observed:
        """What KServe reports about the InferenceService now."""
        return observe(kubeapi.get_kserve(self.ns, "inferenceservices", self.serving.service), self.mode)

    def wait_for_service(self, reached: Callable[[Observed], bool]) -> Observed | None:
        """Looks at the InferenceService again for up to `settle` seconds after a patch: what KServe
        reports once `reached` holds, or None (the next pass looks again)."""
        deadline = time.monotonic() + self.settle
        while time.monotonic() < deadline:
            time.sleep(min(0.25, max(deadline - time.monotonic(), 0)))
            obs = self.observed()
            if reached(obs):
                return obs
        return None

    # -- the pass ------------------------------------------------------------------------------

    def run(self) -> Outcome:
        if self.spec.strategy.type == "abTest":
            from tunerag_operator.rollout.abtest import ab_pass

            ab_pass(self)
            return self.out
        if self.status.get("candidate") is None:
            self.idle()
        else:
            self.progress()
        metrics.ROLLOUT_WEIGHT.labels(self.ns, self.name).set(float(self.status.get("canaryWeight") or 0))
        return self.out

    def idle(self) -> None:
        stable = self.status.get("stable")
        rolled_back = [h["candidate"] for h in self.status.get("history") or [] if h.get("outcome") == "RolledBack"]
        new = select(self.spec, self.family, stable, rolled_back)
        if new is not None and new.base_model and new.base_model != self.spec.target.base_model:
            raise Blocked("CandidateBaseModelMismatch",
                          f"{new.name} was trained on {new.base_model}, the policy serves {self.spec.target.base_model}.")
        if new is not None and stable is not None and (why := steps.unmeasured_analysis(
                self.steps, [m.name for m in self.spec.analysis.metrics])):
            # Before any traffic moves: the stable version keeps serving alone.
            raise Blocked("AnalysisCannotPass", f"{new.name} is not rolled out: {why}. Define spec.analysis.metrics, "
                          "or write spec.strategy.canary.steps without analysis steps.")
        if new is None:
            obs = self.sync_service()
            if stable is None:
                self.set(phase="Idle", message="No Validated AdapterVersion of the family yet.")
                self.out.ready = ("False", "NoCandidate", f"Waiting for a Validated AdapterVersion of family {self.spec.adapter_selector.family}.")
            elif obs.ready:
                self.out.ready = ("True", "Serving", f"{stable} serves all traffic.")
            else:
                self.out.ready = ("False", "ServiceNotReady", f"InferenceService {self.serving.service} is not ready.")
            return
        # Only the status is written in this pass; the AdapterVersion's phase and the
        # InferenceService follow in the next one, from the status: if this write is lost, nothing
        # outside the policy has moved yet.
        started = now()
        self.set(candidate=new.name, currentStep=0, stepStartedAt=started, rolloutStartedAt=started,
                 canaryWeight=0, failedChecks=0, promoting=stable is None, parked=None,
                 phase="Progressing", message=f"Rolling out {new.name}.")
        if stable is None:
            self.event("Deploying", f"Deploying {new.name}: the first version of the family, no canary needed.")
        else:
            self.event("RolloutStarted", f"Rolling out {new.name} beside {stable}: {len(self.steps)} steps.")
        self.out.ready = ("False", "Progressing", f"Rolling out {new.name}.")

    def progress(self) -> None:
        cand = str(self.status["candidate"])
        if (v := self.version(cand)) is not None and v.phase in (None, *ELIGIBLE):
            self.mark_adapter(cand, "Canary", served=True)
        obs = self.sync_service()
        if self.annotations.get(ABORT_ANNOTATION) == cand:
            return self.rollback("Aborted", f"{cand} was aborted by hand ({ABORT_ANNOTATION}).")
        if failure := failed_since(obs, self.status.get("rolloutStartedAt")):
            return self.rollback("CandidateFailed", f"{cand} failed to load: {failure}")
        if self.status.get("promoting"):
            return self.finish_promotion(obs)
        if self.annotations.get(PROMOTE_ANNOTATION) == cand:
            return self.promote(f"{cand} promoted by hand ({PROMOTE_ANNOTATION}).")
        if self.spec.paused:
            self.set(phase="Paused", message="Paused by spec.paused; set it to false (kubectl tunerag resume) to go on.")
            self.out.ready = ("False", "Paused", self.status["message"])
            return None
        # Steps whose condition already holds are passed in the same pass (a step that is done
        # does not wait a tick for the next one to start); each advance is in this pass's status.
        for _ in range(len(self.steps) + 1):
            i = int(self.status.get("currentStep") or 0)
            if i >= len(self.steps):
                if self.spec.promotion == "Manual":
                    self.set(phase="Paused", message=f"All steps passed; waiting for a promote (kubectl tunerag promote {self.name}).")
                    self.out.ready = ("False", "AwaitingPromotion", self.status["message"])
                    return None
                return self.promote(f"{cand} passed all {len(self.steps)} steps.")
            step = self.steps[i]
            self.out.ready = ("False", "Progressing", f"{cand}: step {i + 1}/{len(self.steps)} ({step.describe()}).")
            if step.kind == "setWeight":
                self.set_weight(i, step.weight, obs)
            elif step.kind == "pause":
                self.pause(i, step.duration)
            else:
                self.analyse(i, step.metrics)
            if self.status.get("candidate") != cand or int(self.status.get("currentStep") or 0) == i:
                return None  # waiting at this step, or rolled back
            obs = self.observed()
        return None

    def advance(self, i: int, note: str) -> None:
        self.set(currentStep=i + 1, stepStartedAt=now(), phase="Progressing", message=note)

    def set_weight(self, i: int, weight: int, obs: Observed) -> None:
        if int(self.status.get("canaryWeight") or 0) != weight:
            self.set(canaryWeight=weight, stepStartedAt=now(), message=f"Shifting {weight}% to {self.status['candidate']}.")
            self.sync_service()
            moved = self.wait_for_service(lambda o: o.candidate_weight == weight and o.ready)
            if moved is None:
                return
            obs = moved
        if obs.candidate_weight == weight and obs.ready:
            self.event("TrafficShifted", f"{self.status['candidate']} takes {weight}% of traffic.")
            return self.advance(i, f"{self.status['candidate']} at {weight}%.")
        if _age(self.status.get("stepStartedAt")) > durations.seconds(self.spec.analysis.progress_deadline):
            return self.rollback("ProgressDeadlineExceeded",
                                 f"{self.status['candidate']} did not reach {weight}% within {self.spec.analysis.progress_deadline}.")
        self.set(phase="Progressing", message=f"Waiting for KServe to route {weight}% to {self.status['candidate']}.")
        return None

    def pause(self, i: int, duration: float | None) -> None:
        cand = self.status["candidate"]
        if duration is None:
            if self.annotations.get(RESUME_ANNOTATION) == f"{cand}/{i}":
                return self.advance(i, "Resumed by hand.")
            self.set(phase="Paused", message=f"Paused at step {i + 1} until resumed (kubectl tunerag resume {self.name}).")
            self.out.ready = ("False", "Paused", self.status["message"])
            return None
        remaining = duration - _age(self.status.get("stepStartedAt"))
        if 0 < remaining <= self.settle:  # ends before the next pass: end it on time
            time.sleep(remaining)
            remaining = 0
        if remaining <= 0:
            return self.advance(i, f"Pause of {duration:g}s done.")
        self.set(phase="Progressing", message=f"Pausing {duration:g}s at {self.status.get('canaryWeight', 0)}%.")
        return None

    def analyse(self, i: int, names: tuple[str, ...]) -> None:
        a = self.spec.analysis
        cand = str(self.status["candidate"])
        interval = durations.seconds(a.interval)
        mine = [r for r in self.status.get("analysisRuns") or [] if r.get("candidate") == cand and r.get("step") == i]
        last = mine[-1]["time"] if mine else self.status.get("stepStartedAt")
        due_in = interval - _age(last)
        if due_in > self.settle:
            return None
        if due_in > 0:  # due before the next pass: measure on time rather than up to a tick late
            time.sleep(due_in)
        subst = {"namespace": self.ns, "service": self.serving.service, "candidate": cand,
                 "stable": str(self.status.get("stable") or "")}
        m = analysis.measure(a, names, subst, interval)
        run = {"time": now(), "candidate": cand, "step": i, "weight": int(self.status.get("canaryWeight") or 0),
               "values": m.values, "verdict": m.verdict}
        self.set(analysisRuns=_append(self.status.get("analysisRuns") or [], run, MAX_RUNS))
        metrics.ROLLOUT_ANALYSIS.labels(self.ns, self.name, m.verdict).inc()
        if m.verdict == "Inconclusive":
            msg = "Analysis inconclusive, paused until metrics answer: " + "; ".join(m.inconclusive)
            if self.status.get("phase") != "Paused":
                self.event("AnalysisInconclusive", msg, warning=True)
            self.set(phase="Paused", message=msg)
            self.out.ready = ("False", "AnalysisInconclusive", msg)
            return None
        if m.verdict == "Failed":
            failed = int(self.status.get("failedChecks") or 0) + 1
            self.set(failedChecks=failed, phase="Progressing")
            detail = "; ".join(m.failed)
            self.event("AnalysisFailed", f"{cand}: {detail} (failed checks {failed}, limit {a.failure_limit}).", warning=True)
            if failed > a.failure_limit:
                return self.rollback("AnalysisFailed", f"{cand} failed analysis {failed} times: {detail}.")
            return None
        passed = sum(1 for r in mine if r.get("verdict") == "Passed") + 1
        if passed >= a.count:
            self.event("AnalysisPassed", f"{cand}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.values.items()))
            return self.advance(i, f"Analysis passed at {self.status.get('canaryWeight', 0)}%.")
        self.set(phase="Progressing", message=f"Analysis {passed}/{a.count} passed.")
        return None

    def promote(self, why: str) -> None:
        self.set(promoting=True, phase="Progressing", message=f"Promoting {self.status['candidate']}: {why}")
        self.sync_service()
        self.out.ready = ("False", "Promoting", self.status["message"])
        if (served := self.wait_for_service(self.promoted)) is not None:
            self.finish_promotion(served)

    def promoted(self, obs: Observed) -> bool:
        """The candidate serves alone. Standard: the canary is gone and the new predictor serves;
        Knative: the latest revision (the candidate's) takes everything."""
        return obs.ready and obs.latest_ready and (
            obs.candidate_weight is None if self.mode == "Standard" else obs.candidate_weight == 100)

    def finish_promotion(self, obs: Observed) -> None:
        cand = str(self.status["candidate"])
        if not self.promoted(obs):
            if _age(self.status.get("stepStartedAt")) > durations.seconds(self.spec.analysis.progress_deadline) and self.status.get("stable"):
                return self.rollback("ProgressDeadlineExceeded", f"{cand} was not serving all traffic within {self.spec.analysis.progress_deadline}.")
            self.out.ready = ("False", "Promoting", f"Waiting for KServe to serve {cand} alone.")
            return None
        old = self.status.get("stable")
        record = {"candidate": cand, "outcome": "Promoted", "time": now(), "reason": "InitialDeployment" if not old else "Promoted"}
        self.set(stable=cand, candidate=None, currentStep=None, canaryWeight=0, promoting=False, phase="Promoted",
                 history=_append(self.status.get("history") or [], record, MAX_HISTORY),
                 message=f"{cand} serves all traffic.")
        self.mark_adapter(cand, "Serving", served=True)
        if old and old != cand:
            self.mark_adapter(old, "Retired", served=False)
        metrics.ROLLOUT_OUTCOMES.labels(self.ns, self.name, "Promoted").inc()
        self.event("Promoted", f"{cand} promoted" + (f"; {old} retired." if old else "."))
        self.out.ready = ("True", "Serving", f"{cand} serves all traffic.")
        return None

    def rollback(self, reason: str, message: str) -> None:
        cand = str(self.status["candidate"])
        stable = self.status.get("stable")
        record = {"candidate": cand, "outcome": "RolledBack", "time": now(), "reason": f"{reason}: {message}"[:1024]}
        self.set(candidate=None, currentStep=None, canaryWeight=0, promoting=False, phase="RolledBack",
                 parked=cand, history=_append(self.status.get("history") or [], record, MAX_HISTORY),
                 message=f"Rolled back {cand}: {message}")
        self.mark_adapter(cand, "RolledBack", served=False)
        metrics.ROLLOUT_OUTCOMES.labels(self.ns, self.name, "RolledBack").inc()
        self.event("RolledBack", f"{cand} rolled back ({reason}): {message} Traffic is back on {stable or 'nothing'}.", warning=True)
        self.sync_service()
        self.out.ready = ("False", reason, f"Rolled back {cand}: {message}") if not stable else ("True", "Serving", f"{stable} serves all traffic; {cand} was rolled back ({reason}).")
        return None

