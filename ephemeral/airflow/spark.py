"""Spark Connect for Python tasks: code in a task runs DataFrame work on the cluster.

    @task
    @spark_connect
    def features(spark, cluster):
        return spark.read.parquet(uri).count()

``spark_connect`` builds a ``SparkSession`` on the cluster's ``sc://`` endpoint from the
``cluster`` argument (the setup task's handle), passes it as ``spark`` and stops it afterwards.
The session authenticates with the cluster's Connect token, which the handle's backend gives
the task's process on demand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from ephemeral.backends import ClusterHandle

R = TypeVar("R")


def spark_connect(fn: Callable[..., R]) -> Callable[..., R]:
    @functools.wraps(fn)
    def wrapper(*args: Any, cluster: Any, **kwargs: Any) -> R:
        from ephemeral.airflow.backends import task_backend
        from ephemeral.jobs.spark_jobs import connect_session, spark_auth_for

        handle = ClusterHandle.model_validate(cluster)
        if not handle.endpoints.spark_connect:
            raise ValueError(f"cluster {handle.name} has no Spark Connect endpoint "
                             "(set connect.enabled in its spec)")
        auth = spark_auth_for(handle, task_backend(handle.backend, handle.connection))
        spark = connect_session(handle.endpoints.spark_connect, app_name=fn.__name__,
                                token=auth.connect_token)
        try:
            return fn(*args, spark=spark, cluster=cluster, **kwargs)
        finally:
            spark.stop()

    # Airflow's @task inspects the signature: hide `spark`, which this wrapper supplies.
    import inspect

    sig = inspect.signature(fn)
    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p for name, p in sig.parameters.items() if name != "spark"])
    return wrapper
