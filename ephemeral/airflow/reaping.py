"""Run states for the reaper from inside Airflow, through the task SDK (no credentials)."""

from __future__ import annotations

from ephemeral.reaper import RunInfo


def task_sdk_lookup(dag_id: str, run_id: str) -> RunInfo | None:
    """The state of a DAG run as the running task's supervisor reports it; None if unknown."""
    from airflow.sdk.api.client import ServerResponseError
    from airflow.sdk.exceptions import AirflowRuntimeError
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    from ephemeral.errors import EphemeralError

    try:
        state = RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    # In a worker the supervisor reports API errors as AirflowRuntimeError; in-process (dag.test)
    # the client's ServerResponseError arrives as it is.
    except (AirflowRuntimeError, ServerResponseError) as err:
        text = f"{err} {getattr(err, 'detail', '')} {getattr(err, 'error', '')}".lower()
        if "not_found" in text or "not found" in text:
            return None
        raise EphemeralError(f"cannot read the state of {dag_id}/{run_id}: {err}") from err
    return RunInfo(state=str(state).lower().removeprefix("dagrunstate."))
