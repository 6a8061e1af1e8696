"""RolloutPolicy: serving adapters on KServe with canary steps or A/B tests, analysed on metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from tunerag_operator.api.common import (
    DNS_LABEL,
    SQL_IDENTIFIER,
    ApiModel,
    Duration,
    PodResources,
    ResourceRef,
    SecretKeyRef,
    StatusBase,
    Uri,
)

# One-shot manual actions are annotations naming the candidate they apply to, so a stale action
# (left over from an earlier rollout) never acts on a new candidate. `kubectl tunerag` sets them.
PROMOTE_ANNOTATION = "tunerag.dev/promote"  # value: the candidate to promote now
ABORT_ANNOTATION = "tunerag.dev/abort"  # value: the candidate to roll back now
RESUME_ANNOTATION = "tunerag.dev/resume"  # value: "<candidate>/<step>": continue past an untimed pause


class Target(ApiModel):
    """The InferenceService the policy drives."""

    inference_service: str = Field(pattern=DNS_LABEL, max_length=45, description="Name of the InferenceService (same namespace).")
    adopt: bool = Field(default=False, description="Adopt an existing InferenceService instead of creating one.")
    deployment_mode: Literal["Knative", "Standard"] = Field(default="Standard", description="KServe deployment mode: Knative (canaryTrafficPercent) or Standard (spec.canary).")
    runtime: Literal["tunerag", "vllm"] = Field(default="tunerag", description="tunerag's own server, or KServe's Hugging Face runtime with vLLM LoRA.")
    base_model: Uri
    max_new_tokens: int = Field(default=64, ge=1, le=8192, description="Most tokens generated per request (tunerag runtime).")
    load_in_4bit: bool = Field(default=False, description="Load the base model 4-bit (tunerag runtime).")
    resources: PodResources = Field(default_factory=PodResources, description="Predictor resources.")


class AdapterSelector(ApiModel):
    """Which AdapterVersions become candidates."""

    family: str = Field(pattern=DNS_LABEL, max_length=48, description="Adapter family; its newest Validated version becomes the candidate.")
    version: int | None = Field(default=None, ge=1, description="Pin an explicit version instead of the newest.")


class Retrieval(ApiModel):
    """Retrieval-augmented prompting."""

    vector_index: ResourceRef = Field(description="VectorIndex in the same namespace.")
    top_k: int = Field(default=4, ge=1, le=100, description="Chunks retrieved per request.")
    prompt_template: str = Field(default="Context:\n{context}\n\nQuestion: {question}\nAnswer:", max_length=8192, description="Prompt template with {context} and {question}.")
    hybrid: bool = Field(default=False, description="Fuse full-text and vector search (reciprocal rank fusion).")


class Feedback(ApiModel):
    """The inference log: every exchange and the feedback posted on it, for continuous training."""

    connection_secret: SecretKeyRef | None = Field(default=None, description="Secret key with the PostgreSQL URI; defaults to the retrieval VectorIndex's database.")
    schema_: str = Field(default="public", alias="schema", pattern=SQL_IDENTIFIER, max_length=63, description="Schema of the feedback table.")
    table: str = Field(default="tunerag_feedback", pattern=SQL_IDENTIFIER, max_length=63, description="Feedback table, created on first use.")


class Pause(ApiModel):
    """A pause; without a duration it waits for a resume."""

    duration: Duration | None = None


class StepAnalysis(ApiModel):
    """Run the policy's analysis metrics at this step."""

    metrics: list[str] = Field(default_factory=list, max_length=16, description="Names of spec.analysis.metrics to run; empty runs all.")


class CanaryStep(ApiModel):
    """One step: exactly one of setWeight, pause or analysis."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0) + (has(self.analysis) ? 1 : 0) == 1",
         "message": "a step sets exactly one of setWeight, pause or analysis"},
    ]})

    set_weight: int | None = Field(default=None, ge=0, le=100, description="Send this percentage of traffic to the candidate.")
    pause: Pause | None = Field(default=None, description="Pause, for a duration or until resumed.")
    analysis: StepAnalysis | None = Field(default=None, description="Run analysis before going on.")


class Canary(ApiModel):
    """Canary steps, or the stepWeight/maxWeight shorthand."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "size(self.steps) > 0 || has(self.stepWeight)", "message": "set steps or stepWeight"},
        {"rule": "size(self.steps) == 0 || !has(self.stepWeight)", "message": "steps and stepWeight are exclusive"},
        {"rule": "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()",
         "message": "setWeight values must ascend", "fieldPath": ".steps"},
        {"rule": "size(self.steps) == 0 || self.steps.exists(s, has(s.setWeight) && s.setWeight == 100)",
         "message": "canary weights must end at 100", "fieldPath": ".steps"},
        {"rule": "!has(self.stepWeight) || self.stepWeight <= self.maxWeight", "message": "stepWeight must not exceed maxWeight"},
    ]})

    steps: list[CanaryStep] = Field(default_factory=list, max_length=32, description="Ordered steps.")
    step_weight: int | None = Field(default=None, ge=1, le=100, description="Shorthand: raise the weight by this much per interval, with analysis, up to maxWeight, then promote.")
    max_weight: int = Field(default=100, ge=1, le=100, description="Shorthand: the last weight before promotion.")


class AbTest(ApiModel):
    """Two InferenceServices behind a KServe InferenceGraph Splitter."""

    split: int = Field(default=50, ge=1, le=99, description="Percentage of traffic to the candidate.")
    duration: Duration
    metric: Literal["successRate", "feedbackRate"] = Field(default="feedbackRate", description="Proportion compared with a two-proportion z-test.")
    confidence: float = Field(default=0.95, ge=0.5, le=0.999, description="Confidence level of the decision.")
    min_samples: int = Field(default=100, ge=10, description="Samples per arm before deciding.")


class Strategy(ApiModel):
    """How the candidate is brought in."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.type != 'canary' || has(self.canary)", "message": "type canary requires canary"},
        {"rule": "self.type != 'abTest' || has(self.abTest)", "message": "type abTest requires abTest"},
    ]})

    type: Literal["canary", "abTest"] = Field(default="canary", description="canary or abTest.")
    canary: Canary | None = Field(default=None, description="Canary steps.")
    ab_test: AbTest | None = Field(default=None, description="A/B test settings.")


class ThresholdRange(ApiModel):
    """Bounds a metric value must stay within."""

    min: float | None = Field(default=None, description="Lowest passing value.")
    max: float | None = Field(default=None, description="Highest passing value.")


class PrometheusQuery(ApiModel):
    """A PromQL query; {{candidate}}, {{stable}} and {{namespace}} are substituted."""

    address: str = Field(pattern=r"^https?://[^\s]+$", max_length=1024, description="Prometheus base URL.")
    query: str = Field(max_length=8192, description="PromQL template returning one scalar.")


class Metric(ApiModel):
    """One analysis metric."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.prometheus) != has(self.builtin)", "message": "set exactly one of prometheus or builtin"},
    ]})

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Metric name, unique in the policy.")
    builtin: Literal["errorRate", "latencyP95"] | None = Field(default=None, description="A built-in metric from the server's own metrics.")
    prometheus: PrometheusQuery | None = Field(default=None, description="A custom Prometheus query.")
    threshold_range: ThresholdRange = Field(description="Passing range.")


class Analysis(ApiModel):
    """Metric analysis of the candidate: each analysis step takes `count` measurements, `interval`
    apart; more than `failureLimit` failed measurements in one rollout roll it back."""

    interval: Duration = "1m"
    count: int = Field(default=1, ge=1, le=100, description="Passing measurements an analysis step needs before it moves on.")
    failure_limit: int = Field(default=2, ge=0, le=100, description="Failed checks tolerated before rolling back.")
    progress_deadline: Duration = "30m"
    prometheus_address: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=1024, description="Prometheus for built-in metrics.")
    metrics: list[Metric] = Field(default_factory=list, max_length=16, description="Metrics checked at each analysis.",
                                  json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})


class RolloutPolicySpec(ApiModel):
    """Progressive delivery of adapter versions."""

    target: Target = Field(description="The InferenceService.")
    adapter_selector: AdapterSelector = Field(description="Candidate adapters.")
    retrieval: Retrieval | None = Field(default=None, description="Retrieval from a VectorIndex.")
    feedback: Feedback | None = Field(default=None, description="Log exchanges and feedback to PostgreSQL (needs a database: a connectionSecret, or retrieval's).")
    strategy: Strategy = Field(default_factory=lambda: Strategy(canary=Canary(step_weight=20)), description="Canary or A/B test.")
    analysis: Analysis = Field(default_factory=Analysis, description="Metric analysis.")
    promotion: Literal["Automatic", "Manual"] = Field(default="Automatic", description="Promote automatically after the last step, or wait for a promote.")
    paused: bool = Field(default=False, description="Hold the rollout at its current step (promote, abort and resume are annotations: see kubectl tunerag).")


class AnalysisRun(ApiModel):
    """One analysis measurement."""

    time: str = Field(description="When it ran.")
    candidate: str = Field(default="", description="AdapterVersion analysed.")
    step: int = Field(description="Step index.")
    weight: int = Field(description="Candidate weight at the time.")
    values: dict[str, float] = Field(default_factory=dict, description="Measured values by metric.")
    verdict: Literal["Passed", "Failed", "Inconclusive"] = Field(description="Outcome.")


class AbTestResult(ApiModel):
    """The state and outcome of an A/B test."""

    started_at: str | None = Field(default=None, description="When both arms started taking traffic (unset while the candidate's service starts).")
    samples: dict[str, int] = Field(default_factory=dict, description="Samples per arm (stable, candidate).")
    rates: dict[str, float] = Field(default_factory=dict, description="Success or feedback rate per arm.")
    z_score: float | None = Field(default=None, description="Two-proportion z statistic (candidate minus stable).")
    p_value: float | None = Field(default=None, description="Two-sided p-value.")
    decision: Literal["Running", "CandidateBetter", "NoDifference", "StableBetter", "Inconclusive"] = Field(default="Running", description="Outcome of the test.")


class RolloutRecord(ApiModel):
    """A finished rollout."""

    candidate: str = Field(description="AdapterVersion rolled out.")
    outcome: Literal["Promoted", "RolledBack", "Failed"] = Field(description="How it ended.")
    time: str = Field(description="When it ended.")
    reason: str = Field(default="", description="Why.")


class RolloutPolicyStatus(StatusBase):
    """Observed state of a RolloutPolicy."""

    phase: Literal["Idle", "Progressing", "Paused", "Promoted", "RolledBack", "Failed"] | None = Field(default=None, description="Summary of the rollout's state.")
    stable: str | None = Field(default=None, description="AdapterVersion serving most traffic.")
    candidate: str | None = Field(default=None, description="AdapterVersion being rolled out.")
    current_step: int | None = Field(default=None, description="Index of the current step.")
    step_started_at: str | None = Field(default=None, description="When the current step started.")
    rollout_started_at: str | None = Field(default=None, description="When the current rollout started.")
    promoting: bool = Field(default=False, description="The candidate passed its steps and is being made the only version served.")
    parked: str | None = Field(default=None, description="Knative mode: the last rolled-back candidate, whose revision stays at 0% until the next rollout.")
    last_sync: str | None = Field(default=None, description="When a pass of the controller last changed the status (a pass that changes nothing writes nothing).")
    message: str | None = Field(default=None, description="What the rollout is doing or waiting for.")
    canary_weight: int | None = Field(default=None, description="Candidate traffic percentage.")
    failed_checks: int = Field(default=0, description="Failed analysis checks in this rollout.")
    analysis_runs: list[AnalysisRun] = Field(default_factory=list, max_length=50, description="Recent analysis runs (bounded).")
    ab_test: AbTestResult | None = Field(default=None, description="The running or last A/B test.")
    history: list[RolloutRecord] = Field(default_factory=list, max_length=20, description="Finished rollouts (bounded).")
