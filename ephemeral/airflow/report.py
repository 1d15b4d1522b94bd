"""The run report from Airflow: what a teardown records about its clusters, and the demo's
``dag.test()`` helpers that print it.

A teardown knows its own moments (when it started, when each deletion finished), the setup's
handle (node groups, creation and readiness times), and asks the engine what ran on the
cluster before deleting it (``ephemeral.report.engines``). It joins that with the job tasks'
results (their ids and result URIs) through the task SDK: the run's finished task instances
(``RuntimeTaskInstance.get_task_breadcrumbs``) and ``ti.xcom_pull``, both served by the
execution API. Airflow 3 workers have no metadata database, so nothing here reads it; only the
demo helpers at the end, which run in the ``dag.test()`` process, do.
"""

from __future__ import annotations

import logging
import math
import os
from datetime import datetime
from typing import Any

from ephemeral.airflow.context import task_label, this_task
from ephemeral.backends import ClusterHandle
from ephemeral.report.model import JobFacts, Release

log = logging.getLogger(__name__)


def _is_job_task(task: Any) -> bool:
    from ephemeral.airflow.operators import RayJobOperator
    from ephemeral.airflow.release import is_a
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    return is_a(task, RayJobOperator, EphemeralSparkSubmitOperator)


def finished_job_tasks(context: Any) -> list[tuple[str, int]]:
    """(task id, map index) of every job task of this run that has finished, as the execution
    API lists them."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    dag = context["dag"]
    crumbs = RuntimeTaskInstance.get_task_breadcrumbs(dag.dag_id, context["run_id"])
    found = {(str(c["task_id"]), int(c.get("map_index", -1))) for c in crumbs}
    return sorted((t, m) for t, m in found if dag.has_task(t) and _is_job_task(dag.get_task(t)))


def job_results(context: Any, tasks: list[tuple[str, int]]
                ) -> list[tuple[str, int, dict[str, Any]]]:
    """(task id, map index, result) of each of ``tasks`` that pushed a job result."""
    found = []
    for task_id, map_index in tasks:
        value = context["ti"].xcom_pull(task_ids=task_id, map_indexes=map_index)
        if isinstance(value, dict) and value.get("job_id"):
            found.append((task_id, map_index, value))
    return found


def _seconds(result: dict[str, Any]) -> float | None:
    """The result's wall seconds when it is a finite number (the facts take no other)."""
    value = result.get("seconds")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _uris(result: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (result.get("result") or {}).items()
            if k.endswith("_uri") and isinstance(v, str)}


def _submission_prefixes(context: Any, cluster: str, tasks: list[tuple[str, int]]
                         ) -> dict[str, str]:
    """The Ray submission id prefix of each job task on ``cluster`` (every try of a task shares
    it), so a failed try's job, which pushed no result, is still put down to its task."""
    from ephemeral.jobs.results import submission_id

    out = {}
    for task_id, map_index in tasks:
        # The key ephemeral.airflow.context.task_key gives that task's RayJobOperator.
        key = f"{context['dag'].dag_id}/{context['run_id']}/{task_id}/{map_index}"
        out[submission_id(cluster, key, 1).rsplit("-a", 1)[0] + "-a"] = task_label(task_id, map_index)
    return out


def jobs_of(context: Any, cluster: str, engine_view: list[JobFacts] | None,
            results: list[tuple[str, int, dict[str, Any]]],
            job_tasks: list[tuple[str, int]], *, created_at: str) -> list[JobFacts]:
    """The jobs of one cluster life (``cluster`` made at ``created_at``): the engine's (with
    times) joined to the tasks' results (with URIs); the results alone when the engine could
    not be asked. A cleared setup makes the name anew, so a result counts on the life it
    names (``cluster_created_at``); one of older code, which names none, only when the engine
    lists its job, or when there is no engine view to say."""
    mine = {r["job_id"]: (t, m, r) for t, m, r in results if r.get("cluster") == cluster
            and r.get("cluster_created_at") in (None, created_at)}
    prefixes = _submission_prefixes(context, cluster, job_tasks)
    jobs = []
    for job in engine_view or []:
        task_id, map_index, result = mine.pop(job.job_id, (None, -1, {}))
        task = task_label(task_id, map_index) if task_id else next(
            (t for p, t in prefixes.items() if job.job_id.startswith(p)), None)
        # Running is what the engine saw run: a Spark application from its driver's
        # registration. The driver's own start before it (on the Airflow worker, in client
        # mode) used no cluster resource: it stays idle time, "between jobs", and the job
        # records when it was submitted so the report can show that wait.
        submitted = result.get("submitted_at")
        jobs.append(job.model_copy(update={
            "task": task, "uris": _uris(result), "seconds": _seconds(result),
            "submitted": float(submitted) if isinstance(submitted, int | float) else None}))
    for job_id, (task_id, map_index, result) in mine.items():  # the engine did not list it
        if engine_view is not None and result.get("cluster_created_at") is None:
            continue  # of another life of the name, as far as anyone can tell
        jobs.append(JobFacts(job_id=job_id, engine=str(result.get("engine", "")),
                             task=task_label(task_id, map_index), status=str(result.get("status")),
                             seconds=_seconds(result) or 0.0, uris=_uris(result)))
    return jobs


def released(context: Any, handle: ClusterHandle) -> Release | None:
    """The deletion of this very cluster by its last job's task in this run, if it finished.
    Never raises: without it the teardown records its own moments."""
    from ephemeral.airflow.release import recorded

    try:
        rel = recorded(handle, context["dag"].dag_id, context["run_id"])
    except Exception:
        log.warning("could not read the release record of %s", handle.name, exc_info=True)
        return None
    return rel if rel is not None and rel.deleted is not None else None


def record_teardown(context: Any, *, setup_task_id: str, targets: dict[str, ClusterHandle],
                    engine_views: dict[str, list[JobFacts] | None], started: float,
                    deleted: dict[str, float], failures: dict[str, str],
                    releases: dict[str, Release] | None = None,
                    link_key: str | None = None) -> str | None:
    """Push the report's address under ``link_key`` (the teardown's extra link), write this
    teardown's part of the run report and (re)build the run's report; return the address.
    A cluster in ``releases`` was deleted by its last job's task: its moments and engine view
    are the release's. Never raises: a report that cannot be written is logged, and the
    teardown's outcome stays the deletion's."""
    from ephemeral.report import record, report_link, report_uri
    from ephemeral.report.deletions import cluster_facts

    if not targets:
        return None
    try:
        dag_id, run_id, teardown = context["dag"].dag_id, context["run_id"], this_task(context)
        url = report_link(dag_id, run_id)  # None when its setting is refused: still recorded
        if link_key and url:
            context["ti"].xcom_push(key=link_key, value=url)
        job_tasks = finished_job_tasks(context)
        results = job_results(context, job_tasks)
        parts = []
        for name, handle in sorted(targets.items()):
            rel = (releases or {}).get(name)
            parts.append(cluster_facts(
                handle, dag_id=dag_id, run_id=run_id, setup_task=setup_task_id,
                teardown_task=teardown,
                started=rel.teardown_started if rel else started,
                deleted=rel.deleted if rel else deleted.get(name),
                deletion=failures.get(name, "complete"),
                released_by=rel.task if rel and rel.task != teardown else None,
                jobs=jobs_of(context, name, rel.jobs if rel else engine_views.get(name),
                             results, job_tasks, created_at=handle.created_at)))
        record(parts)
        log.info("run report: %s", url or report_uri(dag_id, run_id))
        return url
    except Exception:  # the report must never hide the deletion's outcome
        log.exception("could not write the run report of %s", sorted(targets))
        return None


def note_deleted(context: Any, handle: ClusterHandle, *, started: float, deleted: float,
                 jobs: list[JobFacts] | None) -> None:
    """Record, the moment a teardown deleted ``handle``'s cluster, that it did, as a job task's
    deletion does: a later try of the teardown (a cleared task, a worker lost after the
    deletion) then finds it deleted in this run, with these moments, instead of failing on a
    handle the backend no longer records. A job task's own record of this cluster life (whose
    deletion had failed) keeps its task and result and only gains the deletion's moment.
    Never raises: the deletion is done."""
    from ephemeral.airflow.release import recorded
    from ephemeral.report.store import write_release

    try:
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        earlier = recorded(handle, dag_id, run_id)
        write_release(dag_id, run_id, earlier.model_copy(update={"deleted": deleted})
                      if earlier is not None else Release(
                          name=handle.name, created_at=handle.created_at,
                          task=this_task(context), teardown_started=started, deleted=deleted,
                          jobs=jobs))
    except Exception:  # a retry then fails loudly instead; nothing is left running
        log.exception("could not record the deletion of %s for a later try", handle.name)


# --- the demo: dag.test() in this process, then the run's report --------------------------------

def load_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.get_dag(dag_id)


def run_reference_dag(dag_id: str, conf: dict[str, Any] | None = None, *,
                      run_after: datetime | None = None) -> Any:
    """``dag.test`` of a shipped DAG; ``run_after`` (to the microsecond) starts its run id, so
    a caller can tell its own run's clusters from another's of the same DAG."""
    return load_dag(dag_id).test(run_conf=conf or {}, run_after=run_after)


def run_report(dag_run: Any) -> dict[str, Any]:
    """The report the run's teardowns wrote, with what only the demo process can add: every
    task's state (from the metadata database dag.test uses), each cluster's teardown state, the
    clusters still running, and whether all went well."""
    from ephemeral.backends import get_backend
    from ephemeral.report import load_report, report_uri

    report = load_report(dag_run.dag_id, dag_run.run_id) or {
        "dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "clusters": [], "jobs": [],
        "totals": {}}
    tis = {task_label(ti.task_id, ti.map_index): str(ti.state)
           for ti in dag_run.get_task_instances()}
    for c in report["clusters"]:
        c["teardown_state"] = tis.get(str(c["teardown_task"]))
    left = [h.name for h in get_backend().list_owned()]
    ok = (str(dag_run.state) == "success" and not left and bool(report["clusters"])
          and all(c["teardown_state"] == "success" and c["deletion"] == "complete"
                  for c in report["clusters"]))
    return {**report, "state": str(dag_run.state), "tasks": tis, "left_over": left, "ok": ok,
            "html": report_uri(dag_run.dag_id, dag_run.run_id)}


def print_report(console: Any, report: dict[str, Any]) -> None:
    from ephemeral.report.text import print_report as tables

    if report["clusters"]:
        tables(console, report)
    else:
        console.print("[red]no run report was written (no teardown recorded a cluster)[/]")
    console.print(f"tasks: {report['tasks']}", highlight=False)
    console.print(f"report: {report['html']}", highlight=False)
    left = report["left_over"]
    console.print(f"clusters created: {len(report['clusters'])}, still running: {len(left)} "
                  f"{left if left else ''}", highlight=False)
    verdict = "[green]run succeeded, every cluster deleted[/]" if report["ok"] else \
        f"[red]run {report['state']}; left over: {left}[/]"
    console.print(f"{verdict} ({report.get('wall_seconds', '?')}s)")
