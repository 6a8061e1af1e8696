"""The five-field cron expressions of FineTuneSchedule (tunerag_operator.cron)."""

from __future__ import annotations

import datetime as dt

import pytest

from tunerag_operator import cron


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(("expression", "after", "expected"), [
    ("* * * * *", "2026-05-01T16:50:30", "2026-05-01T16:51:00"),
    ("*/15 * * * *", "2026-05-01T16:50:00", "2026-05-01T17:00:00"),
    ("*/15 9-17 * * mon-fri", "2026-05-01T17:50:00", "2026-05-04T09:00:00"),  # Friday evening -> Monday
    ("0 2 * * *", "2026-05-01T02:00:00", "2026-05-02T02:00:00"),  # strictly after
    ("30 4 1,15 * *", "2026-05-02T00:00:00", "2026-05-15T04:30:00"),
    ("0 0 1 jan *", "2026-05-01T00:00:00", "2027-01-01T00:00:00"),
    ("0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),  # the next leap year
    ("0 0 * * 7", "2026-05-01T00:00:00", "2026-05-03T00:00:00"),  # 7 is Sunday, like 0
    ("0 0 1 * mon", "2026-05-01T01:00:00", "2026-05-04T00:00:00"),  # day-of-month OR day-of-week
    ("0 0 1 * mon", "2026-05-26T00:00:00", "2026-06-01T00:00:00"),
    ("5/20 * * * *", "2026-05-01T10:26:00", "2026-05-01T10:45:00"),  # from 5, every 20
    ("10-50/20 * * * *", "2026-05-01T10:31:00", "2026-05-01T10:50:00"),
    ("@hourly", "2026-05-01T10:31:00", "2026-05-01T11:00:00"),
    ("@daily", "2026-12-31T10:31:00", "2027-01-01T00:00:00"),
    ("@weekly", "2026-05-01T10:31:00", "2026-05-03T00:00:00"),
    ("@monthly", "2026-05-01T10:31:00", "2026-06-01T00:00:00"),
    ("@yearly", "2026-05-01T10:31:00", "2027-01-01T00:00:00"),
])
def test_next_after(expression: str, after: str, expected: str) -> None:
    assert cron.parse(expression).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(("expression", "message"), [
    ("* * * *", "has 4 fields"),
    ("* * * * * *", "has 6 fields"),
    ("60 * * * *", "minute: 60 is outside 0-59"),
    ("* 24 * * *", "hour: 24 is outside 0-23"),
    ("* * 0 * *", "day-of-month: 0 is outside 1-31"),
    ("* * * 13 *", "month: 13 is outside 1-12"),
    ("* * * * 8", "day-of-week: 8 is outside 0-7"),
    ("*/0 * * * *", "step"),
    ("5-1 * * * *", "runs backwards"),
    ("* * * foo *", "'foo' is not a number or a name"),
    ("1,,2 * * * *", "empty list item"),
    ("0 0 30 2 *", "never fires"),
    ("@often", "is not a macro"),
])
def test_invalid_expressions_say_why(expression: str, message: str) -> None:
    with pytest.raises(cron.CronError, match=message):
        cron.parse(expression)


def test_missed_occurrences_collapse_into_the_latest() -> None:
    every_minute = cron.parse("* * * * *")
    assert every_minute.last_at_or_before(at("2026-05-01T10:00:00"), at("2026-05-01T10:00:59")) is None
    assert every_minute.last_at_or_before(at("2026-05-01T10:00:00"), at("2026-05-01T10:07:30")) == at("2026-05-01T10:07:00")
    # Far behind (an operator down for a month): still the latest one, quickly.
    assert every_minute.last_at_or_before(at("2026-04-01T10:00:00"), at("2026-05-01T10:07:30")) == at("2026-05-01T10:07:00")
    monthly = cron.parse("@monthly")
    assert monthly.last_at_or_before(at("2026-01-15T00:00:00"), at("2026-05-01T10:07:30")) == at("2026-05-01T00:00:00")
    assert monthly.last_at_or_before(at("2026-05-01T00:00:00"), at("2026-05-20T00:00:00")) is None


def test_the_schedule_field_is_checked_by_the_api_model() -> None:
    from pydantic import ValidationError

    from tunerag_operator.api.finetuneschedule import FineTuneScheduleSpec

    spec = {"schedule": "0 3 * * *", "feedback": {"rolloutPolicy": "qa"},
            "template": {"baseModel": {"uri": "file:///m"}, "adapter": {"family": "qa"},
                         "dataset": {"train": {"uri": "file:///t.jsonl"}}, "output": {"uri": "file:///o"}}}
    assert FineTuneScheduleSpec.model_validate(spec).schedule == "0 3 * * *"
    with pytest.raises(ValidationError, match="minute: 61 is outside 0-59"):
        FineTuneScheduleSpec.model_validate({**spec, "schedule": "61 3 * * *"})
