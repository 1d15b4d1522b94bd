"""Times other systems write (the Kubernetes API's timestamps, Airflow's run end dates) are read
by one rule: whatever their form, the result compares with our own UTC times, and a value that
is not a time is no time rather than a crash of the reaper or the diagnosis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ephemeral.specs.identity import parse_rfc3339

AT = datetime(2026, 12, 2, 6, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-02T06:00:00Z", AT),
    ("2026-12-02T06:00:00.250000Z", AT + timedelta(microseconds=250000)),
    ("2026-12-02T07:00:00+01:00", AT),
    ("2026-12-02T06:00:00", AT),  # no zone: taken as UTC
])
def test_forms_of_one_time(text: str, expected: datetime) -> None:
    at = parse_rfc3339(text)
    assert at == expected
    assert at is not None
    assert at.utcoffset() is not None
    assert at <= datetime.now(UTC)  # comparable with an aware time, the reaper's `now`


@pytest.mark.parametrize("value", [None, "", "yesterday", 1764655200, {"t": 1}])
def test_what_is_not_a_time_is_none(value: object) -> None:
    assert parse_rfc3339(value) is None


def test_an_offset_is_kept_as_the_same_moment() -> None:
    at = parse_rfc3339("2026-12-02T01:00:00-05:00")
    assert at is not None
    assert at.astimezone(UTC) == AT
    assert at.tzinfo == timezone(timedelta(hours=-5))
