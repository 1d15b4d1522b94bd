"""Delete the clusters of a DAG run as soon as the run ends, whatever ended it.

Airflow 3.3 calls ``on_dag_run_success`` / ``on_dag_run_failed`` in the scheduler when it finishes
a run (its tasks ended, ``dagrun_timeout``, a deadlock) and in the api-server when a run is
marked success or failed through the REST API (``PATCH .../dagRuns/{run}``, the UI). In the
api-server that call comes before the change is committed, and while a teardown is still pending
the run even stays "running": the hook name, not ``dag_run.state``, says the run is over.

A teardown that ran leaves nothing, but some paths never run one: a setup marked failed in the
instant it defers, a failed setup without retry, a timed-out run. Those clusters would wait for
the reaper (minutes). Here the listener hands the run to a detached process,
``python -m ephemeral.airflow.listener``, which deletes every cluster the run owns and then keeps
looking for a short while: a setup task marked failed is killed only at its next heartbeat and
may still create its cluster after the run ended. It stops early when the run is cleared again
(its ``clear_number`` grew): the new try's clusters belong to a live run.

The scheduler's loop is never blocked by a deletion and nothing here raises into Airflow. A run
that succeeded leaves nothing owned on the local backend, so that case costs a directory
listing in-process and no process at all.

Limits: the listener deletes on the deployment's configured backend (``EPHEMERAL_BACKEND``, or
the Kubernetes connection ``EPHEMERAL_KUBERNETES_CONN_ID``); clusters a task made on another
backend or connection are left to their teardown and the reaper.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

if TYPE_CHECKING:
    from ephemeral.backends import ClusterBackend, OwnerSelector

log = logging.getLogger(__name__)

# How long the deleting process keeps looking after the run ended (seconds): a killed setup
# dies at its next heartbeat, a few seconds after the run was marked.
LINGER_ENV = "EPHEMERAL_RUN_END_LINGER"
DEFAULT_LINGER = 30.0
POLL = 2.0
LOG_NAME = "run-end.log"


def run_selector(dag_id: str, run_id: str) -> OwnerSelector:
    """Every cluster of one DAG run, whatever task, map index or spec made it."""
    from ephemeral.backends import OwnerSelector
    from ephemeral.specs.identity import PREFIX, label_value

    return OwnerSelector(labels={PREFIX + "dag-id": label_value(dag_id),
                                 PREFIX + "run-id": label_value(run_id)})


def configured_backend() -> ClusterBackend:
    """The deployment's backend, as a task with no ``backend`` argument gets it."""
    from ephemeral.airflow.backends import task_backend

    return task_backend(None, os.environ.get("EPHEMERAL_KUBERNETES_CONN_ID") or None)


def _is_local() -> bool:
    from ephemeral.settings import get_settings

    return not os.environ.get("EPHEMERAL_KUBERNETES_CONN_ID") and \
        get_settings().backend == "local"


def _linger() -> float:
    try:
        return max(0.0, float(os.environ.get(LINGER_ENV, DEFAULT_LINGER)))
    except ValueError:
        return DEFAULT_LINGER


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    run_ended(dag_run, failed=False, why=msg)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    run_ended(dag_run, failed=True, why=msg)


def run_ended(dag_run: Any, *, failed: bool, why: str = "") -> None:
    """Start the deleting process when the run may own clusters. Never raises."""
    try:
        dag_id, run_id = str(dag_run.dag_id), str(dag_run.run_id)
        clear_number = int(getattr(dag_run, "clear_number", 0) or 0)
        # A failed or marked run may still get a cluster from a setup that is being killed;
        # a run that succeeded on its own ran its teardowns: look only at what is left.
        if not failed and _is_local() and not configured_backend().list_owned(
                run_selector(dag_id, run_id)):
            return
        spawn(dag_id, run_id, clear_number, linger=_linger() if failed else 0.0, why=why)
    except Exception:  # a listener must never break the scheduler or the api-server
        log.exception("ephemeral: cleanup of the clusters of %s/%s not started",
                      getattr(dag_run, "dag_id", "?"), getattr(dag_run, "run_id", "?"))


def log_path() -> Path:
    from ephemeral.settings import get_settings

    return get_settings().home / "logs" / LOG_NAME


def spawn(dag_id: str, run_id: str, clear_number: int, *, linger: float, why: str = ""
          ) -> None:
    """``python -m ephemeral.airflow.listener`` in its own session, detached from the caller."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "ephemeral.airflow.listener", "--dag-id", dag_id,
             "--run-id", run_id, "--clear-number", str(clear_number), "--linger", str(linger)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    log.info("ephemeral: run %s/%s ended (%s): deleting its clusters in process %d (log %s)",
             dag_id, run_id, why or "no reason given", proc.pid, path)


# -- the deleting process --------------------------------------------------------------------

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


def delete_run_clusters(dag_id: str, run_id: str, *, clear_number: int = 0,
                        linger: float = 0.0, backend: ClusterBackend | None = None) -> list[str]:
    """Delete every cluster of the run now, then again each time one appears until ``linger``
    seconds have passed. Returns the names deleted."""
    backend = backend or configured_backend()
    selector = run_selector(dag_id, run_id)
    deadline = time.monotonic() + linger
    deleted: list[str] = []
    while True:
        if linger and cleared_since(dag_id, run_id, clear_number):
            log.info("%s/%s was cleared again: its clusters are a new try's, left alone",
                     dag_id, run_id)
            break
        for handle in backend.list_owned(selector):
            started = time.monotonic()
            try:
                backend.delete(handle, wait=True)
            except Exception:  # the next pass, the teardown or the reaper tries again
                log.exception("deleting %s of %s/%s failed", handle.name, dag_id, run_id)
                continue
            deleted.append(handle.name)
            log.info("deleted %s of ended run %s/%s in %.1fs", handle.name, dag_id, run_id,
                     time.monotonic() - started)
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    return deleted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ephemeral.airflow.listener",
        description="Delete every cluster of an ended DAG run (started by the run-end listener).")
    parser.add_argument("--dag-id", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--clear-number", type=int, default=0,
                        help="the run's clear_number when it ended: stop if it grows")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="seconds to keep deleting clusters that appear after the end")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s [{os.getpid()}] %(levelname)s %(message)s")
    try:
        names = delete_run_clusters(args.dag_id, args.run_id, clear_number=args.clear_number,
                                    linger=args.linger)
    except Exception:
        log.exception("cleanup of %s/%s failed; the reaper is the last line",
                      args.dag_id, args.run_id)
        return 1
    log.info("run %s/%s ended: %d cluster(s) deleted%s", args.dag_id, args.run_id, len(names),
             f" ({', '.join(names)})" if names else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
