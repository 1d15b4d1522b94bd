"""kubernetes_smoke: the smallest end-to-end check of the Kubernetes backend.

A RayCluster from ray/adhoc-cpu (profile ci-cpu, one worker) is created through KubeRay, the Ray
job jobs/hello_ray.py runs on it and must see both nodes, and the cluster is deleted whatever
happened. CI runs it on kind (.github/workflows/kind-smoke.yml) with
`airflow dags test kubernetes_smoke`, then checks that no RayCluster is left.

No dagrun_timeout (in Airflow 3.3 it would skip the teardown); the tasks have their own timeouts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)
from ephemeral.notify import failure_callbacks

JOBS = str(Path(__file__).resolve().parent.parent / "jobs")
BACKEND = "kubernetes"

with DAG(
    dag_id="kubernetes_smoke",
    description="Ray on KubeRay: create a 2-node cluster, run hello_ray, delete it",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0, "on_failure_callback": failure_callbacks()},
    params={"profile": Param("ci-cpu", type=["null", "string"], enum=[None, "ci-cpu"],
                             description="ci-cpu on kind and other CPU-only clusters.")},
    tags=["ephemeral", "kubernetes", "smoke"],
) as dag:
    create = CreateClusterOperator(
        task_id="create_ray", spec="ray/adhoc-cpu", profile="{{ params.profile }}",
        overrides={"workers": {"replicas": 1}}, backend=BACKEND,
        # A cold kind node pulls the multi-GB Ray image first (compose/kind/up.sh can preload it).
        ready_timeout=900.0, execution_timeout=timedelta(minutes=20))
    hello = RayJobOperator(
        task_id="hello_ray", cluster=create.output, working_dir=JOBS,
        entrypoint="python hello_ray.py", job_timeout=600,
        execution_timeout=timedelta(minutes=15))

    @task(execution_timeout=timedelta(minutes=1))
    def check_nodes(result: dict[str, Any]) -> int:
        """The job ran on the head and the one worker: two distinct node IPs."""
        nodes = result["result"]["nodes"]
        if len(set(nodes)) != 2:
            raise ValueError(f"hello_ray saw nodes {nodes}; expected the head and one worker")
        return len(nodes)

    delete = DeleteClusterOperator(
        task_id="delete_ray", setup_task_id="create_ray", cluster=create.output,
        backend=BACKEND, execution_timeout=timedelta(minutes=10))
    # on_failure_fail_dagrun: a teardown that could not delete the cluster fails the smoke test.
    # check_nodes stays a leaf beside it: a teardown that fails the run is a leaf too, and with
    # the job's checks only upstream of it, a failed job would end the run `success`.
    create >> hello >> delete.as_teardown(setups=create, on_failure_fail_dagrun=True)
    check_nodes(hello.output)
