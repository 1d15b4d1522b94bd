"""A closed stdout (`ephemeral up ... | head -1`) never changes a command's result: what follows
is discarded. Rich's console ended `up` with exit 1 (which says its cluster was deleted) while
the cluster was kept, and a job's log stream died in its thread with a BrokenPipeError
traceback while the job ran on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The real entry point (main) on the in-memory backend, with a Ray cluster "c" and a stub Jobs
# client whose job streams its log lines from a thread, as the real one does. No engine.
CHILD = """
import sys, threading
from types import SimpleNamespace
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.cli import main as cli_main
from ephemeral.jobs import ray_jobs
from ephemeral.jobs.results import JobResult, JobStatus
from ephemeral.specs import ClusterIdentity
from tests.conftest import small

backend = InMemoryBackend(ready_after_probes=1)
spec = small("ray/adhoc-cpu", replicas=1)
backend.create(spec, identity=ClusterIdentity.manual(spec.spec.name, "c"))
cli_main._backend = lambda _name: backend

def follow(jid, *, sink, timeout, owned=True):
    def stream():
        for i in range(2000):
            sink(f"log line {i}")
    streamer = threading.Thread(target=stream)
    streamer.start()
    streamer.join()
    print("streamed all", file=sys.stderr)
    return JobResult(job_id=jid, cluster="c", engine="ray", status=JobStatus.SUCCEEDED,
                     seconds=1.0)

jobs = SimpleNamespace(attachable=lambda *_a, **_k: False,
                       submit_request=lambda *_a, **_k: "raysubmit_1",
                       follow=follow, stop=lambda *_a, **_k: None)
ray_jobs.ray_jobs_for = lambda *_a: jobs
sys.argv = ["ephemeral", *sys.argv[1:]]
cli_main.main()
"""


@pytest.mark.parametrize("args", [
    ["up", "ray/adhoc-cpu", "-p", "ci-cpu"],
    ["up", "ray/adhoc-cpu", "-p", "ci-cpu", "--json"],
    ["ls"],
    ["submit", "c", "--", "python", "job.py"],
])
def test_a_closed_stdout_keeps_the_commands_result(tmp_path: Path, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EPHEMERAL_HOME": str(tmp_path / "home")}
    env.pop("EPHEMERAL_BACKEND", None)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first line: `| head -0`
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "BrokenPipe" not in stderr
    if args[0] == "submit":
        assert "streamed all" in stderr  # the log sink's thread went on, output discarded
