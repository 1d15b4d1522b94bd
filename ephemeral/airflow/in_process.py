"""Clusters made by an in-process test run go when its process ends.

``airflow dags test``, ``airflow tasks test`` and ``dag.test()`` run a DAG's tasks, and their
deferred waits, in one process: no scheduler, triggerer or run-end listener acts on that run.
Cut short, such a run leaves its clusters to the reaper's idle or TTL rule (hours of GPUs):
Ctrl-C during a deferred wait (``asyncio.run`` turns it into a KeyboardInterrupt past every
task's clean-up), a second Ctrl-C between tasks, or a setup tested alone (``airflow tasks test
DAG create_ray``, whose temporary run no job or teardown can reach). So a cluster a setup made
in such a run is deleted when the process ends, unless its teardown did that first.

Only the run such a command made is its own: ``dag.test()``'s, and ``tasks test``'s temporary
run. ``airflow tasks test DAG create_ray RUN_ID`` of an existing run makes the cluster under
that run's identity, which the run's own setup would adopt: it stays for that run's teardown.
A worker's task process (a supervisor's child) is not such a run, and neither is a forked
child of one: their clusters outlive them, as the rest of the DAG needs.

The process ends as Ctrl-C ends it on SIGHUP (a closed terminal) too, so the deletion runs; a
SIGTERM is the running task's (Airflow calls its ``on_kill``); nothing runs after a SIGKILL.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import Any

from ephemeral.backends.base import ClusterBackend, ClusterHandle, same_life
from ephemeral.backends.fake import REAL_BACKENDS
from ephemeral.lifecycle import delete_killed, interrupt_on_stop_signals, stop_signals_held

log = logging.getLogger(__name__)

_MADE: dict[tuple[str, str], tuple[ClusterBackend, ClusterHandle, str]] = {}
_OWNER_PID: int | None = None  # the process whose exit deletes what _MADE holds


def in_test_run() -> bool:
    """Whether this task runs in line in its DAG run's only process: Airflow's in-process
    supervisor (``dag.test()``, ``airflow dags test``/``tasks test``) holds its comms."""
    supervisor = sys.modules.get("airflow.sdk.execution_time.supervisor")
    runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    if supervisor is None or runner is None:
        return False
    in_process = getattr(supervisor, "InProcessSupervisorComms", None)
    comms = getattr(runner, "SUPERVISOR_COMMS", None)
    return in_process is not None and isinstance(comms, in_process)


# How Airflow 3.3 marks the runs its test commands make (airflow.sdk.definitions.dag,
# airflow.cli.commands.task_command). Should either change, nothing is registered: the safe side.
TEST_RUN_USER = "dag_test"
TEMPORARY_RUN = "__airflow_temporary_run_"


def own_run(dag_run: Any) -> bool:
    """Whether ``dag_run`` (the task context's) is one a test command made for itself."""
    return (getattr(dag_run, "triggering_user_name", None) == TEST_RUN_USER
            or str(getattr(dag_run, "run_id", "")).startswith(TEMPORARY_RUN))


def delete_at_exit(backend: ClusterBackend, handle: ClusterHandle, setup: str,
                   dag_run: Any) -> bool:
    """In an in-process test run of its own, have the cluster ``setup`` made (not one it
    adopted) deleted when this process ends; whether it will be."""
    global _OWNER_PID
    # The fake backend's clusters live in this process's memory: they end with it.
    if (handle.adopted or backend.name not in REAL_BACKENDS or not in_test_run()
            or not own_run(dag_run)):
        return False
    if _OWNER_PID != os.getpid():
        _MADE.clear()  # a fork's copy: those are its parent's to delete
        _OWNER_PID = os.getpid()
        atexit.register(_delete_left)
        if threading.current_thread() is threading.main_thread():
            interrupt_on_stop_signals()  # a closed terminal ends it through the deletion too
    _MADE[_life(handle)] = (backend, handle, setup)
    return True


def deleted_by_teardown(handle: ClusterHandle) -> None:
    """Its teardown deleted it: nothing is left to ask for at exit (a backend may be gone by
    then, such as a test's API server)."""
    _MADE.pop(_life(handle), None)


def _life(handle: ClusterHandle) -> tuple[str, str]:
    return handle.name, str(handle.created_ts or handle.created_at)


def _delete_left() -> None:
    """Delete what this process's test runs made and their teardowns left, each only while it
    is the same cluster life (a name made again since is not this run's)."""
    if _OWNER_PID != os.getpid():
        return
    with stop_signals_held():  # a second Ctrl-C must not leave a cluster half deleted
        while _MADE:
            _, (backend, handle, setup) = _MADE.popitem()
            try:
                now = backend.get(handle.name, all_instances=True)
                if now is None or not same_life(now, handle):
                    continue  # its teardown (or anyone) deleted it
                log.warning("deleting cluster %s: setup %s made it in this in-process test run "
                            "(dag.test, airflow dags test or tasks test), which ends without "
                            "its teardown", handle.name, setup)
                delete_killed(backend, handle, setup, reason="its test run ended")
            except Exception as err:  # noqa: BLE001 - one failure must not keep the others
                log.warning("could not delete cluster %s as its test run ended (%s): the "
                            "reaper deletes it by its TTL or idleTimeout", handle.name, err)
