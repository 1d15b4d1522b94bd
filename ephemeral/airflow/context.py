"""Cluster identity and job keys derived from an Airflow task's context."""

from __future__ import annotations

from typing import Any

from ephemeral.backends.base import OwnerSelector
from ephemeral.specs.identity import PREFIX, ClusterIdentity, label_value


def _map_index(context: Any) -> int:
    index = getattr(context["ti"], "map_index", -1)
    return -1 if index is None else int(index)


def cluster_identity(context: Any, spec_name: str, setup_task_id: str | None = None
                     ) -> ClusterIdentity:
    """The identity of the cluster that ``setup_task_id`` (default: this task) creates in this
    run and map index."""
    return ClusterIdentity(spec_name=spec_name, dag_id=context["dag"].dag_id,
                           run_id=context["run_id"],
                           task_id=setup_task_id or context["ti"].task_id,
                           map_index=_map_index(context))


def owner_selector(context: Any, setup_task_id: str) -> OwnerSelector:
    """Every cluster that ``setup_task_id`` made in this run and map index, whatever its spec:
    what a teardown deletes when it has no handle."""
    return OwnerSelector(labels={
        PREFIX + "dag-id": label_value(context["dag"].dag_id),
        PREFIX + "run-id": label_value(context["run_id"]),
        PREFIX + "task-id": label_value(setup_task_id),
        PREFIX + "map-index": str(_map_index(context)) if _map_index(context) >= 0 else "none",
    })


def task_key(context: Any) -> str:
    ti = context["ti"]
    return f"{context['dag'].dag_id}/{context['run_id']}/{ti.task_id}/{_map_index(context)}"
