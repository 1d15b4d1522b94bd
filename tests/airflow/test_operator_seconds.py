"""``ready_timeout`` and ``poll_interval`` are seconds above 0, refused as the DAG is parsed
otherwise: a text failed with a TypeError once the cluster existed, 0 or less timed out at once
or probed without pause (thousands of API calls a second), and a ``poll_interval`` of 0 was
silently replaced by the backend's."""

from __future__ import annotations

from typing import Any

import pytest

from ephemeral.airflow.operators import CreateClusterOperator, RayJobOperator

BAD = ["600", "1", 0, 0.0, -1, -5.0, float("nan"), float("inf"), True, False, [2]]


def _create(**kwargs: Any) -> CreateClusterOperator:
    return CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", deferrable=False,
                                 **kwargs)


def _job(**kwargs: Any) -> RayJobOperator:
    return RayJobOperator(task_id="train", cluster={}, entrypoint="python t.py",
                          deferrable=False, **kwargs)


@pytest.mark.parametrize("value", [*BAD, None])
def test_a_setups_ready_timeout_that_is_no_positive_number_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match=r"CreateClusterOperator\(task_id='create'\): "
                       r"ready_timeout=.* is not a finite number of seconds above 0: give the "
                       r"seconds to wait for the cluster, e\.g\. 900 \(the default\)"):
        _create(ready_timeout=value)


@pytest.mark.parametrize("make", [_create, _job])
@pytest.mark.parametrize("value", BAD)
def test_a_poll_interval_that_is_no_positive_number_is_refused(make: Any, value: Any) -> None:
    with pytest.raises(ValueError, match=r"\(task_id='\w+'\): poll_interval=.* is not a finite "
                       r"number of seconds above 0: give the longest pause between checks"):
        make(poll_interval=value)


def test_numbers_above_zero_pass_and_none_keeps_the_default_pace() -> None:
    create = _create(ready_timeout=60, poll_interval=0.1)
    assert (create.ready_timeout, create.poll_interval) == (60.0, 0.1)
    assert _create().poll_interval is None
    assert _create().ready_timeout == 900.0
    assert _job(poll_interval=5).poll_interval == 5.0
    assert _job().poll_interval is None
