"""`make airflow` as a newcomer runs it, on its default SQLite database (the live-stack smoke
case on SQLite): it prints the UI's URL and a login that works; Ctrl-C during a run stops every
component and deletes the cluster the run made, and no process of the stack is left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ephemeral.devstack import Stack
from tests.airflow.live.stack import clean_env

pytestmark = [pytest.mark.slow, pytest.mark.local]


def test_ctrl_c_stops_the_stack_and_deletes_the_clusters_of_a_running_run(
        tmp_path: Path) -> None:
    from ephemeral.backends.base import OwnerSelector
    from ephemeral.backends.local import LocalBackend
    from ephemeral.specs.identity import INSTANCE_LABEL

    home, eph = tmp_path / "airflow", tmp_path / "ephemeral"
    env = clean_env() | {"AIRFLOW_HOME": str(home), "EPHEMERAL_HOME": str(eph),
                         "AIRFLOW__API__PORT": "0"}
    up = subprocess.Popen([sys.executable, "-m", "ephemeral.devstack", "up"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)  # Ctrl-C reaches the terminal's group only
    stack = Stack(home=home, ephemeral_home=eph, port=0, base_env=env)
    out: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            out.append(line)
            if "login:" in line:
                break
        text = "".join(out)
        url = re.search(r"UI:\s+(http://127\.0\.0\.1:(\d+))", text)
        login = re.search(r"login:\s+admin / (\S+)", text)
        assert url, text
        assert login, text
        stack.port = int(url.group(2))
        assert login.group(1) == stack.password  # the printed login is the one that works
        stack.token()

        run_id = stack.trigger("ray_job_adhoc", {"profile": "ci-cpu", "workers": 1,
                                                 "entrypoint": "python hello_ray.py"})
        backend = LocalBackend(eph)
        mine = OwnerSelector(labels={INSTANCE_LABEL: stack.instance})
        deadline = time.monotonic() + 300
        while not (seen := backend.list_owned(mine)):
            assert time.monotonic() < deadline, stack.task_instances("ray_job_adhoc", run_id)
            time.sleep(1)

        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        rest, _ = up.communicate(timeout=300)
        assert up.returncode == 0, rest
        # A cluster still being made when Ctrl-C comes is deleted by its own setup, which the
        # stopping scheduler kills (its on_kill), before the stack's sweep; one that is up is
        # deleted by the sweep. Either way the stack says which, and none is left.
        (name,) = [h.name for h in seen]
        said = re.search(r"Deleted clusters: (.*)\.", rest)
        assert said, rest
        assert said.group(1) in (name, "none were left"), rest
        assert "no process of the stack is left" in rest, rest
        assert backend.list_owned(mine) == []
        assert stack.processes() == []
        assert not (home / "devstack.json").exists()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(timeout=300)


def test_the_stack_owns_airflow_processes_not_the_commands_that_name_it() -> None:
    """``stop`` terminates the processes that carry the stack's AIRFLOW_HOME and run Airflow:
    a ``make airflow`` (or ``make airflow-down``) started with AIRFLOW_HOME set carries it too
    and must live on to see the stack stop."""
    from ephemeral.devstack.stack import runs_airflow

    assert runs_airflow([sys.executable, "-m", "airflow", "scheduler"])
    assert runs_airflow(["airflow api_server -- host:127.0.0.1 port:8080"])
    assert runs_airflow([sys.executable, "-m", "ephemeral.airflow.run_end", "--dag-id", "d"])
    assert not runs_airflow(["make", "airflow-down"])
    assert not runs_airflow(["/bin/bash", "-c", "make airflow"])
    assert not runs_airflow([sys.executable, "-m", "ephemeral.devstack", "down"])
