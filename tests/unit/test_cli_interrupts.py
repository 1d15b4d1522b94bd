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

from tests.conftest import as_from_a_terminal

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
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=as_from_a_terminal)
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


# -- submit interrupted while following: the job is stopped, and the command says so ----------

def _ray_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.cli import main as cli_main
    from ephemeral.specs import ClusterIdentity
    from tests.conftest import small

    backend = InMemoryBackend(ready_after_probes=1)
    spec = small("ray/adhoc-cpu", replicas=1)
    backend.create(spec, identity=ClusterIdentity.manual(spec.spec.name, "c"))
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)


@pytest.mark.parametrize("stop_fails", [False, True])
def test_submit_interrupted_stops_its_job_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                      stop_fails: bool) -> None:
    """Ctrl-C (or SIGTERM) while following left the Ray job running, silently, with the limit
    of --timeout (enforced by the command) gone."""
    from types import SimpleNamespace
    from typing import Any

    from typer.testing import CliRunner

    from ephemeral.cli import main as cli_main
    from ephemeral.errors import JobError
    from ephemeral.jobs import ray_jobs

    _ray_cluster(monkeypatch)
    stopped: list[tuple[str, float]] = []

    def follow(_jid: str, **_k: Any) -> Any:
        raise KeyboardInterrupt

    def stop(jid: str, *, wait: float, settle: float) -> str:
        stopped.append((jid, wait))
        if stop_fails:
            raise JobError(f"cannot stop job {jid}: the Ray Jobs API did not answer in 15s")
        return "STOPPED"

    jobs = SimpleNamespace(attachable=lambda *_a, **_k: False,
                           submit_request=lambda *_a, **_k: "raysubmit_1", follow=follow,
                           stop=stop)
    monkeypatch.setattr(ray_jobs, "ray_jobs_for", lambda *_a: jobs)
    monkeypatch.setattr(ray_jobs, "new_submission_id", lambda: "raysubmit_1")
    result = CliRunner().invoke(cli_main.app, ["submit", "c", "--timeout", "600", "--",
                                               "python", "x.py"])
    assert result.exit_code != 0
    assert stopped == [("raysubmit_1", cli_main.INTERRUPT_STOP_WAIT)]
    said = " ".join(result.stderr.split())
    if stop_fails:
        assert "interrupted: Ray job raysubmit_1 on c was NOT stopped" in said
        assert "did not answer" in said
    else:
        assert "interrupted: Ray job raysubmit_1 on c was stopped" in said


def test_submit_interrupted_while_following_a_job_it_attached_to_leaves_that_job(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--job-id of an existing job (a DAG task's, a colleague's) follows it: stopping it on
    Ctrl-C would end someone else's work."""
    from types import SimpleNamespace
    from typing import Any

    from typer.testing import CliRunner

    from ephemeral.cli import main as cli_main
    from ephemeral.jobs import ray_jobs

    _ray_cluster(monkeypatch)
    stopped: list[str] = []

    def follow(_jid: str, **_k: Any) -> Any:
        raise KeyboardInterrupt

    jobs = SimpleNamespace(attachable=lambda *_a, **_k: True,
                           submit_request=lambda *_a, **_k: "never", follow=follow,
                           stop=lambda jid, **_k: stopped.append(jid))
    monkeypatch.setattr(ray_jobs, "ray_jobs_for", lambda *_a: jobs)
    result = CliRunner().invoke(cli_main.app, ["submit", "c", "--job-id", "theirs", "--",
                                               "python", "x.py"])
    assert result.exit_code != 0
    assert stopped == []
    assert "Ray job theirs was attached to, not submitted here: left running" in \
        " ".join(result.stderr.split())


def test_a_signal_the_caller_ignores_stays_ignored() -> None:
    """nohup ignores SIGHUP so that the command outlives the terminal: made an interrupt, the
    closed terminal would stop the job and delete the cluster nohup was used to keep."""
    import subprocess
    import sys

    code = ("import os, signal\n"
            "from ephemeral.lifecycle import interrupt_on_stop_signals\n"
            "interrupt_on_stop_signals()\n"
            "os.kill(os.getpid(), signal.SIGHUP)\n"
            "print('still here', signal.getsignal(signal.SIGHUP) is signal.SIG_IGN,\n"
            "      signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)\n")
    done = subprocess.run(["nohup", sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.stdout.strip() == "still here True True", done.stdout + done.stderr


# -- an interrupted command says so, with what its cleanup did --------------------------------

@pytest.mark.parametrize("delete_fails", [False, True])
@pytest.mark.parametrize("as_json", [False, True])
def test_an_interrupted_up_says_what_became_of_its_cluster(monkeypatch: pytest.MonkeyPatch,
                                                           delete_fails: bool,
                                                           as_json: bool) -> None:
    """Typer turned the interrupt into a silent exit 130: no JSON, and the note saying the
    cluster's deletion failed (a leak for the operator to act on) was dropped."""
    import json

    from typer.testing import CliRunner

    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.cli import main as cli_main
    from ephemeral.errors import BackendUnavailable

    class Interrupted(InMemoryBackend):
        def probe(self, handle: object) -> object:
            raise KeyboardInterrupt

        def delete(self, target: object, *, wait: bool = True) -> object:
            if delete_fails:
                raise BackendUnavailable("API server down")
            return super().delete(target, wait=wait)  # type: ignore[arg-type]

    backend = Interrupted()
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)
    result = CliRunner().invoke(cli_main.app, ["up", "ray/adhoc-cpu", "-p", "ci-cpu",
                                               *(["--json"] if as_json else [])])
    assert result.exit_code == 130, result.output
    said = json.loads(result.stdout)["message"] if as_json else result.stderr
    assert said.startswith("interrupted") if as_json else "interrupted" in said
    assert ("after the failure also failed: BackendUnavailable: API server down" if delete_fails
            else "was deleted after the failure: nothing of it is left") in said
