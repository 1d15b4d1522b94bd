"""The CLI stopped by a signal cleans up as on Ctrl-C: SIGTERM (a CI job's timeout, `timeout`,
a kill) and SIGHUP (a closed terminal) become a KeyboardInterrupt, so `up` deletes the cluster
it was waiting for (before, the process died with it left running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The real entry point (main) on the in-memory backend, whose cluster never becomes ready; it
# notes when it waits and what it deleted. No engine is started.
CHILD = """
import sys
from pathlib import Path
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.cli import main as cli_main

marks = Path(sys.argv[1])

class Waiting(InMemoryBackend):
    def probe(self, handle):
        (marks / "waiting").write_text(handle.name)
        return super().probe(handle)

    def delete(self, target, *, wait=True):
        super().delete(target, wait=wait)
        (marks / "deleted").write_text(self.target_name(target))

backend = Waiting(ready_after_probes=10**9)
cli_main._backend = lambda _name: backend
sys.argv = ["ephemeral", *sys.argv[2:]]
cli_main.main()
"""


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_up_stopped_by_a_signal_deletes_its_cluster(tmp_path: Path, stop: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EPHEMERAL_HOME": str(tmp_path / "home")}
    env.pop("EPHEMERAL_BACKEND", None)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), "up", "ray/adhoc-cpu",
                             "-p", "ci-cpu", "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "waiting").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "up never started waiting"
            time.sleep(0.05)
        proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert (tmp_path / "deleted").read_text() == (tmp_path / "waiting").read_text(), stderr
