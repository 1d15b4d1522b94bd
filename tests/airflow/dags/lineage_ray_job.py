"""lineage_ray_job: a Ray job whose input and outputs OpenLineage reports as datasets
(tests/airflow/test_lineage.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
)

JOB = str(Path(__file__).resolve().parent.parent / "lineage_job")

with DAG(dag_id="lineage_ray_job", schedule=None, start_date=datetime(2026, 1, 1),
         catchup=False, default_args={"retries": 0}, tags=["ephemeral", "test"],
         params={"data_uri": Param("file:///dev/null", type="string")}) as dag:
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1", profile="ci-cpu",
                                   overrides={"workers": {"replicas": 1}})
    copy = RayJobOperator(task_id="copy", cluster=create.output, working_dir=JOB,
                          entrypoint="python copy_rows.py --data-uri {{ params.data_uri }} "
                                     "--run {{ run_id | replace(':', '_') | replace('+', '_') }}")
    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create",
                                   cluster=create.output)
    create >> copy >> delete.as_teardown(setups=create, on_failure_fail_dagrun=True)
