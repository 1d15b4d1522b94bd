"""Cluster identity and job keys derived from an Airflow task's context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ephemeral.backends.base import OwnerSelector
from ephemeral.specs.identity import INSTANCE_LABEL, PREFIX, ClusterIdentity

KEEP_LABEL = PREFIX + "on-failure"
"""``keep`` on a cluster whose setup keeps it after a failure (``on_failure="keep"``): the
run-end cleanup leaves it alone and the reaper deletes it at its TTL, not before."""


@dataclass(frozen=True)
class SetupIdentity(ClusterIdentity):
    """A setup task's cluster identity; its cleanup policy is a label (not part of the name)."""

    on_failure: str = "delete"

    def labels(self) -> dict[str, str]:
        labels = super().labels()
        return labels | {KEEP_LABEL: "keep"} if self.on_failure == "keep" else labels


def map_index(context: Any) -> int:
    index = getattr(context["ti"], "map_index", -1)
    return -1 if index is None else int(index)


def task_label(task_id: str, index: int) -> str:
    """``group.task`` or, for a map index, ``group.task[index]``: how the report names a task."""
    return task_id + (f"[{index}]" if index >= 0 else "")


def this_task(context: Any) -> str:
    return task_label(context["ti"].task_id, map_index(context))


def cluster_identity(context: Any, spec_name: str, setup_task_id: str | None = None, *,
                     instance: str | None = None, on_failure: str = "delete"
                     ) -> SetupIdentity:
    """The identity of the cluster that ``setup_task_id`` (default: this task) creates in this
    run and map index, owned by deployment ``instance`` (default: this deployment's)."""
    mine = {"instance": instance} if instance else {}
    return SetupIdentity(spec_name=spec_name, dag_id=context["dag"].dag_id,
                         run_id=context["run_id"],
                         task_id=setup_task_id or context["ti"].task_id,
                         map_index=map_index(context), on_failure=on_failure, **mine)


def owner_selector(context: Any, setup_task_id: str, instance: str | None = None, *,
                   any_map_index: bool = False) -> OwnerSelector:
    """Every cluster that ``setup_task_id`` made in this run and map index (any map index
    with ``any_map_index``: a mapped job's unmapped setup), whatever its spec, in deployment
    ``instance`` (default: this one's): what a teardown deletes when it has no handle, and
    what a task may act on whatever its handle says (``ephemeral.airflow.handles``)."""
    mine = {INSTANCE_LABEL: instance} if instance else {}
    index = {} if any_map_index else {
        PREFIX + "map-index": str(map_index(context)) if map_index(context) >= 0 else "none"}
    return OwnerSelector.of_run(context["dag"].dag_id, context["run_id"], setup_task_id,
                                labels=mine | index)


def task_key(context: Any) -> str:
    ti = context["ti"]
    return f"{context['dag'].dag_id}/{context['run_id']}/{ti.task_id}/{map_index(context)}"
