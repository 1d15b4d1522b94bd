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


def test_a_task_that_pushes_nothing_is_not_failed_for_its_size(small_xcom: None) -> None:
    """do_xcom_push=False: Airflow pushes nothing, so a big result is no reason to fail."""
    from ephemeral.airflow.operators import RayJobOperator
    from ephemeral.jobs.results import JobResult

    op = RayJobOperator(task_id="train", cluster={}, entrypoint="python t.py",
                        do_xcom_push=False)
    assert op._release({}, None, JobResult.model_validate(RESULT), None)["job_id"] == "j1"
    event = {"status": "SUCCEEDED", "job_id": "j1", "released": "deleted", "result": RESULT}
    assert op.execute_complete({}, event)["job_id"] == "j1"


def test_a_setup_that_pushes_nothing_is_not_failed_for_its_handles_size(
        small_xcom: None) -> None:
    from ephemeral.airflow.operators import CreateClusterOperator

    big = {"name": "eph-x", "spark_conf": {f"spark.k{i}": "v" * 40 for i in range(40)}}
    CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu",
                          do_xcom_push=False)._fits_xcom(big)
    with pytest.raises(Exception, match="over the 600-byte limit"):
        CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu")._fits_xcom(big)


def test_a_spark_application_that_pushes_nothing_is_not_failed_for_its_size(
        small_xcom: None) -> None:
    from ephemeral.airflow.operators import fits_xcom
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    op = EphemeralSparkSubmitOperator(task_id="etl", cluster={}, application="etl.py",
                                      do_xcom_push=False)
    fits_xcom(op, RESULT, "fix")
    op.do_xcom_push = True
    with pytest.raises(Exception, match="over the 600-byte limit"):
        fits_xcom(op, RESULT, "fix")
