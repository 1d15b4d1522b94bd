"""Which runs an in-process test command deletes at its exit (ephemeral.airflow.in_process):
only one it made for itself. `airflow tasks test DAG create RUN_ID` of an existing run makes
the cluster under that run's identity, which the run's own setup adopts: never deleted here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ephemeral.airflow.in_process import own_run


def dag_run(run_id: str, user: str | None) -> Any:
    """The task context's dag_run, as Airflow's task SDK gives it."""
    from airflow.sdk.api.datamodels._generated import DagRun

    now = datetime.now(UTC)
    return DagRun(dag_id="d", run_id=run_id, logical_date=now, data_interval_start=now,
                  data_interval_end=now, run_after=now, start_date=now, end_date=None,
                  run_type="manual", state="running", triggering_user_name=user,
                  consumed_asset_events=[], partition_key=None)


def test_only_the_runs_the_test_commands_make_are_their_own() -> None:
    from airflow.cli.commands.task_command import _generate_temporary_run_id

    assert own_run(dag_run("manual__2026-12-03T10:00:00+00:00", "dag_test"))  # dag.test()
    assert own_run(dag_run(_generate_temporary_run_id(), "root"))  # tasks test's own run
    assert not own_run(dag_run("scheduled__2026-12-03T10:00:00+00:00", None))
    assert not own_run(dag_run("manual__2026-12-03T10:00:00+00:00", "admin"))  # the form's
    assert not own_run(None)
