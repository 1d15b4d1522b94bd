"""What is left of a run on the live stack: cluster state folders and engine processes."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from ephemeral.devstack import Stack


def owned(stack: Stack, dag_id: str, run_id: str) -> list[str]:
    """Clusters of the run that still have a state folder."""
    from ephemeral.backends import OwnerSelector
    from ephemeral.backends.local import LocalBackend
    from ephemeral.specs.identity import PREFIX

    # Every instance: the test process is not the stack's deployment.
    everything = OwnerSelector.everything()
    return [h.name for h in LocalBackend(stack.ephemeral_home).list_owned(everything)
            if h.annotations.get(PREFIX + "dag-id") == dag_id
            and h.annotations.get(PREFIX + "run-id") == run_id]


def cluster_processes(home: Path) -> dict[str, list[int]]:
    """Live processes of every cluster of ``home``, by cluster name, found by the marker the
    local backend puts into the environment of every process it starts (drivers inherit it)."""
    prefix = str(home / "clusters") + os.sep
    found: dict[str, list[int]] = {}
    for p in psutil.process_iter(["pid", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            env = p.environ()
        except psutil.Error:
            continue
        cdir = env.get("EPHEMERAL_CLUSTER_DIR", "")
        if cdir.startswith(prefix):
            found.setdefault(Path(cdir).name, []).append(p.info["pid"])
    return found


def seconds_until_gone(stack: Stack, dag_id: str, run_id: str, names: set[str],
                       since: float, bound: float) -> float:
    """Seconds from ``since`` (time.monotonic) until the run has no cluster state and no
    process of ``names`` (plus any cluster of the run seen meanwhile) is alive."""
    names = set(names)
    while True:
        left = owned(stack, dag_id, run_id)
        names |= set(left)
        alive = {n: pids for n, pids in cluster_processes(stack.ephemeral_home).items()
                 if n in names}
        elapsed = time.monotonic() - since
        if not left and not alive:
            return round(elapsed, 1)
        if elapsed > bound:
            raise AssertionError(f"{dag_id}/{run_id}: after {bound}s still left: clusters "
                                 f"{left}, processes {alive}\n"
                                 + stack.logs() + "\n" + run_end_log(stack))
        time.sleep(0.5)


def wait_owned(stack: Stack, dag_id: str, run_id: str, timeout: float = 300.0
               ) -> list[str]:
    """The run's clusters, once there is at least one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = owned(stack, dag_id, run_id)
        if names:
            return names
        time.sleep(0.05)
    raise TimeoutError(f"{dag_id}/{run_id} made no cluster in {timeout}s\n" + stack.logs())


def run_end_log(stack: Stack) -> str:
    path = stack.ephemeral_home / "logs" / "run-end.log"
    return "--- run-end.log ---\n" + (path.read_text(errors="replace")[-4000:]
                                      if path.exists() else "(none)")


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def monotonic_at(moment: datetime) -> float:
    """``moment`` (an Airflow timestamp) on this process's monotonic clock."""
    return time.monotonic() - (datetime.now(UTC) - moment).total_seconds()
