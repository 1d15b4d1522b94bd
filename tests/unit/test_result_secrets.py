"""A job's declared result passes one gate (``JobResult``) before any job path returns, logs
or records it: credentials in it are masked, whatever the engine or the path."""

from __future__ import annotations

from typing import Any

import pytest

from ephemeral.jobs.results import JobResult, JobStatus

SIGNED = ("https://b.s3.amazonaws.com/m.pt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261201%2Fus-east-1%2Fs3%2Faws4_request"
          "&X-Amz-Signature=abcdef0123456789")
DECLARED = {"model_uri": "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI@bucket/model",
            "share_uri": SIGNED, "spark.authenticate.secret": "0123456789abcdef",
            "metrics": {"loss": 0.1, "api_token": "x" * 12}, "uris": ["s3://b/ok", SIGNED],
            "rows": 3}


def _result(result: dict[str, Any]) -> JobResult:
    return JobResult(job_id="j1", cluster="c", engine="ray", status=JobStatus.SUCCEEDED,
                     seconds=1.0, result=result)


def test_credentials_in_a_result_are_masked_and_said(caplog: pytest.LogCaptureFixture) -> None:
    got = _result(DECLARED).result
    assert got["model_uri"] == "s3://***@bucket/model"
    assert "AKIA" not in str(got)
    assert "abcdef0123456789" not in str(got)
    assert "wJalrXUtnFEMI" not in str(got)
    assert got["spark.authenticate.secret"] == "***"
    assert got["metrics"] == {"loss": 0.1, "api_token": "***"}
    assert got["uris"][0] == "s3://b/ok"
    assert got["rows"] == 3
    assert "model_uri, share_uri, spark.authenticate.secret, metrics.api_token, uris[1]" \
        in caplog.text


def test_a_result_read_back_from_an_event_is_gated_too() -> None:
    # The trigger's event and a release record are dicts: validating them passes the gate.
    event = {"job_id": "j1", "cluster": "c", "engine": "ray", "status": "SUCCEEDED",
             "seconds": 1.0, "result": DECLARED}
    assert "wJalrXUtnFEMI" not in str(JobResult.model_validate(event).result)


def test_a_masked_result_passes_again_unchanged_and_unsaid(
        caplog: pytest.LogCaptureFixture) -> None:
    once = _result(DECLARED)
    caplog.clear()
    assert JobResult.model_validate(once.model_dump(mode="json")).result == once.result
    assert "masked" not in caplog.text


def test_a_clean_result_is_left_as_it_is() -> None:
    clean = {"model_uri": "s3://bucket/model", "accuracy": 0.9, "max_tokens": 512,
             "notes": None, "token_count": "12"}
    assert _result(clean).result == clean


def test_the_ray_operator_returns_and_logs_no_secret_of_a_result(
        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("airflow.sdk")
    from ephemeral.airflow.operators import RayJobOperator

    op = RayJobOperator(task_id="train", cluster={}, entrypoint="python t.py")
    event = {"status": "SUCCEEDED", "job_id": "j1", "released": "deleted",
             "result": {"job_id": "j1", "cluster": "c", "engine": "ray",
                        "status": "SUCCEEDED", "seconds": 1.0, "result": DECLARED}}
    out = op.execute_complete({}, event)
    for secret in ("wJalrXUtnFEMI", "abcdef0123456789", "0123456789abcdef"):
        assert secret not in str(out)
        assert secret not in caplog.text


def test_whatever_a_secret_name_holds_is_masked() -> None:
    """A number, a list or an object under a name that says secret was returned as it was."""
    got = _result({"token": 123456789012, "api_key": {"value": "k" * 20},
                   "password": ["p" * 12], "secret": True, "token_count": 7,
                   "credentials": None}).result
    assert got == {"token": "***", "api_key": "***", "password": "***", "secret": True,
                   "token_count": 7, "credentials": None}


def test_a_report_link_never_shows_the_artifact_roots_credentials(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused where clusters are made, such a root still reached notifications (a failed
    task's callback, the reaper's) through the report's link."""
    from ephemeral.report.store import report_link

    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI@b/eph")
    monkeypatch.delenv("EPHEMERAL_ARTIFACT_URL", raising=False)
    link = report_link("train", "r1")
    assert link is not None
    assert link.startswith("s3://***@b/eph/")
    assert "wJalrXUtnFEMI" not in link
