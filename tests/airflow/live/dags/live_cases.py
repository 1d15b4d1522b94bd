"""DAGs run by a live Airflow (scheduler, dag-processor, triggerer, api-server, LocalExecutor):
the failures that `dag.test()` cannot reproduce because they need a real task process to die
or the scheduler's own dagrun_timeout check."""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)

START = datetime(2026, 1, 1)
SMALL_RAY = {"workers": {"replicas": 1}}
HELLO = "python -c \"print('{\\\"ok\\\": 1}')\""


class KilledAfterCreate(CreateClusterOperator):
    """Dies as an OOM-killed task does on its first try: the cluster exists, nothing of it has
    reached XCom yet (the links are the first push after creation)."""

    def _push_links(self, context: Any, handle: Any) -> None:
        if context["ti"].try_number == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        super()._push_links(context, handle)


def lifecycle(dag_id: str, create_cls: type[CreateClusterOperator], *, retries: int,
              entrypoint: str = HELLO, **dag_args: Any) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False,
             default_args={"retries": retries, "retry_delay": timedelta(seconds=1)},
             **dag_args) as dag:
        create = create_cls(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                            overrides=SMALL_RAY, poll_interval=0.5)
        work = RayJobOperator(task_id="work", cluster=create.output, entrypoint=entrypoint,
                              poll_interval=0.5)
        delete = DeleteClusterOperator(task_id="delete", setup_task_id="create",
                                       cluster=create.output)
        create >> work >> delete.as_teardown(setups=create)
    return dag


# An adopted cluster is ready within seconds of the retry's deferral: the case where Airflow
# 3.3 failed a trigger that fired too soon (ephemeral.airflow.settle). One retry, no slack.
killed_setup_retried = lifecycle("killed_setup_retried", KilledAfterCreate, retries=1)
killed_setup_no_retry = lifecycle("killed_setup_no_retry", KilledAfterCreate, retries=0)
# The scheduler skips every unfinished task, the teardown included, when this fires: 30 s is
# waited out whole, and is long after the setup made its cluster (what the test needs; the job
# usually runs by then, at load 2 the cluster is ready in about 15 s).
run_times_out = lifecycle("run_times_out", CreateClusterOperator, retries=0,
                          entrypoint="python -c \"import time; time.sleep(300)\"",
                          dagrun_timeout=timedelta(seconds=30))

# The Kubernetes backend through a connection stored in Airflow's database: the triggerer
# process looks it up by id (the tests point it at the strict API mock).
with DAG(dag_id="kubernetes_connection_live", schedule=None, start_date=START, catchup=False,
         default_args={"retries": 0}) as kubernetes_connection_live:
    k8s_create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                                       overrides=SMALL_RAY, kubernetes_conn_id="k8s_live",
                                       poll_interval=0.5)
    k8s_delete = DeleteClusterOperator(task_id="delete", setup_task_id="create",
                                       cluster=k8s_create.output, kubernetes_conn_id="k8s_live")
    k8s_create >> k8s_delete.as_teardown(setups=k8s_create)
