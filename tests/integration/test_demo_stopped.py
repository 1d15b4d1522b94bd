"""`make demo` stopped mid-run (Ctrl-C, or a CI runner's timeout sending SIGTERM): dag.test
runs no teardown and no reaper runs beside it, so the demo itself deletes what its run made
before it exits, and no Ray or Spark process of it is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import engine_pids

ROOT = Path(__file__).resolve().parents[2]


def test_a_stopped_demo_deletes_the_clusters_it_made(
        local_backend: object, ephemeral_home: Path, tmp_path: Path) -> None:
    """Ctrl-C, as a user stops it (SIGTERM, a runner's timeout, takes the same path: the
    demo turns it into SystemExit)."""
    from ephemeral.backends.base import OwnerSelector

    env = dict(os.environ) | {"EPHEMERAL_HOME": str(ephemeral_home),
                              "AIRFLOW_HOME": str(tmp_path / "airflow"),
                              "EPHEMERAL_INSTANCE": "demo-stopped"}
    before = engine_pids()
    demo = subprocess.Popen([sys.executable, str(ROOT / "scripts/demo.py")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    mine = OwnerSelector(all_instances=True)
    try:
        deadline = time.monotonic() + 240
        while not local_backend.list_owned(mine):  # type: ignore[attr-defined]
            assert demo.poll() is None, demo.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the demo made no cluster in 240 s"
            time.sleep(0.5)
        time.sleep(3)  # its setup is starting nodes, or its job runs
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=180)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode != 0
    assert "stopped: deleted eph-" in out, out[-3000:]
    assert local_backend.list_owned(mine) == []  # type: ignore[attr-defined]
    time.sleep(1)
    assert not engine_pids() - before, "a Ray or Spark process of the demo is left"
