"""Run states for the reaper from inside Airflow, through the task SDK (no credentials)."""

from __future__ import annotations

from typing import Any

from ephemeral.errors import EphemeralError
from ephemeral.reaper import RunInfo

# The SDK's client puts ids into the request path as they are: a '/' or '..' there, or a '?'
# or '#', would ask for another route or another run (``a/../b`` is ``b``) and '%' would be
# decoded once more. Such a run is left to the REST API lookup and the TTL, never misread.
_UNSENDABLE = ("/", "?", "#", "%", "\\")


def task_sdk_lookup(dag_id: str, run_id: str) -> RunInfo | None:
    """The state and end of a DAG run as the running task's supervisor reports them; None
    when Airflow says it has no such run. An answer about another run is an error."""
    from airflow.sdk.api.client import ServerResponseError
    from airflow.sdk.exceptions import AirflowRuntimeError
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import DagRunResult, GetDagRun

    for what, value in (("DAG id", dag_id), ("run id", run_id)):
        if value in (".", "..") or any(c in value for c in _UNSENDABLE):
            raise EphemeralError(f"the {what} {value!r} cannot be asked of Airflow's task API "
                                 "(its client puts it in the path unencoded); kept until its "
                                 "TTL")
    try:
        run = task_runner.SUPERVISOR_COMMS.send(GetDagRun(dag_id=dag_id, run_id=run_id))
    # In a worker the supervisor reports API errors as AirflowRuntimeError; in-process (dag.test)
    # the client's ServerResponseError arrives as it is.
    except (AirflowRuntimeError, ServerResponseError) as err:
        if _run_not_found(err):
            return None
        raise EphemeralError(f"cannot read the state of {dag_id}/{run_id}: {err}") from err
    if not isinstance(run, DagRunResult) or (run.dag_id, run.run_id) != (dag_id, run_id):
        raise EphemeralError(f"Airflow answered for another run than {dag_id}/{run_id}: "
                             f"{getattr(run, 'dag_id', None)}/{getattr(run, 'run_id', None)}")
    state = getattr(run.state, "value", run.state)
    return RunInfo(state=str(state).lower(), end_date=run.end_date)


def _run_not_found(err: Exception) -> bool:
    """Whether the execution API said it has no such run (404 with reason ``not_found``), not
    that a route was missing or anything else went wrong."""
    status: Any
    body: Any
    if (response := getattr(err, "response", None)) is not None:  # in-process
        status, body = response.status_code, {"detail": getattr(err, "detail", None)}
    else:  # through the supervisor: its ErrorResponse carries the status and the body
        detail = getattr(getattr(err, "error", None), "detail", None)
        detail = detail if isinstance(detail, dict) else {}
        status, body = detail.get("status_code"), detail.get("detail")
    reason = body.get("detail") if isinstance(body, dict) else None
    return status == 404 and isinstance(reason, dict) and reason.get("reason") == "not_found"
