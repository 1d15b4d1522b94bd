"""``delete_cluster_on_success``: the task of a cluster's last job deletes the cluster the moment
the job succeeds, as KubeRay's RayJob does with ``shutdownAfterJobFinishes``, rather than
leaving it reserved until the teardown task is scheduled and started (about a second under
``dag.test()``, seconds more with a scheduler and an executor).

A deferred Ray job's trigger does it in the triggerer, the moment the job ends (it reads the
job's result first and hands it to the task in its event); otherwise the task does, before it
returns. The teardown still runs, as the setup/teardown contract says: it finds the cluster gone
(deleting is idempotent), makes sure nothing of it is left, and writes the run report with the
release's moments and the jobs the engine listed just before it (``report.model.Release``).
A failed job keeps its cluster: a retry needs it, and the teardown follows a final failure at
once anyway.

Only the last task that uses a cluster may release it, and the DAG says which one that is, so
the job task checks before it submits anything:
- its cluster is what a CreateClusterOperator directly upstream of it pushed at its own map
  index (a mapped job over one cluster is not its last work; one cluster per map index is);
- every other task that takes that setup's output (the setup's direct downstream, its
  teardowns aside) runs before it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from ephemeral.backends import ClusterBackend, ClusterHandle

FIELD = "delete_cluster_on_success"
log = logging.getLogger(__name__)


def is_a(task: Any, *classes: type) -> bool:
    """``task`` (an operator, or a mapped one, which names its class) is one of ``classes``."""
    cls = getattr(task, "operator_class", type(task))
    return isinstance(cls, type) and issubclass(cls, classes)


def _map_index(context: Any) -> int:
    index = getattr(context["ti"], "map_index", -1)
    return -1 if index is None else int(index)


def _label(task_id: str, map_index: int) -> str:
    return task_id + (f"[{map_index}]" if map_index >= 0 else "")


def check_last_use(context: Any, handle: ClusterHandle) -> None:
    """Refuse, before the job is submitted, to release a cluster another task still uses."""
    from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator

    dag, ti, index = context["dag"], context["ti"], _map_index(context)
    me = dag.get_task(ti.task_id)  # the DAG's node: a mapped task's relatives are there
    label = _label(ti.task_id, index)
    setup = None
    for task_id in sorted(me.upstream_task_ids):
        up = dag.get_task(task_id)
        if not is_a(up, CreateClusterOperator):
            continue
        pushed = ti.xcom_pull(task_ids=task_id, map_indexes=index)
        if isinstance(pushed, dict) and pushed.get("name") == handle.name:
            setup = up
            break
    if setup is None:
        shared = (" at the same map index: the map indexes of a mapped job share its cluster, "
                  "so none of them is its last work" if index >= 0 else "")
        raise AirflowFailException(
            f"{FIELD}=True on {label}, but its cluster {handle.name} is not the output of a "
            f"CreateClusterOperator directly upstream of it{shared}. Set {FIELD} on the last "
            "task that uses the cluster, or leave the deletion to the teardown.")
    before = me.get_flat_relative_ids(upstream=True)
    others = sorted(t.task_id for t in setup.downstream_list
                    if t.task_id != me.task_id and t.task_id not in before
                    and not is_a(t, DeleteClusterOperator))
    if others:
        raise AirflowFailException(
            f"{FIELD}=True on {label}, but {', '.join(others)} also "
            f"{'takes' if len(others) == 1 else 'take'} {setup.task_id}'s cluster "
            f"{handle.name} and {'does' if len(others) == 1 else 'do'} not run before it: the "
            f"cluster would be deleted under {'it' if len(others) == 1 else 'them'}. Make "
            f"{ti.task_id} run after them, or set {FIELD} on the last of them.")


def released_by(context: Any) -> dict[str, str]:
    """Who releases: the run and the task, as plain data a trigger can carry."""
    return {"dag_id": context["dag"].dag_id, "run_id": context["run_id"],
            "task": _label(context["ti"].task_id, _map_index(context))}


def release(backend: ClusterBackend, handle: ClusterHandle, by: dict[str, str]) -> str | None:
    """Delete the cluster now and record it for the teardown's report; say what was done.
    Never raises: the job succeeded, and whatever this could not delete, the teardown
    deletes."""
    from ephemeral.report.engines import engine_jobs
    from ephemeral.report.model import Release
    from ephemeral.report.store import write_release

    started = time.time()
    jobs = engine_jobs(backend, handle)  # what ran on it, asked while it is still there
    try:
        backend.delete(handle, wait=True)
    except Exception as err:  # noqa: BLE001 - the teardown deletes it and fails loudly
        log.error("%s: could not delete %s after its last job (%s); its teardown will",
                  FIELD, handle.name, err)
        return None
    deleted = time.time()
    done = f"deleted {handle.name} in {deleted - started:.2f}s: its last job succeeded ({FIELD})"
    log.info("%s", done)
    try:
        write_release(by["dag_id"], by["run_id"],
                      Release(name=handle.name, task=by["task"], teardown_started=started,
                              deleted=deleted, jobs=jobs))
    except Exception:  # the report falls back to the teardown's view; the deletion stands
        log.exception("could not record the release of %s for the run report", handle.name)
    return done
