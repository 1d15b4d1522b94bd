"""A job result over the metadata-only XCom's limit fails its task in ``execute`` (or
``execute_complete``), without retries, naming the limit: Airflow's push after it returns
would fail the task after the job succeeded, and each retry the same."""

from __future__ import annotations

from typing import Any

import pytest

RESULT = {"job_id": "j1", "cluster": "c", "engine": "ray", "status": "SUCCEEDED",
          "seconds": 1.0, "result": {"rows": list(range(400))}}


@pytest.fixture
def small_xcom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__XCOM_BACKEND", "ephemeral.airflow.xcom.MetadataOnlyXCom")
    monkeypatch.setenv("EPHEMERAL_XCOM_MAX_BYTES", "600")


def _op() -> Any:
    from ephemeral.airflow.operators import RayJobOperator

    return RayJobOperator(task_id="train", cluster={}, entrypoint="python t.py")


def test_a_released_jobs_result_over_the_limit_fails_without_retry(small_xcom: None) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    event = {"status": "SUCCEEDED", "job_id": "j1", "released": "deleted", "result": RESULT}
    with pytest.raises(AirflowFailException, match="over the 600-byte limit") as err:
        _op().execute_complete({}, event)
    assert "The job succeeded, but its result line is for metadata" in str(err.value)


def test_a_jobs_result_over_the_limit_fails_before_it_is_returned(small_xcom: None) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.jobs.results import JobResult

    with pytest.raises(AirflowFailException, match="EPHEMERAL_XCOM_MAX_BYTES"):
        _op()._release({}, None, JobResult.model_validate(RESULT), None)


def test_a_result_within_the_limit_is_returned(small_xcom: None) -> None:
    from ephemeral.jobs.results import JobResult

    small = RESULT | {"result": {"rows": 3}}
    assert _op()._release({}, None, JobResult.model_validate(small), None)["result"] == {
        "rows": 3}
