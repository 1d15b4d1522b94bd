"""`make demo`: run the reference DAG `train_distributed` end to end through Airflow
(`dag.test()`, project-local AIRFLOW_HOME) on the local backend, then print the run report its
teardowns wrote (the same one `ephemeral report` prints and the teardowns' "Run report" link
opens): each cluster's lifetime, how much of it ran jobs and why the rest was idle, what it
reserved and cost, the jobs' results, and that every cluster created was deleted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def configure() -> None:
    """Environment for a self-contained Airflow: set before airflow is imported."""
    home = Path(os.environ.setdefault("EPHEMERAL_HOME", str(ROOT / ".home")))
    airflow_home = Path(os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow")))
    airflow_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")  # waits in the triggerer
    os.environ.setdefault("AIRFLOW__CORE__XCOM_BACKEND", "ephemeral.airflow.xcom.MetadataOnlyXCom")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    # Example prices, so the report shows money (a deployment sets its own: EPHEMERAL_COST_FILE).
    if not os.environ.get("EPHEMERAL_COST_FILE"):
        os.environ.setdefault("EPHEMERAL_COST_CPU_HOUR", "0.04")
        os.environ.setdefault("EPHEMERAL_COST_GPU_HOUR", "2.50")
        os.environ.setdefault("EPHEMERAL_COST_MEMORY_GIB_HOUR", "0.005")


def migrate() -> None:
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)


def main() -> int:
    configure()
    migrate()
    from rich.console import Console

    from ephemeral.airflow.report import print_report, run_reference_dag, run_report

    # Piped or captured output gets rich's 80 columns, which cuts the tables' cells.
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 150)
    console.rule("train_distributed through Airflow (dag.test, local backend)")
    t0, run_after = time.monotonic(), datetime.now(UTC)
    # Ctrl-C or SIGTERM inside a task is dag.test's (the task fails and the teardowns run, or
    # the run goes on); one that ends dag.test itself, between tasks, leaves the clusters to
    # no teardown and no reaper here: delete what this run made before leaving.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        dag_run = run_reference_dag("train_distributed", {"profile": "ci-cpu"},
                                    run_after=run_after)
    except BaseException:
        _delete_this_runs_clusters(console, run_after)
        raise
    report: dict[str, Any] = run_report(dag_run)
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    print_report(console, report)
    return 0 if report["ok"] else 1


def _delete_this_runs_clusters(console: Any, run_after: datetime) -> None:
    """Every cluster of this demo's own run of train_distributed: dag.test names it
    ``manual__<run_after>`` (a random tail may follow), and ``run_after`` is this process's
    to the microsecond, so another demo in the same home keeps its clusters."""
    from ephemeral.backends import get_backend
    from ephemeral.backends.base import OwnerSelector

    backend = get_backend()
    mine = OwnerSelector(labels={"ephemeral.dev/dag-id": "train_distributed"})
    prefix = f"manual__{run_after.isoformat()}"
    for handle in backend.list_owned(mine):
        if handle.run is not None and handle.run[1].startswith(prefix):
            backend.delete(handle, wait=True)
            console.print(f"stopped: deleted {handle.name}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
