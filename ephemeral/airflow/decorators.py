"""``@task.spark_connect``: a Python task whose ``spark`` is a Spark Connect session on the
cluster of its ``cluster`` argument.

    @task.spark_connect
    def features(spark, cluster):
        return spark.range(10).count()

    features(cluster=create_spark.output)

Registered through the provider info's ``task-decorators`` as other providers register
``@task.pyspark`` or ``@task.kubernetes``; the session's behaviour is ``spark.spark_connect``'s
(the cluster's ``sc://`` endpoint, its Connect token, stopped afterwards).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import DecoratedOperator, task_decorator_factory
from airflow.providers.standard.operators.python import PythonOperator

from ephemeral.airflow.spark import spark_connect

if TYPE_CHECKING:
    from airflow.sdk.bases.decorator import TaskDecorator


class _SparkConnectDecoratedOperator(DecoratedOperator, PythonOperator):
    custom_operator_name = "@task.spark_connect"
    ui_color = "#fdebd0"

    def __init__(self, *, python_callable: Callable[..., Any],
                 op_args: Collection[Any] | None = None,
                 op_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        # Wrapped here, when the DAG is parsed: a function without `spark` or `cluster` fails
        # then, naming both; `spark` disappears from the signature Airflow binds arguments to.
        wrapped = spark_connect(python_callable)
        super().__init__(
            kwargs_to_upstream={"python_callable": wrapped, "op_args": op_args,
                                "op_kwargs": op_kwargs},
            python_callable=wrapped, op_args=op_args, op_kwargs=op_kwargs, **kwargs)


def spark_connect_task(python_callable: Callable[..., Any] | None = None,
                       multiple_outputs: bool | None = None, **kwargs: Any) -> TaskDecorator:
    """``@task.spark_connect``: run the function with a Spark Connect session as ``spark`` on
    the cluster given as its ``cluster`` argument (a setup task's handle)."""
    if python_callable is not None:
        spark_connect(python_callable)  # a function without `spark` or `cluster` fails here
    return task_decorator_factory(
        python_callable=python_callable, multiple_outputs=multiple_outputs,
        decorated_operator_class=_SparkConnectDecoratedOperator, **kwargs)
