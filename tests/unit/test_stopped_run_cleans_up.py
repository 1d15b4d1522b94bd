"""A test run stopped by SIGTERM or SIGHUP still runs its fixtures' finalizers (tests/conftest.py):
a CI job's timeout or a `timeout` around pytest must not orphan the clusters, live Airflows and
PostgreSQL servers the run started."""

from __future__ import annotations

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
    (OUT / "finalized").write_text("yes")

def test_runs_long(started_something):
    (OUT / "started").write_text("yes")
    time.sleep(60)
'''


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stopped_run_tears_its_fixtures_down(tmp_path: Path, stop: signal.Signals) -> None:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = dict(os.environ, PROBE_OUT=str(tmp_path), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest",
                             "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                             str(tmp_path / "test_probe.py")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=as_from_a_terminal)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the probe test did not start"
            time.sleep(0.1)
        proc.send_signal(stop)
        out = proc.communicate(timeout=30)[0].decode()
    finally:
        proc.kill()
    assert (tmp_path / "finalized").exists(), out
    assert proc.returncode != 0, out  # stopped, not passed
