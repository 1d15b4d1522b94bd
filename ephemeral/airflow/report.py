"""Run a DAG with ``dag.test()`` and report on its clusters: lifetime, busy share, artifacts,
and that each one was deleted. Used by ``make demo`` and the benchmarks."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from ephemeral.airflow.operators import (
    CreateClusterOperator,
    DeleteClusterOperator,
    RayJobOperator,
    SparkSubmitOperator,
)

JOB_OPERATORS = (RayJobOperator, SparkSubmitOperator)


def load_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.get_dag(dag_id)


def run_reference_dag(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
    return load_dag(dag_id).test(run_conf=conf or {})


def _xcoms(dag_id: str, run_id: str) -> dict[tuple[str, int], Any]:
    from airflow.models.xcom import XComModel
    from airflow.sdk.serde import deserialize
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id,
                                               XComModel.run_id == run_id,
                                               XComModel.key == "return_value").all()
        return {(r.task_id, r.map_index): deserialize(r.value) for r in rows}


def _seconds(a: datetime | None, b: datetime | None) -> float:
    return (b - a).total_seconds() if a and b else 0.0


def run_report(dag_run: Any) -> dict[str, Any]:
    """Cluster lifetimes (setup start to teardown end), job time on each, artifacts, leftovers."""
    from ephemeral.backends import get_backend

    dag = load_dag(dag_run.dag_id)
    tis = {(ti.task_id, ti.map_index): ti for ti in dag_run.get_task_instances()}
    xcoms = _xcoms(dag_run.dag_id, dag_run.run_id)
    clusters, jobs = [], []
    for task in dag.tasks:
        if not isinstance(task, CreateClusterOperator):
            continue
        setup = tis.get((task.task_id, -1))
        teardown_id = next((t.task_id for t in dag.tasks if isinstance(t, DeleteClusterOperator)
                            and t.setup_task_id == task.task_id), None)
        teardown = tis.get((teardown_id, -1)) if teardown_id else None
        handle = xcoms.get((task.task_id, -1)) or {}
        lifetime = _seconds(setup.start_date if setup else None,
                            teardown.end_date if teardown else None)
        busy = 0.0
        for (task_id, map_index), value in xcoms.items():
            op = dag.get_task(task_id)
            op_class = getattr(op, "operator_class", type(op))  # mapped tasks wrap the class
            if isinstance(op_class, type) and issubclass(op_class, JOB_OPERATORS) and isinstance(value, dict) and \
                    value.get("cluster") == handle.get("name"):
                busy += float(value.get("seconds", 0))
                jobs.append({"task": task_id + (f"[{map_index}]" if map_index >= 0 else ""),
                             "cluster": value.get("cluster"), "job_id": value.get("job_id"),
                             "seconds": value.get("seconds"), "result": value.get("result")})
        # Idle time, split by cause: starting the engines (the setup task), deleting them (the
        # teardown), and the rest, which is what orchestration adds between jobs.
        starting = _seconds(setup.start_date, setup.end_date) if setup else 0.0
        stopping = _seconds(teardown.start_date, teardown.end_date) if teardown else 0.0
        clusters.append({
            "setup_task": task.task_id, "name": handle.get("name"), "spec": handle.get("spec_ref"),
            "setup_state": setup.state if setup else None,
            "teardown_state": teardown.state if teardown else None,
            "lifetime_s": round(lifetime, 1), "busy_s": round(busy, 1),
            "idle_share": round(1 - busy / lifetime, 3) if lifetime else None,
            "starting_s": round(starting, 1), "deleting_s": round(stopping, 1),
            "between_jobs_s": round(max(lifetime - busy - starting - stopping, 0.0), 1),
        })
    left = [h.name for h in get_backend().list_owned()]
    states = {f"{t}{'' if m < 0 else f'[{m}]'}": str(ti.state) for (t, m), ti in tis.items()}
    ok = (str(dag_run.state) == "success" and not left
          and all(c["teardown_state"] == "success" for c in clusters))
    return {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "state": str(dag_run.state),
            "clusters": clusters, "jobs": jobs, "left_over": left, "tasks": states, "ok": ok}


def print_report(console: Any, report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("cluster", "spec", "lifetime", "running jobs", "idle",
                  "idle = starting + between jobs + deleting", "teardown")
    for c in report["clusters"]:
        table.add_row(str(c["name"]), str(c["spec"]), f"{c['lifetime_s']:.1f}s",
                      f"{c['busy_s']:.1f}s", f"{(c['idle_share'] or 0) * 100:.0f}%",
                      f"{c['starting_s']:.1f}s + {c['between_jobs_s']:.1f}s + "
                      f"{c['deleting_s']:.1f}s", str(c["teardown_state"]))
    console.print(table)
    jobs = Table("task", "job", "seconds", "result")
    for j in report["jobs"]:
        jobs.add_row(j["task"], str(j["job_id"]), f"{j['seconds']:.1f}",
                     ", ".join(f"{k}={v}" for k, v in (j["result"] or {}).items()))
    console.print(jobs)
    console.print(f"tasks: {report['tasks']}", highlight=False)
    left = report["left_over"]
    console.print(f"clusters created: {len(report['clusters'])}, still running: {len(left)} "
                  f"{left if left else ''}", highlight=False)
    verdict = "[green]run succeeded, every cluster deleted[/]" if report["ok"] else \
        f"[red]run {report['state']}; left over: {left}[/]"
    console.print(f"{verdict} ({report.get('wall_seconds', '?')}s)")
