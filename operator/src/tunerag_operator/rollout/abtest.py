"""The A/B test: the stable service and a second one (`<service>-b`) serving the candidate, behind
a KServe InferenceGraph Splitter, for `duration`; then a two-proportion z-test on the success rate
(requests without server error) or the positive-feedback rate decides. Only a candidate that is
better at the stated confidence is promoted; otherwise the stable stays and the candidate is
marked RolledBack. Too few samples after three durations is Inconclusive: the stable stays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunerag_operator import durations, kubeapi, metrics
from tunerag_operator.api.rolloutpolicy import AbTest
from tunerag_operator.conditions import now
from tunerag_operator.render import inferenceservice as render
from tunerag_operator.render.inferenceservice import Desired
from tunerag_operator.rollout import prometheus
from tunerag_operator.rollout.candidates import select
from tunerag_operator.rollout.observe import Observed, failed_since, observe
from tunerag_operator.rollout.stats import ZTest, two_proportion_z

if TYPE_CHECKING:
    from tunerag_operator.rollout.controller import Pass

_SEL = 'namespace="{ns}",service="{svc}",adapter_version="{version}"'
QUERIES = {
    "successRate": (
        'sum(increase(tunerag_serve_requests_total{{{sel},outcome="ok"}}[{window}])) or vector(0)',
        "sum(increase(tunerag_serve_requests_total{{{sel}}}[{window}]))",
    ),
    "feedbackRate": (
        'sum(increase(tunerag_serve_feedback_total{{{sel},label="positive"}}[{window}])) or vector(0)',
        "sum(increase(tunerag_serve_feedback_total{{{sel}}}[{window}]))",
    ),
}


def b_service(p: Pass) -> str:
    return f"{p.serving.service}-b"


def _arm(p: Pass, service: str, version: str, window: str) -> tuple[int, int] | None:
    ab = p.spec.strategy.ab_test
    assert ab is not None
    address = p.spec.analysis.prometheus_address or ""
    if not address:
        return None
    sel = _SEL.format(ns=p.ns, svc=service, version=version)
    good_q, total_q = QUERIES[ab.metric]
    try:
        good = prometheus.query(address, good_q.format(sel=sel, window=window))
        total = prometheus.query(address, total_q.format(sel=sel, window=window))
    except OSError:
        return None
    if good is None or total is None:
        return None
    return round(good), round(total)


def ab_pass(p: Pass) -> None:
    ab = p.spec.strategy.ab_test
    assert ab is not None
    stable, cand = p.status.get("stable"), p.status.get("candidate")
    if p.status.get("promoting"):
        return p.progress()  # the family's first version, deployed without a test
    if cand is None:
        rolled_back = [h["candidate"] for h in p.status.get("history") or [] if h.get("outcome") == "RolledBack"]

        new = select(p.spec, p.family, stable, rolled_back)
        if new is None or stable is None:
            # Nothing to compare with: the first version is deployed like a canary's first one.
            return p.idle()
        p.set(candidate=new.name, rolloutStartedAt=now(), phase="Progressing", currentStep=0, canaryWeight=ab.split,
              abTest={"decision": "Running", "samples": {}, "rates": {}},
              message=f"A/B test of {new.name} against {stable} for {ab.duration}.")
        p.mark_adapter(new.name, "Canary", served=True)
        p.event("ABTestStarted", f"A/B test: {ab.split}% to {new.name}, {100 - ab.split}% to {stable}, for {ab.duration}.")
    cand = str(p.status["candidate"])
    arm_b = _sync(p, stable, cand)
    result: dict[str, Any] = dict(p.status.get("abTest") or {})
    if p.annotations.get("tunerag.dev/abort") == cand:
        return _finish(p, stable, cand, "RolledBack", "Aborted by hand.", result)
    if failure := failed_since(arm_b, p.status.get("rolloutStartedAt")):
        return _finish(p, stable, cand, "RolledBack", f"{cand} failed to load: {failure}", result)
    if not result.get("startedAt"):
        # The test's clock starts once both arms answer, so a slow load does not eat the duration.
        if not arm_b.ready:
            p.set(message=f"A/B test: waiting for {b_service(p)} to be ready.")
            p.out.ready = ("False", "ABTestStarting", p.status["message"])
            return None
        result["startedAt"] = now()
        p.set(abTest=result)
    elapsed = durations.since(result["startedAt"])
    duration = durations.seconds(ab.duration)
    p.out.ready = ("False", "ABTestRunning", f"A/B test of {cand}: {elapsed:.0f}s of {ab.duration}.")
    if elapsed < duration:
        return None
    window = f"{max(int(elapsed), 2)}s"
    a, b = _arm(p, p.serving.service, str(stable), window), _arm(p, b_service(p), cand, window)
    if a is None or b is None:
        p.set(phase="Paused", message="A/B test: Prometheus has no answer yet; waiting.")
        p.out.ready = ("False", "AnalysisInconclusive", p.status["message"])
        return None
    result["samples"] = {"stable": a[1], "candidate": b[1]}
    d = decide(ab, a, b, elapsed)
    if d.z is not None:
        result.update(rates={"stable": d.z.rate_a, "candidate": d.z.rate_b}, zScore=d.z.z, pValue=d.z.p_value)
    if d.outcome is None:
        p.set(abTest=result, message=d.why)
        return None
    result["decision"] = d.decision
    return _finish(p, stable, cand, d.outcome, d.why, result)


@dataclass(frozen=True)
class Decision:
    decision: str  # status.abTest.decision: Running (keep waiting), Inconclusive, CandidateBetter, StableBetter, NoDifference
    outcome: str | None  # Promoted, RolledBack, or None while the test goes on
    why: str
    z: ZTest | None = None


def decide(ab: AbTest, stable: tuple[int, int], candidate: tuple[int, int], elapsed: float) -> Decision:
    """What a test that has run `elapsed` seconds concludes from (successes, samples) per arm.
    Only a candidate better at the stated confidence is promoted; too few samples after three
    durations is Inconclusive, and the stable stays."""
    duration = durations.seconds(ab.duration)
    a, b = stable, candidate
    if min(a[1], b[1]) < ab.min_samples:
        if elapsed > 3 * duration:
            return Decision("Inconclusive", "RolledBack", f"too few samples after {3 * duration:g}s: {a[1]} and {b[1]} < {ab.min_samples}.")
        return Decision("Running", None, f"A/B test: {a[1]} and {b[1]} samples, waiting for {ab.min_samples} per arm.")
    z = two_proportion_z(a[0], a[1], b[0], b[1])
    significant = z.p_value < 1 - ab.confidence
    if significant and z.z > 0:
        return Decision("CandidateBetter", "Promoted", f"{ab.metric} {z.rate_b:.3f} vs {z.rate_a:.3f}, p={z.p_value:.3g}.", z)
    return Decision("StableBetter" if significant else "NoDifference", "RolledBack",
                    f"{ab.metric} {z.rate_b:.3f} vs {z.rate_a:.3f}, p={z.p_value:.3g}: not better at {ab.confidence:g}.", z)


def _sync(p: Pass, stable: str | None, cand: str) -> Observed:
    """The stable service, the candidate's `-b` service and the Splitter graph, while the test
    runs; returns what KServe reports about the `-b` service."""
    mode = p.mode
    s = p.serving
    p.sync_service()
    for body in (render.inference_service(s, mode, Desired(stable=p.adapter(cand)), name=b_service(p)),
                 render.ab_graph(s, s.service, b_service(p), p.spec.strategy.ab_test.split if p.spec.strategy.ab_test else 50)):
        plural = "inferenceservices" if body["kind"] == "InferenceService" else "inferencegraphs"
        if kubeapi.get_kserve(p.ns, plural, body["metadata"]["name"]) is None:
            kubeapi.create_kserve(body)
    return observe(kubeapi.get_kserve(p.ns, "inferenceservices", b_service(p)), mode)


def _finish(p: Pass, stable: str | None, cand: str, outcome: str, why: str, result: dict[str, Any]) -> None:
    record = {"candidate": cand, "outcome": outcome, "time": now(), "reason": why[:1024]}
    history = [*(p.status.get("history") or []), record][-20:]
    new_stable = cand if outcome == "Promoted" else stable
    p.set(stable=new_stable, candidate=None, currentStep=None, canaryWeight=0, abTest=result, history=history,
          phase=outcome, message=f"A/B test of {cand}: {outcome} ({why})")
    if outcome == "Promoted":
        p.mark_adapter(cand, "Serving", served=True)
        p.mark_adapter(stable, "Retired", served=False)
    else:
        p.mark_adapter(cand, "RolledBack", served=False)
    p.sync_service()  # the stable service now serves the winner
    kubeapi.delete_kserve(p.ns, "inferencegraphs", f"{p.serving.service}-ab")
    kubeapi.delete_kserve(p.ns, "inferenceservices", b_service(p))
    metrics.ROLLOUT_OUTCOMES.labels(p.ns, p.name, outcome).inc()
    p.event("ABTestFinished", f"{cand}: {outcome}. {why}", warning=outcome != "Promoted")
    p.out.ready = ("True", "Serving", f"{new_stable} serves all traffic; A/B test {outcome}.")
