"""A job operator's job_timeout: seconds above 0 or empty, else the task fails naming it."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from ephemeral.airflow.operators import job_timeout_seconds


@pytest.mark.parametrize(("value", "seconds"), [(None, None), ("", None), ("None", None),
                                                (90, 90.0), ("1.5", 1.5)])
def test_a_number_of_seconds_or_nothing(value: Any, seconds: float | None) -> None:
    assert job_timeout_seconds(value) == seconds


@pytest.mark.parametrize("value", ["abc", -5, 0, "nan", "inf", float("-inf"), True, [1]])
def test_anything_else_fails_naming_the_field(value: Any) -> None:
    with pytest.raises(AirflowFailException, match="job_timeout: "):
        job_timeout_seconds(value)
