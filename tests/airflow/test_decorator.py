"""@task.spark_connect: registered as a task decorator, and a DAG using it runs on a real
Spark cluster through its Connect endpoint."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.conftest import task_states


def test_spark_connect_is_a_registered_task_decorator() -> None:
    from airflow.sdk import task
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    from ephemeral.airflow.decorators import spark_connect_task

    decorators = ProvidersManagerTaskRuntime().taskflow_decorators
    assert decorators["spark_connect"] is spark_connect_task
    assert task.spark_connect is spark_connect_task


def test_a_function_without_spark_or_cluster_fails_when_the_dag_is_parsed() -> None:
    from airflow.sdk import DAG, task

    with DAG("bad", schedule=None, start_date=datetime(2026, 1, 1)), \
            pytest.raises(TypeError, match=r"must take cluster .*def features\(spark, cluster\)"):

        @task.spark_connect
        def count(spark: Any) -> int:
            return 1


def test_the_task_hides_spark_from_the_arguments_airflow_binds() -> None:
    from airflow.sdk import DAG, task

    with DAG("hides", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task.spark_connect
        def count(spark: Any, cluster: dict[str, Any], n: int = 1) -> int:
            return n

        count({"name": "c"}, n=3)
        with pytest.raises(TypeError, match="spark"):
            count(cluster={}, spark=1)
    op = dag.get_task("count")
    assert op.custom_operator_name == "@task.spark_connect"
    assert list(op.op_args) == [{"name": "c"}]
    assert op.op_kwargs == {"n": 3}


@pytest.mark.local
@pytest.mark.slow
def test_a_dag_with_task_spark_connect_runs_on_a_real_cluster(dagbag: Any,
                                                              ephemeral_home: Path) -> None:
    """tests/airflow/dags/spark_connect_task.py: parsed by the DagBag, run by dag.test()."""
    from ephemeral.backends.local import LocalBackend
    from tests.airflow.test_dags import xcom_values
    from tests.conftest import engine_pids

    dag = dagbag.get_dag("spark_connect_task")
    assert dag.get_task("total").custom_operator_name == "@task.spark_connect"

    before = engine_pids()
    run = dag.test()
    states = task_states(run)
    assert str(run.state) == "success", states
    assert states == {"create": "success", "total": "success", "delete": "success"}
    values = xcom_values("spark_connect_task", run.run_id, "return_value")
    handle, out = values["create[-1]"], values["total[-1]"]
    assert out == {"sum": 45, "cluster": handle["name"]}, json.dumps(out)
    # The run report counts the Connect server's work (the task's query) as busy, not idle.
    from ephemeral.report import load_report

    report = load_report("spark_connect_task", run.run_id)
    assert report is not None
    [cluster] = report["clusters"]
    connect = [j for j in cluster["jobs"] if j["source"] == "spark connect"]
    assert connect, cluster["jobs"]
    assert all(j["end"] >= j["start"] >= cluster["ready"] for j in connect), connect
    assert 0 < cluster["busy_s"] < cluster["lifetime_s"], cluster
    # Nothing of this run's cluster is left (other agents' engines may come and go meanwhile,
    # so the check is on this home's processes, found by the backend's own marker).
    assert LocalBackend(ephemeral_home).list_owned() == []
    assert [p for p in engine_pids() - before if _cluster_dir(p).startswith(str(ephemeral_home))] \
        == []


def _cluster_dir(pid: int) -> str:
    import psutil

    from ephemeral.backends.local.procs import DIR_ENV

    try:
        return psutil.Process(pid).environ().get(DIR_ENV, "")
    except psutil.Error:
        return ""
