"""Spark Connect for Python tasks: code in a task runs DataFrame work on the cluster.

    @task
    @spark_connect
    def features(spark, cluster):
        return spark.read.parquet(uri).count()

``spark_connect`` builds a ``SparkSession`` on the cluster's ``sc://`` endpoint from the
``cluster`` argument (the setup task's handle), passes it as ``spark`` and stops it afterwards.
``@task.spark_connect`` (ephemeral.airflow.decorators) is the same as one decorator.
The session authenticates with the cluster's Connect token, which the handle's backend gives
the task's process on demand.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


def spark_connect(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` with a ``spark`` session on the cluster named by its ``cluster`` argument (given
    by keyword or position); ``spark`` is hidden from the signature Airflow sees."""
    sig = inspect.signature(fn)
    missing = [p for p in ("spark", "cluster") if p not in sig.parameters]
    if missing:
        raise TypeError(f"{fn.__name__}() must take {' and '.join(missing)} to run on a Spark "
                        "Connect session, e.g. def features(spark, cluster): ...")
    visible = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "spark"])

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        from airflow.sdk import get_current_context

        from ephemeral.airflow.backends import instance_of, task_backend
        from ephemeral.airflow.handles import job_cluster, made_through, pointer, with_setup_facts
        from ephemeral.jobs.spark_jobs import connect_session, spark_auth_for

        bound = visible.bind(*args, **kwargs)
        given = pointer(bound.arguments["cluster"])
        # The Connect endpoint and token of the backend's record, not the handle's word: in a
        # task, only a cluster of its DAG run; called directly (a test, a notebook), the
        # caller's own argument names this deployment's cluster.
        try:
            context = get_current_context()
        except RuntimeError:
            context = None
        if context is not None:
            made_through(context.get("task"), given, given.setup_task)
        from ephemeral.airflow.operators import _within_ttl, settings_refused

        with settings_refused() if context is not None else contextlib.nullcontext():
            backend = task_backend(given.backend, given.connection)
        if context is not None:
            handle = job_cluster(context, backend, given, instance_of(given.connection))
            _within_ttl(handle, None)  # as the job operators: not on a cluster about to go
        elif (record := backend.get(given.name)) is not None:
            handle = with_setup_facts(record, given)
        else:
            raise ValueError(f"cluster {given.name} is not a cluster of this deployment on the "
                             f"{backend.name} backend (gone, or another deployment's)")
        if not handle.endpoints.spark_connect:
            raise ValueError(f"cluster {handle.name} has no Spark Connect endpoint "
                             "(set connect.enabled in its spec)")
        auth = spark_auth_for(handle, backend)
        spark = connect_session(handle.endpoints.spark_connect, app_name=fn.__name__,
                                token=auth.connect_token)
        try:
            call = inspect.BoundArguments(sig, {**bound.arguments, "spark": spark})
            return fn(*call.args, **call.kwargs)
        finally:
            spark.stop()

    # Airflow's @task inspects the signature: hide `spark`, which this wrapper supplies.
    wrapper.__signature__ = visible  # type: ignore[attr-defined]
    return wrapper
