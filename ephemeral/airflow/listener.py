"""Delete the clusters of a DAG run as soon as the run ends, whatever ended it.

Airflow 3.3 calls ``on_dag_run_success`` / ``on_dag_run_failed`` in the scheduler when it finishes
a run (its tasks ended, ``dagrun_timeout``, a deadlock) and in the api-server when a run is
marked success or failed through the REST API (``PATCH .../dagRuns/{run}``, the UI). In the
api-server that call comes before the change is committed, and while a teardown is still pending
the run even stays "running": the hook name, not ``dag_run.state``, says the run is over.

A teardown that ran leaves nothing, but some paths never run one: a setup marked failed in the
instant it defers, a failed setup without retry, a timed-out run. Those clusters would wait for
the reaper (minutes). Here the listener hands the run to a detached process,
``python -m ephemeral.airflow.run_end`` (see there), which deletes every cluster the run owns.

The scheduler's loop is never blocked by a deletion and nothing here raises into Airflow. A run
that succeeded leaves nothing owned on the local backend, so that case costs a directory
listing in-process and no process at all.

Limits: the listener deletes on the deployment's configured backend (``EPHEMERAL_BACKEND``, or
the Kubernetes connection ``EPHEMERAL_KUBERNETES_CONN_ID``); clusters a task made on another
backend or connection are left to their teardown and the reaper.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from airflow.listeners import hookimpl

from ephemeral.airflow.run_end import RunEnd, configured_backend, epoch, run_selector
from ephemeral.errors import SettingError
from ephemeral.settings import lookup, number, setting

log = logging.getLogger(__name__)

# How long the deleting process keeps looking after the run ended (seconds): a killed setup
# dies at its next heartbeat, a few seconds after the run was marked.
LINGER_ENV = "EPHEMERAL_RUN_END_LINGER"
DEFAULT_LINGER = 30.0
MAX_LINGER = 3600.0
LOG_NAME = "run-end.log"


def _is_local() -> bool:
    from ephemeral.settings import get_settings

    return not setting("kubernetes_conn_id") and \
        get_settings().backend == "local"


def run_end_linger() -> float:
    """The linger setting: a number of seconds from 0 to ``MAX_LINGER`` (default 30); any
    other value fails naming its source. The setup checks it before making a cluster (a typo
    is said there, not found after a failed run)."""
    found = lookup("run_end_linger")
    value = number("run_end_linger")
    if value is None:
        return DEFAULT_LINGER
    if not 0 <= value <= MAX_LINGER:
        raise SettingError(found.source, [(found.source, (
            f"{found.value!r} is not between 0 and {MAX_LINGER:.0f} seconds"))])
    return value


def _linger() -> float:
    """Never raises (the scheduler calls it): a bad value is the default, said in the log, so
    a typo cannot leave a poller behind every failed run for good."""
    try:
        return run_end_linger()
    except SettingError as err:
        log.warning("ephemeral: %s; lingering %.0f s", err, DEFAULT_LINGER)
        return DEFAULT_LINGER


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    run_ended(dag_run, failed=False, why=msg)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    run_ended(dag_run, failed=True, why=msg)


# What the scheduler says of a run whose every task ended on its own and succeeded: no setup can
# still be making a cluster, so that run-end needs no linger. Every other end may have one: a
# failure, a timeout, a deadlock, and a run marked failed or success (the REST API, the UI)
# while a setup creates (it is killed only at its next heartbeat).
FINISHED = "success"


def run_ended(dag_run: Any, *, failed: bool, why: str = "") -> None:
    """Start the deleting process when the run may own clusters. Never raises."""
    try:
        end = RunEnd(str(dag_run.dag_id), str(dag_run.run_id),
                     clear_number=int(getattr(dag_run, "clear_number", 0) or 0),
                     pk=_int_or_none(getattr(dag_run, "id", None)),
                     run_after=epoch(getattr(dag_run, "run_after", None)))
        finished = not failed and why == FINISHED
        # A run that succeeded on its own ran its teardowns: look only at what is left.
        if finished and _is_local() and not configured_backend().list_owned(
                run_selector(end.dag_id, end.run_id)):
            return
        spawn(end, linger=0.0 if finished else _linger(), why=why)
    except Exception:  # a listener must never break the scheduler or the api-server
        log.exception("ephemeral: cleanup of the clusters of %s/%s not started",
                      getattr(dag_run, "dag_id", "?"), getattr(dag_run, "run_id", "?"))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def log_path() -> Path:
    from ephemeral.settings import get_settings

    return get_settings().home / "logs" / LOG_NAME


def spawn(end: RunEnd, *, linger: float, why: str = "") -> None:
    """``python -m ephemeral.airflow.run_end`` in its own session, detached from the caller."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # --x=value: a run id that starts with '-' (allowed: "-rerun") is a value, not an option.
    who = [f"--dag-id={end.dag_id}", f"--run-id={end.run_id}", "--clear-number",
           str(end.clear_number), "--ended-at", repr(end.ended_at)]
    if end.pk is not None:
        who += ["--dag-run-pk", str(end.pk)]
    if end.run_after is not None:
        who += ["--run-after", repr(end.run_after)]
    with open(path, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "ephemeral.airflow.run_end", *who, "--linger", str(linger)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    log.info("ephemeral: run %s/%s ended (%s): deleting its clusters in process %d (log %s)",
             end.dag_id, end.run_id, why or "no reason given", proc.pid, path)
