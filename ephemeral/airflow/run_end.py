"""The process the run-end listener starts: delete every cluster of an ended DAG run.

``python -m ephemeral.airflow.run_end --dag-id D --run-id R [--clear-number N] [--linger S]``

It deletes at once, importing no more than the backend needs (importing Airflow takes seconds,
more on a busy scheduler host). With ``--linger`` it then keeps looking for that many seconds: a
setup task marked failed is killed only at its next heartbeat and may still create its cluster
after the run ended. It stops early when the run is cleared again (its ``clear_number`` grew in
the metadata database): the new try's clusters belong to a live run. Its output goes to
``$EPHEMERAL_HOME/logs/run-end.log``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from ephemeral.backends import ClusterBackend, ClusterHandle, OwnerSelector
    from ephemeral.report.model import JobFacts

log = logging.getLogger("ephemeral.run_end")

POLL = 2.0
RUN_END = "run-end"  # who deleted the cluster, in its run's report (released_by)


def run_selector(dag_id: str, run_id: str) -> OwnerSelector:
    """Every cluster of one DAG run, whatever task, map index or spec made it."""
    from ephemeral.backends import OwnerSelector

    return OwnerSelector.of_run(dag_id, run_id)


def configured_backend() -> ClusterBackend:
    """The deployment's backend, as a task with no ``backend`` argument gets it."""
    from ephemeral.airflow.backends import task_backend
    from ephemeral.settings import setting

    return task_backend(None, setting("kubernetes_conn_id"))


def _warm_airflow() -> None:
    """Import what ``cleared_since`` needs while the first pass deletes."""
    try:
        import airflow.models.dagrun
        import airflow.utils.session  # noqa: F401
    except Exception:  # noqa: BLE001 (cleared_since reports it when it matters)
        pass


def cleared_since(dag_id: str, run_id: str, clear_number: int) -> bool:
    """Whether the run was cleared (re-run) after it ended; False when that cannot be told."""
    try:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            now = session.scalar(select(DagRun.clear_number).where(
                DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    except Exception as err:  # noqa: BLE001 (no metadata database: deleting is the safe side)
        log.warning("cannot read the clear number of %s/%s (%s); going on", dag_id, run_id,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return False
    return now is not None and int(now) > clear_number


def setup_failed(handle: ClusterHandle) -> bool:
    """Whether the setup that made ``handle`` failed: ``on_failure="keep"`` keeps a failed
    setup's cluster only. A setup that succeeded hands its cluster to the teardown, and when the
    run ends without it (skipped, failed, marked) the cluster goes like any other. False when
    it cannot be told: deleting is the safe side."""
    from ephemeral.specs.identity import PREFIX

    task_id = handle.setup_task
    dag_id, run_id = handle.run or (None, None)
    map_label = handle.labels.get(PREFIX + "map-index", "none")
    try:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            state = session.scalar(select(TaskInstance.state).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == (-1 if map_label == "none" else int(map_label))))
    except Exception as err:  # noqa: BLE001 (no metadata database)
        log.warning("cannot read the state of %s's setup (%s); deleting it", handle.name,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return False
    return str(state) in ("failed", "up_for_retry")


def delete_run_clusters(dag_id: str, run_id: str, *, clear_number: int = 0,
                        linger: float = 0.0, backend: ClusterBackend | None = None,
                        failed_setup: Callable[[ClusterHandle], bool] = setup_failed
                        ) -> list[str]:
    """Delete every cluster of the run now, then again each time one appears until ``linger``
    seconds have passed (unless the run is cleared meanwhile). Returns the names deleted."""
    from ephemeral.airflow.context import KEEP_LABEL
    from ephemeral.report.deletions import record_deleted
    from ephemeral.report.engines import engine_jobs

    backend = backend or configured_backend()
    selector = run_selector(dag_id, run_id)
    deadline = time.monotonic() + linger
    deleted: list[str] = []
    first = True
    while True:
        # The first pass follows the end by a second: no re-run can own a cluster yet.
        if not first and cleared_since(dag_id, run_id, clear_number):
            log.info("%s/%s was cleared again: its clusters are a new try's, left alone",
                     dag_id, run_id)
            break
        first = False
        gone: list[tuple[ClusterHandle, float, float, list[JobFacts] | None]] = []
        for handle in backend.list_owned(selector):
            if handle.labels.get(KEEP_LABEL) == "keep" and failed_setup(handle):
                log.info("%s of %s/%s is kept for debugging until %s (on_failure='keep')",
                         handle.name, dag_id, run_id, handle.expires_at)
                continue
            # For the report, while it is there; not a Connect UI's slow answer.
            jobs = engine_jobs(backend, handle, connect=False)
            started, began = time.monotonic(), time.time()
            try:
                if backend.delete(handle, wait=True) is False:  # a newer life since the list
                    continue
            except Exception:  # the next pass, the teardown or the reaper tries again
                log.exception("deleting %s of %s/%s failed", handle.name, dag_id, run_id)
                continue
            deleted.append(handle.name)
            log.info("deleted %s of ended run %s/%s in %.1fs", handle.name, dag_id, run_id,
                     time.monotonic() - started)
            gone.append((handle, began, time.time(), jobs))
        # No teardown will record them (skipped, failed, never reached): the run's report,
        # once every cluster of this pass is gone.
        for handle, began, ended, jobs in gone:
            record_deleted(handle, by=RUN_END, started=began, deleted=ended, jobs=jobs)
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    return deleted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ephemeral.airflow.run_end",
        description="Delete every cluster of an ended DAG run (started by the run-end listener).")
    parser.add_argument("--dag-id", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--clear-number", type=int, default=0,
                        help="the run's clear_number when it ended: stop if it grows")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="seconds to keep deleting clusters that appear after the end")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s [{os.getpid()}] %(levelname)s %(message)s")
    if args.linger:
        threading.Thread(target=_warm_airflow, daemon=True).start()
    log.info("run %s/%s ended: deleting its clusters", args.dag_id, args.run_id)
    try:
        names = delete_run_clusters(args.dag_id, args.run_id, clear_number=args.clear_number,
                                    linger=args.linger)
    except Exception:
        log.exception("cleanup of %s/%s failed; the reaper is the last line",
                      args.dag_id, args.run_id)
        return 1
    log.info("run %s/%s: %d cluster(s) deleted%s", args.dag_id, args.run_id, len(names),
             f" ({', '.join(names)})" if names else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
