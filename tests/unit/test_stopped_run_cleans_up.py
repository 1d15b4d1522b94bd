"""A test run stopped by SIGTERM or SIGHUP still runs its fixtures' finalizers (tests/conftest.py):
a CI job's timeout or a `timeout` around pytest must not orphan the clusters, live Airflows and
PostgreSQL servers the run started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import as_from_a_terminal

ROOT = Path(__file__).resolve().parents[2]
PROBE = '''
import os, time
from pathlib import Path
import pytest

OUT = Path(os.environ["PROBE_OUT"])

@pytest.fixture(scope="session")
def started_something():
    yield
    time.sleep(float(os.environ["PROBE_TEARDOWN"]))
    (OUT / "finalized").write_text("yes")

def test_runs_long(started_something):
    (OUT / "started").write_text("yes")
    time.sleep(60)
'''


@pytest.mark.parametrize(("stop", "xdist", "group"), [
    (signal.SIGTERM, False, False),
    (signal.SIGHUP, False, False),
    # make test's run: pytest-xdist workers, the stop sent to the controller alone (a CI
    # runner's timeout, `timeout`), or to the whole process group (Ctrl-C, a closed terminal).
    # The teardown outlasts the 5 s xdist's controller would give a worker once interrupted.
    (signal.SIGTERM, True, False),
    (signal.SIGINT, True, True),
    (signal.SIGHUP, True, True),
], ids=["SIGTERM", "SIGHUP", "xdist-SIGTERM", "xdist-ctrl-c-to-group", "xdist-SIGHUP-to-group"])
def test_a_stopped_run_tears_its_fixtures_down(tmp_path: Path, stop: signal.Signals,
                                               xdist: bool, group: bool) -> None:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PROBE_OUT=str(tmp_path), PYTHONPATH=str(ROOT),
               PROBE_TEARDOWN="7" if xdist else "0")
    workers = ["-n", "2", "--dist", "loadgroup"] if xdist else []
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest",
                             "-p", "no:cacheprovider", *workers, "--rootdir", str(tmp_path),
                             str(tmp_path / "test_probe.py")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=as_from_a_terminal, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the probe test did not start"
            time.sleep(0.1)
        if group:
            os.killpg(proc.pid, stop)
        else:
            proc.send_signal(stop)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert (tmp_path / "finalized").exists(), out
    assert proc.returncode != 0, out  # stopped, not passed
