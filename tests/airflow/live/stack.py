"""The Airflow every live and browser test drives: ``ephemeral.devstack``'s stack (what ``make
airflow`` starts: api-server, scheduler with LocalExecutor, dag-processor, triggerer) on a
throwaway PostgreSQL, with the reference DAGs and the live tests' DAGs in one DAGs folder.
Starting it is the expensive part, so one serves the whole tests/airflow package
(tests/airflow/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from ephemeral.devstack import Stack
from ephemeral.devstack.stack import ROOT
from tests.airflow.live.probes import cluster_processes

LIVE_DAGS = Path(__file__).parent / "dags"
# The reference DAGs the browser tests run; the others would only keep the dag-processor
# parsing on this 2-core machine (tests/airflow/test_dags.py parses every one of them).
REFERENCE_DAGS = ("ray_job_adhoc.py", "train_distributed.py")
# Quicker than a person's stack: runs of the fault matrix's DAGs start unpaused, the scheduler
# heartbeats every second, new DAG files are listed every 5 s. The files do not change during
# a session, so each is parsed again only every 2 minutes (Airflow's default: 30 s).
LIVE_ENV = {
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
}


def clean_env() -> dict[str, str]:
    """This process's environment without the test session's Airflow and ephemeral settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "PYTEST_", "EPHEMERAL_"))}


def dags_folder(base: Path) -> Path:
    """The browser tests' reference DAGs (dags/) and the live tests' DAGs as one folder of
    links (the dag-processor follows them; every DAG file resolves its own paths)."""
    folder = base / "dags"
    (folder / "reference").mkdir(parents=True)
    for name in REFERENCE_DAGS:
        (folder / "reference" / name).symlink_to(ROOT / "dags" / name)
    (folder / "live").symlink_to(LIVE_DAGS, target_is_directory=True)
    return folder


def shared_stack(base: Path) -> Stack:
    """The stack, not started yet, everything it writes under ``base``."""
    return Stack(home=base / "airflow", dags=dags_folder(base), db="postgres",
                 ephemeral_home=base / "ephemeral", port=0, base_env=clean_env(),
                 extra_env=dict(LIVE_ENV))


def stop_and_check(stack: Stack) -> None:
    """Stop the stack, delete every cluster its runs left (of any instance: the tests' own
    probes make some) and fail if any process of the stack or of its clusters is left."""
    from ephemeral.backends import OwnerSelector
    from ephemeral.backends.local import LocalBackend

    stack.stop()
    left = stack.processes()
    assert not left, f"processes of the stack left: {[p.cmdline() for p in left]}"
    assert stack.ephemeral_home is not None
    backend = LocalBackend(stack.ephemeral_home)
    for h in backend.list_owned(OwnerSelector.everything()):
        backend.delete(h, wait=True)
    # Processes of this stack's clusters only (each carries its cluster folder in its
    # environment): other agents and benchmarks start engines on this machine meanwhile.
    leaked = cluster_processes(stack.ephemeral_home)
    if leaked:
        psutil.wait_procs([psutil.Process(p) for pids in leaked.values() for p in pids
                           if psutil.pid_exists(p)], timeout=5)
        leaked = cluster_processes(stack.ephemeral_home)
    assert not leaked, f"Ray/Spark processes left behind: {leaked}"
