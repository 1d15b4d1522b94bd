"""The process the run-end listener starts: delete every cluster of an ended DAG run.

``python -m ephemeral.airflow.run_end --dag-id D --run-id R [--clear-number N] [--dag-run-pk P]
[--run-after T] [--ended-at T] [--linger S]``

It deletes at once, importing no more than the backend needs (importing Airflow takes seconds,
more on a busy scheduler host). With ``--linger`` it then keeps looking for that many seconds: a
setup task marked failed is killed only at its next heartbeat and may still create its cluster
after the run ended. A failed listing or deletion is tried again, backing off, for at least a
minute, linger or not. It stops once the run lives again: cleared (its ``clear_number`` grew) or
deleted and triggered again under its id (another row, another ``run_after``), asked before
every deletion; while the metadata database cannot be read it deletes only cluster lives made
before the run ended. Its output goes to ``$EPHEMERAL_HOME/logs/run-end.log``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ephemeral.errors import ListingIncomplete, first_line

if TYPE_CHECKING:
    from collections.abc import Callable

    from ephemeral.backends import ClusterBackend, ClusterHandle, OwnerSelector
    from ephemeral.report.model import JobFacts

log = logging.getLogger("ephemeral.run_end")

POLL = 2.0
# A listing or deletion that fails (an API server's blip as the run ends) is tried again, backing
# off up to MAX_BACKOFF, for at least RETRY_WINDOW seconds from the start, linger or not: the
# reaper would otherwise leave the cluster for its grace period and interval.
RETRY_WINDOW = 60.0
MAX_BACKOFF = 10.0
# No new try can have started, let alone adopted a cluster, this soon after the end (the
# scheduler queues it, a task process starts): the first deletions need no metadata database
# (importing Airflow takes seconds).
FRESH = 3.0
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
    """Import what ``run_moved`` needs while the first pass deletes."""
    try:
        import airflow.models.dagrun
        import airflow.utils.session  # noqa: F401
    except Exception:  # noqa: BLE001 (run_moved reports it when it matters)
        pass


@dataclass(frozen=True)
class RunEnd:
    """The ended run as the listener saw it. A clear keeps the row and raises ``clear_number``;
    a run deleted and triggered again under the same id is a new row (``clear_number`` 0 again,
    a new ``run_after`` and usually a new ``pk``): either way its clusters are a live run's."""

    dag_id: str
    run_id: str
    clear_number: int = 0
    pk: int | None = None
    """``DagRun.id`` (SQLite may give a deleted newest row's id again: ``run_after`` too)."""
    run_after: float | None = None
    """``DagRun.run_after`` as epoch seconds: kept by a clear, new for a new row."""
    ended_at: float = field(default_factory=time.time)
    """When the run ended (epoch seconds): a life made after it may be a new try's."""


def epoch(when: Any) -> float | None:
    """A datetime (naive ones are UTC, as Airflow stores them) as epoch seconds."""
    if when is None:
        return None
    from datetime import UTC

    return float((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def run_moved(end: RunEnd) -> bool | None:
    """Whether the run lives again since it ended: cleared (``clear_number`` grew) or deleted and
    triggered again under its id (another ``DagRun`` row). False when it is the same row or has
    no row (deleted: its clusters are orphans); None when the metadata database cannot be read."""
    try:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            row = session.execute(select(DagRun.clear_number, DagRun.id, DagRun.run_after).where(
                DagRun.dag_id == end.dag_id, DagRun.run_id == end.run_id)).first()
    except Exception as err:  # noqa: BLE001 (locked SQLite, a failover: the caller is careful)
        log.warning("cannot read the DAG run %s/%s (%s)", end.dag_id, end.run_id,
                    first_line(err))
        return None
    return lives_again(end, row)


def lives_again(end: RunEnd, row: Any) -> bool:
    """Whether the DAG run's row now (``clear_number``, ``id``, ``run_after``; None when it has
    none: deleted, its clusters are orphans) is the ended run again, cleared or made anew."""
    if row is None:
        return False
    clear_number, pk, run_after = row
    if int(clear_number or 0) > end.clear_number or (end.pk is not None and pk != end.pk):
        return True
    now = epoch(run_after)
    return end.run_after is not None and now is not None and abs(now - end.run_after) > 1e-3


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
                    first_line(err))
        return False
    return str(state) in ("failed", "up_for_retry")


def delete_run_clusters(dag_id: str, run_id: str, *, linger: float = 0.0,
                        backend: ClusterBackend | None = None,
                        failed_setup: Callable[[ClusterHandle], bool] = setup_failed,
                        end: RunEnd | None = None,
                        moved: Callable[[RunEnd], bool | None] = run_moved) -> list[str]:
    """Delete every cluster of the run now, then again each time one appears until ``linger``
    seconds have passed; a failed listing or deletion is tried again, backing off, for at least
    ``RETRY_WINDOW`` seconds. Stops once the run lives again (``moved``), asked before every
    deletion (a new try's setup adopts a cluster with its creation time); while that cannot be
    told, only lives made before the run ended are deleted. Returns the names deleted."""
    from ephemeral.airflow.context import KEEP_LABEL
    from ephemeral.report.deletions import created_ts, record_deleted
    from ephemeral.report.engines import engine_jobs

    backend = backend or configured_backend()
    end = end or RunEnd(dag_id, run_id)
    selector = run_selector(dag_id, run_id)
    began_at = time.monotonic()
    linger_until, retry_until = began_at + linger, began_at + max(linger, RETRY_WINDOW)
    deleted: list[str] = []
    backoff = POLL

    def moved_now() -> bool | None:
        return False if time.time() - end.ended_at < FRESH else moved(end)

    while True:
        if moved_now():
            log.info("%s/%s lives again (cleared or triggered anew): its clusters are a new "
                     "try's, left alone", dag_id, run_id)
            break
        trouble = False
        try:
            handles = backend.list_owned(selector)
        except ListingIncomplete as err:  # a kind it cannot list: what it saw goes, then again
            log.warning("listing the clusters of %s/%s was incomplete (%s); deleting those "
                        "found", dag_id, run_id, first_line(err))
            handles, trouble = err.found, True
        except Exception as err:  # noqa: BLE001 (an API blip: the next pass lists again)
            log.warning("listing the clusters of %s/%s failed (%s); trying again", dag_id,
                        run_id, first_line(err))
            handles, trouble = [], True
        gone: list[tuple[ClusterHandle, float, float, list[JobFacts] | None]] = []
        stop = False
        for handle in handles:
            if handle.labels.get(KEEP_LABEL) == "keep" and failed_setup(handle):
                log.info("%s of %s/%s is kept for debugging until %s (on_failure='keep')",
                         handle.name, dag_id, run_id, handle.expires_at)
                continue
            verdict = moved_now()
            if verdict:
                log.info("%s/%s lives again: %s is a new try's, left alone", dag_id, run_id,
                         handle.name)
                stop = True
                break
            if verdict is None and created_ts(handle) > end.ended_at:
                log.warning("%s of %s/%s was made after the run ended and the metadata "
                            "database cannot say whether a new try made it: left for now",
                            handle.name, dag_id, run_id)
                trouble = True
                continue
            # For the report, while it is there; not a Connect UI's slow answer.
            jobs = engine_jobs(backend, handle, connect=False)
            started, began = time.monotonic(), time.time()
            try:
                if backend.delete(handle, wait=True) is False:  # a newer life since the list
                    continue
            except Exception:  # the next pass, the teardown or the reaper tries again
                log.exception("deleting %s of %s/%s failed", handle.name, dag_id, run_id)
                trouble = True
                continue
            deleted.append(handle.name)
            log.info("deleted %s of ended run %s/%s in %.1fs", handle.name, dag_id, run_id,
                     time.monotonic() - started)
            gone.append((handle, began, time.time(), jobs))
        # No teardown will record them (skipped, failed, never reached): the run's report,
        # once every cluster of this pass is gone.
        for handle, began, ended, jobs in gone:
            record_deleted(handle, by=RUN_END, started=began, deleted=ended, jobs=jobs)
        now = time.monotonic()
        if stop or now >= (retry_until if trouble else linger_until):
            if trouble:
                log.warning("%s/%s: gave up after %.0fs of failures; the reaper is the last "
                            "line", dag_id, run_id, now - began_at)
            break
        backoff = min(backoff * 2, MAX_BACKOFF) if trouble else POLL
        time.sleep(min(backoff, max((retry_until if trouble else linger_until) - now, 0.1)))
    return deleted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ephemeral.airflow.run_end",
        description="Delete every cluster of an ended DAG run (started by the run-end listener).")
    parser.add_argument("--dag-id", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--clear-number", type=int, default=0,
                        help="the run's clear_number when it ended: stop if it grows")
    parser.add_argument("--dag-run-pk", type=int, default=None,
                        help="the run's DagRun.id: another row means it was triggered anew")
    parser.add_argument("--run-after", type=float, default=None,
                        help="the run's run_after (epoch seconds): kept by a clear only")
    parser.add_argument("--ended-at", type=float, default=None,
                        help="when the run ended (epoch seconds; default: now)")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="seconds to keep deleting clusters that appear after the end")
    args = parser.parse_args(argv)
    end = RunEnd(args.dag_id, args.run_id, clear_number=args.clear_number, pk=args.dag_run_pk,
                 run_after=args.run_after, ended_at=args.ended_at or time.time())
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s [{os.getpid()}] %(levelname)s %(message)s")
    threading.Thread(target=_warm_airflow, daemon=True).start()
    log.info("run %s/%s ended: deleting its clusters", args.dag_id, args.run_id)
    try:
        names = delete_run_clusters(args.dag_id, args.run_id, linger=args.linger, end=end)
    except Exception:
        log.exception("cleanup of %s/%s failed; the reaper is the last line",
                      args.dag_id, args.run_id)
        return 1
    log.info("run %s/%s: %d cluster(s) deleted%s", args.dag_id, args.run_id, len(names),
             f" ({', '.join(names)})" if names else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
