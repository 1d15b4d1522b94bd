"""``delete_cluster_on_success``: the task of a cluster's last job deletes the cluster the moment
the job succeeds, as KubeRay's RayJob does with ``shutdownAfterJobFinishes``, rather than
leaving it reserved until the teardown task is scheduled and started (about a second under
``dag.test()``, seconds more with a scheduler and an executor).

A deferred Ray job's trigger does it in the triggerer, the moment the job ends (it reads the
job's result first and hands it to the task in its event); otherwise the task does, before it
returns. The teardown still runs, as the setup/teardown contract says: it finds the cluster gone
(anything left of it still carries the run's labels, and is deleted), and writes the run report
with the release's moments and the jobs the engine listed just before it
(``report.model.Release``).
A failed job keeps its cluster: a retry needs it, and the teardown follows a final failure at
once anyway. So does a cluster its engines list other work on, or cannot say (``used_beside``):
a task cleared since the job started re-runs its setup, which adopts this cluster, and runs
on it beside the job.

The release is recorded, with the job's result, before the cluster is deleted: a retry of the
task (its ``post_execute`` failed, the worker died) or a re-run trigger finds the record and
returns the result instead of reaching for a cluster that is gone. A record counts only for the
cluster it was made for (its creation time): a cleared run's new cluster of the same name is
not mistaken for it.

Only the last task that uses a cluster may release it, and the DAG says which one that is, so
the DAG's parse refuses what its shape shows already (``check_wiring``, through
``ephemeral.airflow.policy``), before any cluster exists, and the job task checks again, with
the cluster it was given, before it submits anything:
- its cluster is exactly what a CreateClusterOperator directly upstream of it pushed at its own
  map index (a mapped job over one cluster is not its last work; one cluster per map index is),
  and belongs to this deployment instance;
- every other task that takes that setup's output (the setup's direct downstream, its
  teardowns aside) runs before it;
- it, and every task between the setup and it, waits for all of its upstream tasks to finish
  (no ``one_success``, ``one_failed``, ``one_done`` or ``always`` trigger rule), so none of
  those users can still be running when it starts.
A task that reads the cluster's handle without taking the setup's output (``xcom_pull`` in a
template, with no edge from the setup) is invisible to this check: give it the edge.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from ephemeral.airflow.context import map_index, this_task
from ephemeral.backends import ClusterBackend, ClusterHandle

FIELD = "delete_cluster_on_success"
# Trigger rules that start a task before all of its upstream tasks are done.
EAGER_RULES = frozenset({"one_success", "one_failed", "one_done", "always"})
log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ephemeral.report.model import Release


def is_a(task: Any, *classes: type) -> bool:
    """``task`` (an operator, or a mapped one, which names its class) is one of ``classes``."""
    cls = getattr(task, "operator_class", type(task))
    return isinstance(cls, type) and issubclass(cls, classes)


def _rule(task: Any) -> str:
    rule = getattr(task, "trigger_rule", "all_success")
    return str(getattr(rule, "value", rule))


def _mapped(task: Any) -> bool:
    """``task`` runs once per map index: mapped itself, or in a mapped task group."""
    return bool(task.is_mapped) or task.get_closest_mapped_task_group() is not None


def _argument(task: Any, name: str) -> Any:
    """An operator's argument as the DAG file gave it; of a mapped task, its expanded or
    partial value."""
    if not task.is_mapped:
        return getattr(task, name, None)
    expanded = getattr(task.expand_input, "value", None)
    if isinstance(expanded, dict) and name in expanded:
        return expanded[name]
    return task.partial_kwargs.get(name)


def _no_setup(name: str | None, mapped: bool) -> str:
    shared = (" at the same map index: the map indexes of a mapped job share its cluster, "
              "so none of them is its last work" if mapped else "")
    return (f"its cluster{f' {name}' if name else ''} is not the output of a "
            f"CreateClusterOperator directly upstream of it{shared}. Set {FIELD} on the last "
            "task that uses the cluster, or leave the deletion to the teardown.")


def last_use_problem(dag: Any, me: Any, setup: Any, name: str | None = None) -> str | None:
    """Why the DAG's shape makes ``me`` not the last user of ``setup``'s cluster (module
    docstring), or None: the rule the DAG's parse (``check_wiring``) and the job, before it
    submits (``check_last_use``), both apply. ``name``: the cluster's, once it exists."""
    from ephemeral.airflow.operators import DeleteClusterOperator

    if _mapped(me) and not _mapped(setup):
        return _no_setup(name, mapped=True)
    cluster = f"{setup.task_id}'s cluster{f' {name}' if name else ''}"
    before = me.get_flat_relative_ids(upstream=True)
    others = sorted(t.task_id for t in setup.downstream_list
                    if t.task_id != me.task_id and t.task_id not in before
                    and not is_a(t, DeleteClusterOperator))
    if others:
        one = len(others) == 1
        return (f"{', '.join(others)} also {'takes' if one else 'take'} {cluster} and "
                f"{'does' if one else 'do'} not run before it: the cluster would be deleted "
                f"under {'it' if one else 'them'}. Make {me.task_id} run after them, or set "
                f"{FIELD} on the last of them.")
    between = (before & setup.get_flat_relative_ids(upstream=False)) | {me.task_id}
    eager = sorted(f"{t} ({_rule(dag.get_task(t))})" for t in between
                   if _rule(dag.get_task(t)) in EAGER_RULES)
    if eager:
        return (f"{', '.join(eager)} may start before all of their upstream tasks are done, "
                f"so a task that uses {cluster} could still be running when {me.task_id} "
                "deletes it. Use a trigger rule that waits for every upstream task (e.g. "
                "all_done), or leave the deletion to the teardown.")
    return None


def check_wiring(dag: Any) -> list[str]:
    """What ``check_last_use`` would refuse whatever the run, said when the DAG is parsed:
    before any cluster is made for a job that cannot release it. Which setup made a job's
    cluster shows only at run time unless the job takes a setup's output itself: a problem
    is said here when every ``CreateClusterOperator`` the job could mean has it."""
    from airflow.sdk import XComArg

    from ephemeral.airflow.operators import CreateClusterOperator

    problems = []
    for me in dag.tasks:
        if _argument(me, FIELD) is not True:  # a list or XComArg: one the run decides
            continue
        setups = [t for t in map(dag.get_task, sorted(me.upstream_task_ids))
                  if is_a(t, CreateClusterOperator)]
        given = {up.task_id for up, _ in XComArg.iter_xcom_references(_argument(me, "cluster"))}
        found = ([last_use_problem(dag, me, s) for s in setups if s.task_id in given]
                 or [last_use_problem(dag, me, s) for s in setups]
                 or [_no_setup(None, _mapped(me))])
        if all(found):
            problems.append(f"{FIELD}=True on {me.task_id}, but {found[0]}")
    return problems


def check_last_use(op: Any, context: Any, handle: ClusterHandle) -> None:
    """Refuse, before the job is submitted, to release a cluster that is not this task's to
    release: another task may still use it, or it is not the setup's (module docstring). The
    DAG's parse refuses what its shape shows already (``check_wiring``); checked again here,
    against the DAG this run runs, with the cluster the job was given."""
    from ephemeral.airflow.operators import CreateClusterOperator, foreign_instance

    dag, ti, index = context["dag"], context["ti"], map_index(context)
    me = dag.get_task(ti.task_id)  # the DAG's node: a mapped task's relatives are there
    label = this_task(context)

    def refuse(why: str) -> AirflowFailException:
        return AirflowFailException(f"{FIELD}=True on {label}, but {why}")

    setup, pushed = None, None
    for task_id in sorted(me.upstream_task_ids):
        up = dag.get_task(task_id)
        if not is_a(up, CreateClusterOperator):
            continue
        pushed = ti.xcom_pull(task_ids=task_id, map_indexes=index)
        if isinstance(pushed, dict) and pushed.get("name") == handle.name:
            setup = up
            break
    if setup is None:
        raise refuse(_no_setup(handle.name, mapped=index >= 0))
    if ClusterHandle.model_validate(pushed) != handle:
        raise refuse(f"its cluster argument is not what {setup.task_id} pushed for "
                     f"{handle.name} (another backend, connection, namespace or instance): "
                     f"pass {setup.task_id}'s output as it is.")
    if other := foreign_instance(handle, getattr(op, "conn_id", None)):
        raise refuse(f"{other}.")
    if problem := last_use_problem(dag, me, setup, handle.name):
        raise refuse(problem)


def before_job(op: Any, context: Any, handle: ClusterHandle) -> dict[str, Any] | None:
    """What a job task with ``delete_cluster_on_success`` does before it submits: refuse a
    cluster that is not its to release (``check_last_use``), and return the result an earlier
    try recorded when it released the cluster (None: run the job)."""
    check_last_use(op, context, handle)
    earlier = earlier_result(handle, released_by(context))
    if earlier is not None:
        op.log.info("an earlier try released %s after its job succeeded: %s", handle.name,
                    earlier.get("result"))
    return earlier


def released_by(context: Any) -> dict[str, str]:
    """Who releases: the run and the task, as plain data a trigger can carry."""
    return {"dag_id": context["dag"].dag_id, "run_id": context["run_id"],
            "task": this_task(context)}


def recorded(handle: ClusterHandle, dag_id: str, run_id: str) -> Release | None:
    """The release of this very cluster in this run (not one of a cleared run's cluster of the
    same name), None if there is none."""
    from ephemeral.report.store import read_release

    rel = read_release(dag_id, run_id, handle.name)
    return rel if rel is not None and rel.created_at == handle.created_at else None


def earlier_result(handle: ClusterHandle, by: dict[str, str]) -> dict[str, Any] | None:
    """The result this task's earlier try (or its trigger) recorded when it released the
    cluster: the job succeeded and the cluster is gone, so a retry returns it. Never raises."""
    try:
        rel = recorded(handle, by["dag_id"], by["run_id"])
    except Exception:  # unreadable: the task runs as if there were none
        log.warning("could not read the release record of %s", handle.name, exc_info=True)
        return None
    return rel.result if rel is not None and rel.task == by["task"] else None


def used_beside(backend: ClusterBackend, handle: ClusterHandle, job_id: str) -> str | None:
    """Why the cluster must not be deleted now: its engines list work other than the releasing
    job ``job_id`` running or pending on it, or cannot say (``ephemeral.activity``, what the
    idle rule reads); None when nothing else runs there. The DAG's shape, checked before the
    job was submitted, does not cover a task cleared since: clearing a task between the setup
    and this one re-runs the setup, which adopts this cluster, and that task then runs on it
    beside this job."""
    from ephemeral.activity import cluster_activity

    try:
        seen = cluster_activity(backend, handle)
    except Exception as err:  # noqa: BLE001 - unknown: the teardown deletes it
        return f"could not ask its engines what runs on it ({type(err).__name__}: {err})"
    if seen.busy is None:
        return f"its engines could not say what else runs on it ({seen.what})"
    others = [d for d in seen.details if job_id not in d.split()]
    if others:
        return (f"{len(others)} other piece(s) of work run on it ({'; '.join(others[:3])}), "
                "e.g. a task cleared and re-run since this job started")
    return None


def release(backend: ClusterBackend, handle: ClusterHandle, by: dict[str, str],
            result: dict[str, Any]) -> str | None:
    """Record the release with the job's ``result``, delete the cluster now unless anything
    else runs on it (``used_beside``) and record when; say what was done (None: nothing was
    deleted). Never raises: the job succeeded, and whatever this did not delete, the teardown
    deletes."""
    from ephemeral.report.deletions import record_deleted
    from ephemeral.report.engines import engine_jobs
    from ephemeral.report.model import Release
    from ephemeral.report.store import write_release

    started = time.time()
    jobs = engine_jobs(backend, handle)  # what ran on it, asked while it is still there
    rel = Release(name=handle.name, created_at=handle.created_at, task=by["task"],
                  teardown_started=started, jobs=jobs, result=result)
    try:  # first: a retry after the deletion must find the result
        write_release(by["dag_id"], by["run_id"], rel)
    except Exception as err:  # noqa: BLE001 - without the record, the teardown deletes it
        log.error("%s: could not record the release of %s (%s); its teardown deletes it",
                  FIELD, handle.name, err)
        return None
    if (busy := used_beside(backend, handle, str(result.get("job_id", "")))) is not None:
        log.warning("%s: %s is left to its teardown: %s", FIELD, handle.name, busy)
        return None
    try:
        if backend.delete(handle, wait=True) is False:  # the name is a newer cluster's now
            log.warning("%s: %s was already deleted; another cluster has its name now",
                        FIELD, handle.name)
            return None
    except Exception as err:  # noqa: BLE001 - the teardown deletes it and fails loudly
        log.error("%s: could not delete %s after its last job (%s); its teardown will",
                  FIELD, handle.name, err)
        return None
    deleted = time.time()
    try:
        write_release(by["dag_id"], by["run_id"], rel.model_copy(update={"deleted": deleted}))
    except Exception:  # the report then shows the teardown's moments; the deletion stands
        log.exception("could not record when %s was deleted", handle.name)
    # In the run's report now: the run may end before its teardown runs to record it.
    record_deleted(handle, by=by["task"], started=started, deleted=deleted, jobs=jobs,
                   release=False)
    done = f"deleted {handle.name} in {deleted - started:.2f}s: its last job succeeded ({FIELD})"
    log.info("%s", done)
    return done
