"""`airflow dags test` and `airflow tasks test`, as a DAG's author runs them: their tasks and
deferred waits run in one process, with no scheduler, triggerer or run-end listener. Stopped
with Ctrl-C during a deferred wait, or run for a setup alone, they left a running cluster that
only the reaper's idle or TTL rule would end (ephemeral.airflow.in_process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ephemeral.backends.local import LocalBackend
from tests.airflow.live.probes import cluster_processes
from tests.conftest import as_from_a_terminal

pytestmark = pytest.mark.local
AIRFLOW = str(Path(sys.executable).parent / "airflow")


def airflow(*args: str) -> subprocess.Popen[str]:
    """The airflow CLI in a session of its own, so a signal to its group is a terminal's."""
    return subprocess.Popen([AIRFLOW, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ), start_new_session=True,
                            preexec_fn=as_from_a_terminal)


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"airflow did not end in {timeout} s:\n{out[-4000:]}") from None
    return out


def test_a_setup_tested_alone_leaves_no_cluster(airflow_db: str, ephemeral_home: Path) -> None:
    """`airflow tasks test` of a setup: its temporary run is one no job or teardown can reach,
    so the cluster goes when the command ends."""
    proc = airflow("tasks", "test", "feature_etl", "create_spark")
    try:
        out = finish(proc)
        assert proc.returncode == 0, out[-4000:]
        assert "ready" in out, out[-4000:]  # the setup made it and saw it ready
        assert "is deleted when this process ends" in out, out[-4000:]
        assert "killed" not in out, out[-4000:]  # the wait's end is no kill
        assert LocalBackend(ephemeral_home).list_owned() == [], out[-4000:]
        assert cluster_processes(ephemeral_home) == {}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hang-up"])
def test_a_stop_while_a_job_waits_in_line_leaves_no_cluster(
        airflow_db: str, ephemeral_home: Path, stop: signal.Signals) -> None:
    """Ctrl-C (or a closed terminal) during `airflow dags test` while the Ray job's deferred
    wait runs in line: asyncio.run ends the wait with a KeyboardInterrupt that no task's
    clean-up sees (Python would die on SIGHUP without one), and the run stays "running" in the
    database. The job is stopped and the cluster deleted."""
    from ephemeral.jobs.ray_jobs import ray_jobs_for

    backend = LocalBackend(ephemeral_home)
    proc = airflow("dags", "test", "interrupted")
    try:
        deadline = time.monotonic() + 300
        running = False
        while not running:
            assert proc.poll() is None, finish(proc)[-4000:]
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(1)
            for handle in backend.list_owned():
                try:
                    listed = ray_jobs_for(handle, backend).client.list_jobs()
                except Exception:  # noqa: BLE001 - not answering yet
                    continue
                running = any(str(j.status) in ("RUNNING", "JobStatus.RUNNING")
                              for j in listed)
        time.sleep(2)  # the job task is in its deferred wait (it checks once before deferring)
        os.killpg(proc.pid, stop)  # as the terminal sends it to the foreground group
        out = finish(proc, timeout=120)
        assert "running trigger in line" in out, out[-4000:]
        assert "stopping Ray job" in out, out[-4000:]
        assert "deleting cluster" in out, out[-4000:]
        assert backend.list_owned() == [], out[-4000:]
        assert cluster_processes(ephemeral_home) == {}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
