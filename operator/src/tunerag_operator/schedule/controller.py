"""The schedule's state machine: one level-triggered pass over a FineTuneSchedule.

All state lives in the schedule's status: the run counter, the active run (its stage and the
names of what it created), the watermark and the history. A run's objects are named by its
number, and a trigger is recorded in the status before anything is created, so a pass that runs
twice, or after the operator restarted between trigger and run, finds or creates the same objects
and never starts a second run.

    Idle ──cron due / minNewSamples reached──► BuildingDataset (Job <name>-<n>-data)
      ▲                                             │ dataset built (watermark advances)
      │                                             ▼
      └──── history += Succeeded | Rejected | Failed | Skipped ◄── Training (FineTuneJob <name>-<n>)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from tunerag_operator import cron, durations, events, kubeapi, runstate
from tunerag_operator.api.finetuneschedule import ActiveRun, FineTuneScheduleSpec, RunRecord
from tunerag_operator.api.kinds import ADAPTERVERSION, FINETUNEJOB, FINETUNESCHEDULE
from tunerag_operator.references import Problem
from tunerag_operator.render.workload import Owner, WorkloadRun, config_map, job, run_name
from tunerag_operator.runstate import RunState
from tunerag_operator.schedule import render, source
from tunerag_operator.schedule.source import DatabaseError, Source

FINISHED = ("Succeeded", "Rejected", "Failed")
MAX_BACKOFF = 3600.0


def job_state(namespace: str, name: str) -> RunState | None:
    found = kubeapi.get_job(namespace, name)
    return None if found is None else runstate.interpret(found, kubeapi.job_pods(namespace, name))


def start_job(run: WorkloadRun) -> None:
    kubeapi.create_if_absent(config_map(run))
    kubeapi.create_if_absent(job(run))


def later(a: str | None, b: str | None) -> str | None:
    """The later of two RFC 3339 times (a watermark never moves back)."""
    if not a or not b:
        return a or b
    return a if durations.parse_time(a) >= durations.parse_time(b) else b


def stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp_precise(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Outcome:
    """Status fields to write, the Ready condition, and Events to post."""

    status: dict[str, Any] = field(default_factory=dict)
    ready: tuple[str, str, str] = ("False", "Waiting", "")
    accepted: tuple[str, str, str] = ("True", "Accepted", "The spec is valid and every reference resolves.")
    events: list[tuple[str, str, bool]] = field(default_factory=list)  # (reason, message, warning)


class Pass:
    def __init__(self, body: dict[str, Any], spec: FineTuneScheduleSpec, problems: list[Problem], image: str,
                 now: dt.datetime) -> None:
        meta = body["metadata"]
        self.body, self.spec, self.image, self.now = body, spec, image, now
        self.ns, self.name = meta["namespace"], meta["name"]
        self.owner = Owner(FINETUNESCHEDULE.kind, self.name, self.ns, meta["uid"], int(meta.get("generation") or 1))
        self.created = durations.parse_time(meta["creationTimestamp"]) if meta.get("creationTimestamp") else now
        self.status: dict[str, Any] = dict(body.get("status") or {})
        self.problems = problems
        self.out = Outcome()

    def set(self, **fields: Any) -> None:
        self.status.update(fields)
        self.out.status.update(fields)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.out.events.append((reason, message[:1024], warning))

    # -- the pass ------------------------------------------------------------------------------

    def run(self) -> Outcome:
        src, problems = source.resolve(self.ns, self.spec)
        problems = problems + self.problems
        if problems:
            self.problems = problems
            src = None
            self.out.accepted = ("False", problems[0].reason, " ".join(p.message for p in problems))
        active = self.status.get("active")
        if active:
            self.follow(ActiveRun.model_validate(active), src)
        elif problems:
            self.set(phase=self.status.get("phase") or "Pending", message=problems[0].message)
            self.out.ready = ("False", problems[0].reason, " ".join(p.message for p in problems))
        elif self.spec.suspend:
            self.set(phase="Suspended", message="Suspended: no new runs start (spec.suspend).")
            self.out.ready = ("True", "Suspended", self.status["message"])
        else:
            assert src is not None
            self.idle(src)
        return self.out

    # -- waiting for a trigger -------------------------------------------------------------------

    def idle(self, src: Source) -> None:
        trigger = None
        waiting: list[str] = []
        if self.spec.schedule:
            schedule = cron.parse(self.spec.schedule)
            last = self.status.get("lastScheduleTime")
            due = schedule.last_at_or_before(durations.parse_time(last) if last else self.created, self.now)
            if due is not None:
                trigger = "Schedule"
                self.set(lastScheduleTime=stamp(due))
            nxt = schedule.next_after(self.now)
            self.set(nextScheduleTime=stamp(nxt))
            waiting.append(f"next run at {stamp(nxt)}")
        ready: tuple[str, str, str] | None = None
        if self.spec.min_new_samples is not None:
            last_check = self.status.get("lastCheckTime")
            if not last_check or durations.since(last_check) >= durations.seconds(self.spec.check_interval):
                try:
                    count = source.count_new(self.ns, src, self.spec.feedback, self.status.get("watermark"), self.now)
                    self.set(newSamples=count)
                except DatabaseError as exc:
                    ready = ("False", exc.reason, exc.message)
                self.set(lastCheckTime=stamp(self.now))
            have = int(self.status.get("newSamples") or 0)
            waiting.append(f"a run when {self.spec.min_new_samples} new feedback rows arrived ({have} now)")
            if trigger is None and have >= self.spec.min_new_samples:
                if (wait := self.backing_off()) is not None:
                    waiting.append(f"backing off after {self.status.get('consecutiveFailures')} failed runs until {wait}")
                else:
                    trigger = "Threshold"
        if trigger is not None:
            return self.start(trigger, src)
        message = "Waiting: " + "; ".join(waiting) + "."
        self.set(phase="Idle", message=message)
        self.out.ready = ready or ("True", "Scheduled", message)
        return None

    def backing_off(self) -> str | None:
        """After k failed runs in a row, the threshold waits checkInterval x 2^k (at most an hour)
        after the last one ended; the cron schedule does not wait."""
        failures = int(self.status.get("consecutiveFailures") or 0)
        history = self.status.get("history") or []
        if not failures or not history:
            return None
        wait = min(durations.seconds(self.spec.check_interval) * 2 ** failures, MAX_BACKOFF)
        until = durations.parse_time(history[-1]["time"]) + dt.timedelta(seconds=wait)
        return stamp(until) if self.now < until else None

    def start(self, trigger: str, src: Source) -> None:
        """Records the run; its Job is created by the next pass, from this record."""
        number = int(self.status.get("runs") or 0) + 1
        active = ActiveRun(run=f"{self.name}-{number}", number=number, trigger=trigger,
                           stage="Dataset", started_at=stamp(self.now), as_of=stamp_precise(self.now),
                           dataset_job=run_name(self.owner, f"{number}-data"), baseline=src.stable)
        why = "the cron schedule" if trigger == "Schedule" else f"{self.status.get('newSamples')} new feedback rows"
        message = f"Run {active.run} started by {why}."
        self.set(runs=number, active=active.model_dump(mode="json", by_alias=True, exclude_none=True),
                 phase="BuildingDataset", message=message)
        self.event("RunStarted", message + (f" It must beat {src.stable}." if src.stable else ""))
        self.out.ready = ("True", "Running", message)

    # -- following the active run ----------------------------------------------------------------

    def follow(self, active: ActiveRun, src: Source | None) -> None:
        self.out.ready = ("True", "Running", f"Run {active.run} in progress.")
        if active.stage == "Dataset":
            return self.follow_dataset(active, src)
        return self.follow_training(active)

    def follow_dataset(self, active: ActiveRun, src: Source | None) -> None:
        state = job_state(self.ns, active.dataset_job)
        if state is None:
            if src is None:
                message = f"Run {active.run} waits to build its dataset: {self.problems[0].message}"
                self.set(phase="BuildingDataset", message=message)
                self.out.ready = ("False", self.problems[0].reason, message)
                return None
            try:
                start_job(render.dataset_run(self.spec, src, active, self.owner, self.image))
            except kubeapi.Refused as exc:
                return self.fail_run("InvalidDatasetJob", str(exc), active)
            self.set(phase="BuildingDataset", message=f"Run {active.run}: building the dataset ({active.dataset_job}).")
            return None
        if state.phase in ("Pending", "Running"):
            self.set(phase="BuildingDataset", message=f"Run {active.run}: building the dataset ({active.dataset_job}).")
            return None
        if state.phase == "Failed":
            return self.finish(active, "Failed", f"{state.reason}: {state.message}")
        result = state.result or {}
        # The data was read: newer feedback counts from here, whatever the run makes of it.
        self.set(watermark=later(result.get("watermark"), self.status.get("watermark")), newSamples=0)
        if result.get("skipped"):
            return self.finish(active, "Skipped", f"{result.get('reason', 'NotEnoughFeedback')}: {result.get('message', '')}")
        if not result.get("trainUri") or not result.get("validationUri"):
            return self.fail_run("WorkloadFailed", f"{active.dataset_job} finished without naming its dataset.", active)
        digest = str(result.get("digest") or "")
        trained = [h for h in self.status.get("history") or [] if h.get("outcome") in ("Succeeded", "Rejected")]
        if trained and trained[-1].get("datasetDigest") == digest:
            return self.skip_run("DatasetUnchanged", f"{trained[-1]['run']} trained on the same data ({digest}).",
                                 active, digest)
        return self.create_fine_tune_job(active, result, digest)

    def create_fine_tune_job(self, active: ActiveRun, result: dict[str, Any], digest: str) -> None:
        baseline = kubeapi.get_custom(self.ns, ADAPTERVERSION.plural, active.baseline) if active.baseline else None
        if baseline is not None and baseline["spec"]["baseModel"]["uri"] != self.spec.template.base_model.uri:
            self.event("BaselineSkipped", f"{active.baseline} was trained on another base model; {active.run} is not "
                                          "compared with it.", warning=True)
            baseline = None
        body = render.fine_tune_job(self.spec, active, result, self.owner, baseline)
        try:
            created = kubeapi.create_custom(self.ns, FINETUNEJOB.plural, body)
        except kubeapi.Refused as exc:
            return self.fail_run("InvalidFineTuneJob", str(exc), active, digest)
        if not created:
            existing = kubeapi.get_custom(self.ns, FINETUNEJOB.plural, active.run) or {}
            owners = [o.get("uid") for o in existing.get("metadata", {}).get("ownerReferences") or []]
            if self.owner.uid not in owners:
                return self.fail_run("NameTaken", f"a FineTuneJob {active.run} exists and is not this schedule's; "
                                     "delete it or rename the schedule.", active, digest)
        rows = {k: int(v) for k, v in (result.get("rows") or {}).items() if isinstance(v, int)}
        updated = active.model_copy(update={"stage": "Training", "fine_tune_job": active.run,
                                            "dataset_digest": digest, "rows": rows})
        message = (f"Run {active.run}: training on {rows.get('feedback', 0)} feedback and {rows.get('original', 0)} "
                   f"original rows (dataset {digest[:19]}).")
        self.set(active=updated.model_dump(mode="json", by_alias=True, exclude_none=True), phase="Training", message=message)
        self.event("DatasetBuilt", message)
        return None

    def follow_training(self, active: ActiveRun) -> None:
        ftj = kubeapi.get_custom(self.ns, FINETUNEJOB.plural, active.fine_tune_job or active.run)
        if ftj is None:
            return self.fail_run("FineTuneJobDeleted", f"{active.run} was deleted before it finished.", active,
                                 active.dataset_digest)
        st = ftj.get("status") or {}
        phase = st.get("phase")
        if phase not in FINISHED:
            self.set(phase="Training", message=f"Run {active.run}: {phase or 'Pending'}.")
            return None
        ready: dict[str, Any] = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        reason = f"{ready.get('reason', phase)}: {ready.get('message', '')}"
        return self.finish(active, phase, reason, adapter_version=st.get("adapterVersion"), digest=active.dataset_digest)

    def fail_run(self, reason: str, message: str, active: ActiveRun, digest: str | None = None) -> None:
        return self.finish(active, "Failed", f"{reason}: {message}", digest=digest)

    def skip_run(self, reason: str, message: str, active: ActiveRun, digest: str | None = None) -> None:
        return self.finish(active, "Skipped", f"{reason}: {message}", digest=digest)

    def finish(self, active: ActiveRun, outcome: str, reason: str, adapter_version: str | None = None,
               digest: str | None = None) -> None:
        history = list(self.status.get("history") or [])
        if not history or history[-1].get("run") != active.run:
            record = RunRecord(run=active.run, trigger=active.trigger, outcome=outcome,
                               adapter_version=adapter_version, dataset_digest=digest, time=stamp(self.now),
                               reason=reason[:1024])
            history = [*history, record.model_dump(mode="json", by_alias=True, exclude_none=True)][-self.spec.history_limit:]
        failures = int(self.status.get("consecutiveFailures") or 0) + 1 if outcome == "Failed" else 0
        message = f"Run {active.run} {outcome.lower()}" + (f": {adapter_version}" if adapter_version else "") + f" ({reason})"
        self.set(history=history, active=None, consecutiveFailures=failures, phase="Idle", message=message[:1024])
        self.out.ready = ("True", "Scheduled", message[:1024])
        if outcome == "Succeeded":
            self.event("RunSucceeded", message)
        elif outcome == "Rejected":
            self.event("RunRejected", message, warning=True)
        elif outcome == "Skipped":
            self.event("RunSkipped", message)
        else:
            self.event("RunFailed", message, warning=True)
        self.prune(history, active)
        return None

    def prune(self, history: list[dict[str, Any]], active: ActiveRun) -> None:
        """Deletes the FineTuneJobs and dataset Jobs (and their ConfigMaps) of runs that left the
        history. AdapterVersions and datasets stay: lineage points at them."""
        keep = {h["run"] for h in history} | {active.run}
        for ftj in kubeapi.list_custom(self.ns, FINETUNEJOB.plural, f"{render.SCHEDULE_LABEL}={self.name}"):
            name = ftj["metadata"]["name"]
            if name not in keep and self.owner.uid in [o.get("uid") for o in ftj["metadata"].get("ownerReferences") or []]:
                kubeapi.delete_custom(self.ns, FINETUNEJOB.plural, name)
        jobs = {run_name(self.owner, f"{r.rsplit('-', 1)[-1]}-data") for r in keep}
        selector = f"tunerag.dev/owner-kind={FINETUNESCHEDULE.kind},tunerag.dev/owner-name={self.name}"
        for found in kubeapi.list_jobs(self.ns, selector):
            name = found["metadata"]["name"]
            if name not in jobs:
                kubeapi.delete_job(self.ns, name)
                kubeapi.delete_configmap(self.ns, name)


def post(body: dict[str, Any], outcome: Outcome) -> None:
    for reason, message, warning in outcome.events:
        (events.warn if warning else events.info)(body, reason, message)
