"""spark_connect_task: a task decorated with @task.spark_connect runs DataFrame work on the
run's own Spark cluster through its Connect endpoint (tests/airflow/test_decorator.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator

with DAG(dag_id="spark_connect_task", schedule=None, start_date=datetime(2026, 1, 1),
         catchup=False, default_args={"retries": 0}, tags=["ephemeral", "test"]) as dag:
    create = CreateClusterOperator(task_id="create", spec="spark/etl@1", profile="ci-cpu",
                                   overrides={"workers": {"replicas": 1}})

    @task.spark_connect
    def total(spark: Any, cluster: dict[str, Any], n: int) -> dict[str, Any]:
        return {"sum": spark.range(n).selectExpr("sum(id) AS s").collect()[0]["s"],
                "cluster": cluster["name"]}

    summed = total(create.output, n=10)  # the cluster positionally, as a plain @task takes it
    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create",
                                   cluster=create.output)
    create >> summed >> delete.as_teardown(setups=create, on_failure_fail_dagrun=True)
