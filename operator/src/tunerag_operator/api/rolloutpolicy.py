"""RolloutPolicy: serving adapters on KServe with canary steps or A/B tests, analysed on metrics."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import ConfigDict, Field, model_validator

from tunerag_operator.api.common import (
    DNS_LABEL,
    SQL_IDENTIFIER,
    ApiModel,
    DurationAtLeast1s,
    DurationAtLeast10s,
    DurationAtLeast30s,
    NonBlank,
    PodResources,
    ResourceRef,
    SecretKeyRef,
    StatusBase,
    Uri,
    UserSchema,
)

# One-shot manual actions are annotations naming the candidate they apply to, so a stale action
# (left over from an earlier rollout) never acts on a new candidate. `kubectl tunerag` sets them.
PROMOTE_ANNOTATION = "tunerag.dev/promote"  # value: the candidate to promote now
ABORT_ANNOTATION = "tunerag.dev/abort"  # value: the candidate to roll back now
RESUME_ANNOTATION = "tunerag.dev/resume"  # value: "<candidate>/<step>": continue past an untimed pause

# What a spec must not leave out for its analysis to ever pass, its A/B test to ever decide, or its
# predictor to start (each a CEL rule below, mirrored by a model validator).
BUILTIN_NEEDS_ADDRESS = "built-in metrics are read from prometheusAddress: set it, or the analysis can never pass"
AB_NEEDS_ADDRESS = "an A/B test reads both arms from analysis.prometheusAddress: set it, or the test can never decide"
UNDEFINED_METRIC = "an analysis step names a metric that spec.analysis.metrics does not define"
NO_METRICS = "analysis steps need spec.analysis.metrics: with none, the analysis can never pass"
FEEDBACK_NEEDS_DATABASE = ("feedback needs a database: set feedback.connectionSecret, or retrieval (its VectorIndex's "
                           "database is used)")


QUANTIZED_NEEDS_TUNERAG = ("artifact quantized is served by the tunerag runtime only: vllm serves the base model with "
                          "LoRA modules")
QUANTIZED_NOT_4BIT = "artifact quantized serves each version's own quantized model: loadIn4Bit quantizes a base model, which is not loaded"


class Target(ApiModel):
    """The InferenceService the policy drives."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.artifact != 'quantized' || self.runtime == 'tunerag'", "message": QUANTIZED_NEEDS_TUNERAG,
         "fieldPath": ".artifact"},
        {"rule": "self.artifact != 'quantized' || !self.loadIn4Bit", "message": QUANTIZED_NOT_4BIT, "fieldPath": ".loadIn4Bit"},
    ]})

    inference_service: str = Field(pattern=DNS_LABEL, max_length=45, description="Name of the InferenceService (same namespace).")
    adopt: bool = Field(default=False, description="Adopt an existing InferenceService instead of creating one.")
    deployment_mode: Literal["Knative", "Standard"] = Field(default="Standard", description="KServe deployment mode: Knative (canaryTrafficPercent) or Standard (spec.canary).")
    runtime: Literal["tunerag", "vllm"] = Field(default="tunerag", description="tunerag's own server, or KServe's Hugging Face runtime with vLLM LoRA.")
    base_model: Uri
    max_new_tokens: int = Field(default=64, ge=1, le=8192, description="Most tokens generated per request (tunerag runtime).")
    load_in_4bit: bool = Field(default=False, description="Load the base model 4-bit (tunerag runtime).")
    artifact: Literal["adapter", "quantized"] = Field(default="adapter", description="What each AdapterVersion is served as: adapter (the base model with the version's LoRA adapter, spec.artifact) or quantized (the version's merged, quantized model, spec.quantized, alone; tunerag runtime only; versions without one within its quality tolerance are not rolled out).")
    resources: PodResources = Field(default_factory=PodResources, description="Predictor resources.")

    @model_validator(mode="after")
    def _quantized_on_tunerag(self) -> Self:
        if self.artifact == "quantized" and self.runtime != "tunerag":
            raise ValueError(f"artifact: {QUANTIZED_NEEDS_TUNERAG}")
        if self.artifact == "quantized" and self.load_in_4bit:
            raise ValueError(f"loadIn4Bit: {QUANTIZED_NOT_4BIT}")
        return self


class AdapterSelector(ApiModel):
    """Which AdapterVersions become candidates."""

    family: str = Field(pattern=DNS_LABEL, max_length=48, description="Adapter family; its newest Validated version becomes the candidate.")
    version: int | None = Field(default=None, ge=1, description="Pin an explicit version instead of the newest.")


class Retrieval(ApiModel):
    """Retrieval-augmented prompting."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.promptTemplate.contains('{question}')",
         "message": "must contain {question}: without it the model never sees the question", "fieldPath": ".promptTemplate"},
        {"rule": "self.promptTemplate.contains('{context}')",
         "message": "must contain {context}: without it the retrieved chunks never reach the model", "fieldPath": ".promptTemplate"},
    ]})

    vector_index: ResourceRef = Field(description="VectorIndex in the same namespace.")
    top_k: int = Field(default=4, ge=1, le=100, description="Chunks retrieved per request.")
    prompt_template: str = Field(default="Context:\n{context}\n\nQuestion: {question}\nAnswer:", max_length=8192, description="Prompt template; must contain {context} and {question}.")
    hybrid: bool = Field(default=False, description="Fuse full-text and vector search (reciprocal rank fusion).")

    @model_validator(mode="after")
    def _template_uses_both(self) -> Self:
        if "{question}" not in self.prompt_template:
            raise ValueError("promptTemplate must contain {question}: without it the model never sees the question")
        if "{context}" not in self.prompt_template:
            raise ValueError("promptTemplate must contain {context}: without it the retrieved chunks never reach the model")
        return self


class Feedback(ApiModel):
    """The inference log: every exchange and the feedback posted on it, for continuous training."""

    connection_secret: SecretKeyRef | None = Field(default=None, description="Secret key with the PostgreSQL URI; defaults to the retrieval VectorIndex's database.")
    schema_: UserSchema = Field(default="public", alias="schema", pattern=SQL_IDENTIFIER, max_length=63, description="Schema of the feedback table; not a PostgreSQL system schema (pg_*, information_schema).")
    table: str = Field(default="tunerag_feedback", pattern=SQL_IDENTIFIER, max_length=63, description="Feedback table, created on first use.")


class Pause(ApiModel):
    """A pause; without a duration it waits for a resume."""

    duration: DurationAtLeast1s | None = Field(default=None, description="How long to pause, e.g. 5m; at least 1s. Unset: until resumed.")


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


# The steps that move traffic or measure it, in order: the first must put traffic on the candidate.
_MOVES = "self.steps.filter(s, has(s.analysis) || (has(s.setWeight) && s.setWeight > 0))"
ANALYSIS_BEFORE_TRAFFIC = ("an analysis step before the first setWeight above 0 measures a candidate that takes no "
                           "traffic: it can never pass")


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
        {"rule": f"size({_MOVES}) == 0 || has({_MOVES}[0].setWeight)",
         "message": ANALYSIS_BEFORE_TRAFFIC, "fieldPath": ".steps"},
    ]})

    steps: list[CanaryStep] = Field(default_factory=list, max_length=32, description="Ordered steps.")
    step_weight: int | None = Field(default=None, ge=1, le=100, description="Shorthand: raise the weight by this much per interval, with analysis, up to maxWeight, then promote.")
    max_weight: int = Field(default=100, ge=1, le=100, description="Shorthand: the last weight before promotion.")

    @model_validator(mode="after")
    def _traffic_before_analysis(self) -> Self:
        moves = [s for s in self.steps if s.analysis is not None or (s.set_weight or 0) > 0]
        if moves and moves[0].set_weight is None:
            raise ValueError(f"steps: {ANALYSIS_BEFORE_TRAFFIC}")
        return self


class AbTest(ApiModel):
    """Two InferenceServices behind a KServe InferenceGraph Splitter."""

    split: int = Field(default=50, ge=1, le=99, description="Percentage of traffic to the candidate.")
    duration: DurationAtLeast10s = Field(description="How long both arms take traffic before the test decides, e.g. 1h; at least 10s (Prometheus needs scrapes of both arms in the window).")
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
    """Bounds a metric value must stay within: at least one, and min not above max."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.min) || has(self.max)", "message": "set min, max or both: a range without bounds passes every value"},
        {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
         "message": "min must not exceed max: no value could pass", "fieldPath": ".min"},
    ]})

    min: float | None = Field(default=None, description="Lowest passing value.")
    max: float | None = Field(default=None, description="Highest passing value.")

    @model_validator(mode="after")
    def _some_value_passes(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("set min, max or both: a range without bounds passes every value")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max: no value could pass")
        return self


class PrometheusQuery(ApiModel):
    """A PromQL query; {{candidate}}, {{stable}} and {{namespace}} are substituted."""

    address: str = Field(pattern=r"^https?://[^\s]+$", max_length=1024, description="Prometheus base URL.")
    query: NonBlank = Field(max_length=8192, description="PromQL template returning one scalar; not blank.")


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

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.prometheusAddress) || !self.metrics.exists(m, has(m.builtin))",
         "message": BUILTIN_NEEDS_ADDRESS, "fieldPath": ".prometheusAddress"},
    ]})

    interval: DurationAtLeast1s = Field(default="1m", description="Time between measurements, e.g. 1m; at least 1s.")
    count: int = Field(default=1, ge=1, le=100, description="Passing measurements an analysis step needs before it moves on.")
    failure_limit: int = Field(default=2, ge=0, le=100, description="Failed checks tolerated before rolling back.")
    progress_deadline: DurationAtLeast30s = Field(default="30m", description="How long KServe may take to move traffic to a step's weight, or to serve a promoted candidate alone, before the candidate is rolled back; at least 30s.")
    prometheus_address: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=1024, description="Prometheus for built-in metrics and A/B tests.")
    metrics: list[Metric] = Field(default_factory=list, max_length=16, description="Metrics checked at each analysis.",
                                  json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})

    @model_validator(mode="after")
    def _builtin_metrics_have_an_address(self) -> Self:
        if self.prometheus_address is None and any(m.builtin is not None for m in self.metrics):
            raise ValueError(f"prometheusAddress: {BUILTIN_NEEDS_ADDRESS}")
        return self



class RolloutPolicySpec(ApiModel):
    """Progressive delivery of adapter versions."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.strategy.type != 'abTest' || has(self.analysis.prometheusAddress)",
         "message": AB_NEEDS_ADDRESS, "fieldPath": ".analysis.prometheusAddress"},
        {"rule": "!has(self.strategy.canary) || self.strategy.canary.steps.all(s, !has(s.analysis) || "
                 "s.analysis.metrics.all(n, self.analysis.metrics.exists(m, m.name == n)))",
         "message": UNDEFINED_METRIC, "fieldPath": ".strategy.canary.steps"},
        {"rule": "!has(self.strategy.canary) || size(self.analysis.metrics) > 0 || "
                 "!self.strategy.canary.steps.exists(s, has(s.analysis))",
         "message": NO_METRICS, "fieldPath": ".analysis.metrics"},
        {"rule": "!has(self.feedback) || has(self.feedback.connectionSecret) || has(self.retrieval)",
         "message": FEEDBACK_NEEDS_DATABASE, "fieldPath": ".feedback.connectionSecret"},
    ]})

    target: Target = Field(description="The InferenceService.")
    adapter_selector: AdapterSelector = Field(description="Candidate adapters.")
    retrieval: Retrieval | None = Field(default=None, description="Retrieval from a VectorIndex.")
    feedback: Feedback | None = Field(default=None, description="Log exchanges and feedback to PostgreSQL (needs a database: a connectionSecret, or retrieval's).")
    strategy: Strategy = Field(default_factory=lambda: Strategy(canary=Canary(step_weight=20)), description="Canary or A/B test.")
    analysis: Analysis = Field(default_factory=Analysis, description="Metric analysis.")
    promotion: Literal["Automatic", "Manual"] = Field(default="Automatic", description="Promote automatically after the last step, or wait for a promote.")
    paused: bool = Field(default=False, description="Hold the rollout at its current step (promote, abort and resume are annotations: see kubectl tunerag).")

    @model_validator(mode="after")
    def _every_part_can_act(self) -> Self:
        if self.strategy.type == "abTest" and self.analysis.prometheus_address is None:
            raise ValueError(f"analysis.prometheusAddress: {AB_NEEDS_ADDRESS}")
        analysed = [s.analysis for s in (self.strategy.canary.steps if self.strategy.canary else []) if s.analysis]
        defined = {m.name for m in self.analysis.metrics}
        if any(set(a.metrics) - defined for a in analysed):
            undefined = sorted({n for a in analysed for n in a.metrics} - defined)
            raise ValueError(f"strategy.canary.steps: {UNDEFINED_METRIC} ({', '.join(undefined)})")
        if analysed and not defined:
            raise ValueError(f"analysis.metrics: {NO_METRICS}")
        if self.feedback is not None and self.feedback.connection_secret is None and self.retrieval is None:
            raise ValueError(f"feedback.connectionSecret: {FEEDBACK_NEEDS_DATABASE}")
        return self


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
