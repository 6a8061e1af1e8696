"""`kubectl tunerag describe rollout NAME`: a RolloutPolicy's rollout as kubectl describe would
show it. Steps are numbered from 1 (status.currentStep is the 0-based index of the current one)."""

from __future__ import annotations

from typing import Any

from tunerag_operator.cli.cluster import Cluster, event_time
from tunerag_operator.cli.summary import canary_steps, step_progress
from tunerag_operator.cli.text import NONE, age, number, percent, table

Obj = dict[str, Any]
RECENT_EVENTS = 20


def fields(pairs: list[tuple[str, str]], indent: str = "") -> str:
    width = max(len(k) for k, _ in pairs) + 2
    return "".join(f"{indent}{(k + ':').ljust(width)}{v}\n" for k, v in pairs)


def step_text(step: Obj) -> str:
    if step.get("setWeight") is not None:
        return f"setWeight {step['setWeight']}%"
    if "pause" in step:
        duration = (step.get("pause") or {}).get("duration")
        return f"pause {duration}" if duration else "pause (until resumed)"
    metrics = (step.get("analysis") or {}).get("metrics") or []
    return f"analysis ({', '.join(metrics) if metrics else 'all metrics'})"


def strategy_fields(spec: Obj) -> list[tuple[str, str]]:
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "abTest":
        ab = strategy.get("abTest") or {}
        return [("Strategy", f"A/B test, {ab.get('split')}% to the candidate for {ab.get('duration')}"),
                ("Test", f"{ab.get('metric')}, confidence {ab.get('confidence')}, at least {ab.get('minSamples')} samples per arm")]
    canary = strategy.get("canary") or {}
    if canary.get("steps"):
        return [("Strategy", "canary")]
    return [("Strategy", f"canary, +{canary.get('stepWeight')}% per analysis up to {canary.get('maxWeight', 100)}%, then promote")]


def steps_section(obj: Obj, current: int | None) -> str:
    steps = canary_steps(obj)
    if not steps:
        return ""
    rows = [[">" if i == current else "", str(i + 1), step_text(s)] for i, s in enumerate(steps)]
    return "Steps:\n" + table(["", "STEP", "ACTION"], rows, indent="  ")


def analysis_section(spec: Obj, runs: list[Obj]) -> str:
    if not runs:
        return f"Analysis runs:  {NONE}\n"
    names = [m["name"] for m in (spec.get("analysis") or {}).get("metrics") or []]
    names += sorted({k for r in runs for k in r.get("values") or {}} - set(names))
    with_candidate = any(r.get("candidate") for r in runs)  # older runs may not name it
    rows = [[r.get("time", ""), *([r.get("candidate") or NONE] if with_candidate else []), str(r.get("step", 0) + 1),
             percent(r.get("weight")), *[number((r.get("values") or {}).get(n)) for n in names], r.get("verdict", "")]
            for r in runs]
    headers = ["TIME", *(["CANDIDATE"] if with_candidate else []), "STEP", "WEIGHT", *names, "VERDICT"]
    return "Analysis runs:\n" + table(headers, rows, indent="  ")


def ab_section(ab: Obj | None) -> str:
    if not ab:
        return ""
    pairs = [("Started", ab.get("startedAt") or NONE),
             ("Samples", " ".join(f"{k}={v}" for k, v in (ab.get("samples") or {}).items()) or NONE),
             ("Rates", " ".join(f"{k}={number(v)}" for k, v in (ab.get("rates") or {}).items()) or NONE),
             ("z / p", f"{number(ab.get('zScore'))} / {number(ab.get('pValue'))}"),
             ("Decision", ab.get("decision") or NONE)]
    return "A/B test:\n" + fields(pairs, indent="  ")


def history_section(history: list[Obj]) -> str:
    if not history:
        return f"History:  {NONE}\n"
    rows = [[h.get("time", ""), h.get("candidate", ""), h.get("outcome", ""), h.get("reason") or ""] for h in history]
    return "History:\n" + table(["TIME", "CANDIDATE", "OUTCOME", "REASON"], rows, indent="  ")


def conditions_section(conditions: list[Obj]) -> str:
    if not conditions:
        return f"Conditions:  {NONE}\n"
    rows = [[c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message") or ""] for c in conditions]
    return "Conditions:\n" + table(["TYPE", "STATUS", "REASON", "MESSAGE"], rows, indent="  ")


def events_section(events: list[Obj]) -> str:
    if not events:
        return f"Events:  {NONE}\n"
    rows = []
    for e in events[-RECENT_EVENTS:]:
        when = age(event_time(e))
        if (e.get("count") or 1) > 1:
            when += f" (x{e['count']} over {age(e.get('firstTimestamp') or event_time(e))})"
        source = (e.get("source") or {}).get("component") or e.get("reportingComponent") or ""
        rows.append([e.get("type", ""), e.get("reason", ""), when, source, e.get("message", "")])
    return "Events:\n" + table(["TYPE", "REASON", "AGE", "FROM", "MESSAGE"], rows, indent="  ")


def render(obj: Obj, events: list[Obj]) -> str:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    target = spec.get("target") or {}
    steps, step = canary_steps(obj), status.get("currentStep")
    if step is not None and 0 <= step < len(steps):
        step_cell = f"{step + 1}/{len(steps)}, {step_text(steps[step])}"
    else:
        step_cell = NONE if step is None else step_progress(step, len(steps))
    limit = (spec.get("analysis") or {}).get("failureLimit")
    head = fields([
        ("Name", meta["name"]), ("Namespace", meta.get("namespace", "")),
        ("Service", f"{target.get('inferenceService')} ({target.get('deploymentMode')}, {target.get('runtime')} runtime)"),
        ("Family", (spec.get("adapterSelector") or {}).get("family") or NONE),
        ("Phase", status.get("phase") or NONE), ("Message", status.get("message") or NONE),
        ("Stable", status.get("stable") or NONE), ("Candidate", status.get("candidate") or NONE),
        ("Step", step_cell), ("Canary weight", percent(status.get("canaryWeight"))),
        ("Failed checks", f"{status.get('failedChecks', 0)} (limit {limit})"),
        ("Paused", str(bool(spec.get("paused"))).lower()), ("Promotion", spec.get("promotion") or NONE),
        *strategy_fields(spec),
    ])
    return "".join([head, steps_section(obj, step), analysis_section(spec, status.get("analysisRuns") or []),
                    ab_section(status.get("abTest")), history_section(status.get("history") or []),
                    conditions_section(status.get("conditions") or []), events_section(events)])


def run(cluster: Cluster, name: str) -> str:
    obj = cluster.get("rolloutpolicies", name)
    return render(obj, cluster.events(obj))
