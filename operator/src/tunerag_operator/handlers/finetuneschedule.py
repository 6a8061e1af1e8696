"""FineTuneSchedule: a timer runs the schedule's state machine (tunerag_operator.schedule.controller)
every TUNERAG_SCHEDULE_TICK seconds per schedule. As for RolloutPolicy there is no create/update
handler, so one writer owns the status. A schedule with nothing due (no run active, the next cron
time and the next count still ahead) costs no API call and no query."""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import kopf
from pydantic import ValidationError

from tunerag_operator import durations, metrics
from tunerag_operator.api.common import GROUP, VERSION
from tunerag_operator.api.finetuneschedule import FineTuneScheduleSpec
from tunerag_operator.api.kinds import FINETUNESCHEDULE
from tunerag_operator.conditions import get_condition, set_condition
from tunerag_operator.config import OperatorConfig
from tunerag_operator.handlers import finetunejob
from tunerag_operator.handlers.base import describe_validation_error
from tunerag_operator.handlers.timers import owns_status
from tunerag_operator.schedule import controller

TICK = float(os.environ.get("TUNERAG_SCHEDULE_TICK", "5"))
# A schedule whose references are missing (no RolloutPolicy, no feedback log) looks again this
# often, not every tick: it waits for a user, and 1,000 of them must not poll the API server.
RECHECK = float(os.environ.get("TUNERAG_SCHEDULE_RECHECK", "30"))
WAITING = "tunerag_schedule_waiting"  # per-object memo: (generation, when) of a pass that found a reference missing
QUIET = ("Running", "Scheduled", "Suspended", "Waiting")  # Ready reasons that are not worth a Warning


def _settled(body: kopf.Body, spec: FineTuneScheduleSpec, now: dt.datetime) -> bool:
    """Nothing can be due: no run active, accepted for this generation, the next cron time and the
    next count of the exchange log still ahead."""
    st = body.status
    accepted = get_condition(st.get("conditions") or [], "Accepted")
    if (st.get("active") or st.get("observedGeneration") != body.meta.get("generation")
            or accepted is None or accepted.get("status") != "True"):
        return False
    if spec.suspend:
        return bool(st.get("phase") == "Suspended")
    if st.get("phase") != "Idle":
        return False
    if spec.schedule and (not st.get("nextScheduleTime") or now >= durations.parse_time(st["nextScheduleTime"])):
        return False
    last_check = st.get("lastCheckTime")
    return not (spec.min_new_samples is not None
                and (not last_check or durations.since(last_check) >= durations.seconds(spec.check_interval)))


@kopf.timer(GROUP, VERSION, FINETUNESCHEDULE.plural, id="schedule", interval=TICK, sharp=False, backoff=max(TICK, 2.0))
@owns_status(FINETUNESCHEDULE)
def schedule(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    config = memo.get("config") or OperatorConfig.defaults()
    generation = body.meta.get("generation")
    before = [dict(c) for c in body.status.get("conditions") or []]
    conds = before
    now = dt.datetime.now(dt.UTC)
    try:
        spec = FineTuneScheduleSpec.model_validate(dict(body.spec))
    except ValidationError as exc:
        message = describe_validation_error(exc)
        conds = set_condition(conds, "Accepted", "False", "InvalidSpec", message, generation)
        conds = set_condition(conds, "Ready", "False", "InvalidSpec", message, generation)
        metrics.RECONCILE_ERRORS.labels(FINETUNESCHEDULE.kind, "InvalidSpec").inc()
        _write(body, patch, before, conds, {"phase": "Failed", "message": message}, generation)
        return
    if _settled(body, spec, now):
        return
    waiting = memo.get(WAITING)
    if waiting and waiting[0] == generation and time.monotonic() - waiting[1] < RECHECK:
        return
    # The template is a FineTuneJob spec: its URIs and Secret are checked as a FineTuneJob's are.
    problems = finetunejob.check(spec.template, body.meta["namespace"])
    raw = {"metadata": dict(body.meta), "status": dict(body.status), "apiVersion": body.get("apiVersion"), "kind": body.get("kind")}
    outcome = controller.Pass(raw, spec, problems, config.workloads_image, now).run()
    accepted, reason, message = outcome.accepted
    conds = set_condition(conds, "Accepted", accepted, reason, message, generation)  # type: ignore[arg-type]
    if accepted != "True":
        metrics.RECONCILE_ERRORS.labels(FINETUNESCHEDULE.kind, reason).inc()
        memo[WAITING] = (generation, time.monotonic())
    else:
        memo.pop(WAITING, None)
    status, reason, message = outcome.ready
    conds = set_condition(conds, "Ready", status, reason, message, generation)  # type: ignore[arg-type]
    _write(body, patch, before, conds, outcome.status, generation)
    controller.post(raw, outcome)


def _write(body: kopf.Body, patch: kopf.Patch, before: list[dict[str, Any]], conds: list[dict[str, Any]],
           fields: dict[str, Any], generation: int | None) -> None:
    for key, value in fields.items():
        patch.status[key] = value
    patch.status["conditions"] = conds
    patch.status["observedGeneration"] = generation
    for type_ in ("Accepted", "Ready"):
        old = get_condition(before, type_)
        new = get_condition(conds, type_)
        if new and (old is None or (old["status"], old["reason"]) != (new["status"], new["reason"])) \
                and new["status"] == "False" and new["reason"] not in QUIET:
            kopf.warn(body, reason=new["reason"], message=new["message"])
