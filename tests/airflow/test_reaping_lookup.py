"""The reaping DAG's run lookup, through the task SDK: Airflow's own "no such run" (404,
reason not_found) is a deleted run; any other error, an answer about another run, and a run id
its client would put unencoded into the path (a '/' or '..' asks another route or run) are
errors, so the cluster is kept. The run's end time comes with its state: a worker without a
lasting home (a KubernetesExecutor pod) judges the grace from it, not from its own first sight.
The lookup's whole path in a real run: tests/airflow/test_dags.py (reap_orphans)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from airflow.sdk.api.client import ServerResponseError
from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
from airflow.sdk.execution_time import task_runner
from airflow.sdk.execution_time.comms import DagRunResult, ErrorResponse

from ephemeral.airflow.reaping import task_sdk_lookup
from ephemeral.errors import EphemeralError

NOT_FOUND = {"detail": {"reason": "not_found", "message": "Dag run with dag_id 'd' and run_id "
                                                          "'r' was not found"}}
ENDED = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)


def answering(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[Any]:
    asked: list[Any] = []

    def send(msg: Any) -> Any:
        asked.append(msg)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", SimpleNamespace(send=send),
                        raising=False)
    return asked


def run(run_id: str = "r", **fields: Any) -> DagRunResult:
    return DagRunResult.model_validate({
        "dag_id": "d", "run_id": run_id, "logical_date": None, "data_interval_start": None,
        "data_interval_end": None, "run_after": ENDED, "start_date": ENDED, "end_date": ENDED,
        "clear_number": 0, "run_type": "manual", "state": "failed", "conf": None,
        "consumed_asset_events": [], "partition_key": None, **fields})


def from_supervisor(status: int, body: object) -> AirflowRuntimeError:
    return AirflowRuntimeError(ErrorResponse(error=ErrorType.API_SERVER_ERROR, detail={
        "status_code": status, "message": "Server returned error", "detail": body}))


def in_process(status: int, body: object) -> ServerResponseError:
    response = httpx.Response(status, json=body, request=httpx.Request("GET", "http://x/"))
    err = ServerResponseError.from_response(response)
    assert err is not None
    return err


def test_an_ended_run_comes_with_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = answering(monkeypatch, run())
    found = task_sdk_lookup("d", "r")
    assert found is not None
    assert (found.state, found.end_date) == ("failed", ENDED)
    assert [(m.dag_id, m.run_id) for m in asked] == [("d", "r")]


@pytest.mark.parametrize("make", [from_supervisor, in_process])
def test_airflows_not_found_is_a_deleted_run(monkeypatch: pytest.MonkeyPatch, make: Any) -> None:
    answering(monkeypatch, make(404, NOT_FOUND))
    assert task_sdk_lookup("d", "r") is None


@pytest.mark.parametrize("make", [from_supervisor, in_process])
@pytest.mark.parametrize(("status", "body"), [(404, {"detail": "Not Found"}),
                                              (404, {"error": "API route not found"}),
                                              (500, NOT_FOUND), (403, {"detail": "forbidden"})])
def test_any_other_error_keeps_the_cluster(monkeypatch: pytest.MonkeyPatch, make: Any,
                                           status: int, body: object) -> None:
    answering(monkeypatch, make(status, body))
    with pytest.raises(EphemeralError, match="cannot read the state of d/r"):
        task_sdk_lookup("d", "r")


def test_an_answer_about_another_run_is_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    answering(monkeypatch, run("b"))
    with pytest.raises(EphemeralError, match="another run than d/a: d/b"):
        task_sdk_lookup("d", "a")


@pytest.mark.parametrize("run_id", ["team/exp-1", "a/../b", "..", ".", "x?y", "x#y", "100%"])
def test_a_run_id_the_path_cannot_carry_is_never_asked(monkeypatch: pytest.MonkeyPatch,
                                                       run_id: str) -> None:
    asked = answering(monkeypatch, run())
    with pytest.raises(EphemeralError, match="cannot be asked of Airflow's task API"):
        task_sdk_lookup("d", run_id)
    assert asked == []
