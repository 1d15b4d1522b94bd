"""reap_orphans: every five minutes, delete clusters that outlived their DAG run or their TTL,
or have been idle for longer than their spec's lifetime.idleTimeout (ephemeral.reaper).

The backstop for what Airflow 3.3 does not clean up: the teardown of a failed setup never runs,
and dagrun_timeout or marking a run failed during its setup skips teardowns.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from ephemeral.notify import failure_callbacks

with DAG(
    dag_id="reap_orphans",
    description="Delete ephemeral clusters whose run ended, whose TTL passed or that sat idle",
    schedule=timedelta(minutes=5),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    # A reap that fails (a leak it could not delete, a backend it cannot reach) notifies as
    # any reference DAG's failed task does ($EPHEMERAL_NOTIFIER).
    default_args={"retries": 0, "execution_timeout": timedelta(minutes=10),
                  "on_failure_callback": failure_callbacks()},
    params={"grace_seconds": Param(600, type="number", minimum=0,
                                   description="How long after a run ended its clusters may "
                                               "still be there (its teardown may be running)."),
            # Below the 10-minute execution_timeout: notices and the last listing come after.
            "delete_budget_seconds": Param(
                420, type="number", minimum=0, maximum=480,
                description="Seconds from the pass's start until it stops waiting for its "
                            "deletions (all issued first); one not done by then fails it.")},
    tags=["ephemeral", "maintenance"],
) as dag:

    @task
    def reap(grace_seconds: Any, delete_budget_seconds: Any) -> dict[str, Any]:
        from airflow.sdk import get_current_context

        from ephemeral.airflow.backends import task_backend
        from ephemeral.airflow.reaping import task_sdk_lookup
        from ephemeral.reaper import memory_file
        from ephemeral.reaper import reap as reap_clusters
        from ephemeral.settings import setting

        # EPHEMERAL_BACKEND picks the backend; on Kubernetes an Airflow connection may hold
        # the API server's settings instead of EPHEMERAL_K8S_* variables.
        backend = task_backend(None, setting("kubernetes_conn_id"))
        # This run is one the Airflow asked surely knows: evidence that a cluster's run not
        # found there was deleted, not asked of the wrong Airflow.
        here = get_current_context()
        decisions = reap_clusters(backend, lookup=task_sdk_lookup,
                                  grace=float(grace_seconds),
                                  memory_file=memory_file(),
                                  witness=(here["dag"].dag_id, here["run_id"]),
                                  delete_budget=float(delete_budget_seconds))
        for d in decisions:
            verb = "delete" if d.delete else "deleting" if d.deleting else "keep"
            print(f"{verb} {d.cluster}: {d.reason} {d.error}")
        failed = [d.cluster for d in decisions if d.error]
        if failed:
            raise RuntimeError(f"could not delete: {failed}")
        return {"deleted": [d.cluster for d in decisions if d.deleted],
                "kept": [d.cluster for d in decisions if not d.delete]}

    reap("{{ params.grace_seconds }}", "{{ params.delete_budget_seconds }}")
