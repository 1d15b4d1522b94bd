"""``python -m ephemeral.devstack up|down`` (``make airflow`` / ``make airflow-down``).

``up`` starts the local Airflow stack in the foreground, prints the UI's URL and the admin login,
and runs until Ctrl-C or SIGTERM (``down`` from another shell sends it), which stops every
component and deletes every cluster the stack made. Settings: ``AIRFLOW_HOME`` (default
``.home/stack`` of the checkout), ``EPHEMERAL_AIRFLOW_DB`` (``sqlite``, the default, or
``postgres``), ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` (used as it is), ``AIRFLOW__API__PORT``
(default 8080; a free port when it is taken).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from subprocess import SubprocessError
from types import FrameType

import psutil

from ephemeral.devstack.postgres import Postgres
from ephemeral.devstack.stack import DB_VAR, ROOT, Stack
from ephemeral.errors import EphemeralError

PID_FILE = "devstack.json"


def stack_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or ROOT / ".home" / "stack").resolve()


def _say(text: str) -> None:
    print(text, flush=True)


def _running(home: Path) -> dict[str, object] | None:
    path = home / PID_FILE
    if not path.exists():
        return None
    info: dict[str, object] = json.loads(path.read_text())
    pid = int(str(info["pid"]))
    return info if psutil.pid_exists(pid) and pid != os.getpid() else None


def up() -> int:
    home = stack_home()
    if info := _running(home):
        _say(f"A stack already runs from {home} (pid {info['pid']}) at {info['url']}: "
             "stop it with `make airflow-down`.")
        return 1
    stack = Stack(home=home, db=os.environ.get("EPHEMERAL_AIRFLOW_DB") or "sqlite",
                  port=int(os.environ.get("AIRFLOW__API__PORT") or 8080))
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    # Ctrl-C, a kill, or the terminal closed (SIGHUP): each stops the stack and deletes the
    # clusters of running runs, rather than leaving them to outlive the command.
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, on_signal)
    db = ("the given AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" if os.environ.get(DB_VAR)
          else stack.db)
    _say(f"Starting Airflow in {home} ({db} database; logs in {home / 'logs'}) ...")
    t0 = time.monotonic()
    home.mkdir(parents=True, exist_ok=True)
    (home / PID_FILE).write_text(json.dumps({"pid": os.getpid(), "url": stack.url}))
    code = 0
    try:
        stack.start()
        if stack.postgres is not None:
            (home / PID_FILE).write_text(json.dumps({
                "pid": os.getpid(), "url": stack.url, "postgres": str(stack.postgres.root)}))
        _say(f"\nAirflow is up after {time.monotonic() - t0:.0f}s.\n"
             f"  UI:     {stack.url}\n"
             f"  login:  {stack.username} / {stack.password}\n"
             f"  DAGs:   {stack.dags} (ray_job_adhoc: Trigger opens the form)\n"
             f"  clusters of this stack: instance {stack.instance}; list them with\n"
             f"          EPHEMERAL_HOME={stack.ephemeral_home} "
             f"EPHEMERAL_INSTANCE={stack.instance} ephemeral ls\n"
             "Ctrl-C (or `make airflow-down`) stops every component and deletes every "
             "cluster it made.", )
        while not stopping:
            stack.check_alive()
            time.sleep(1)
    except (RuntimeError, TimeoutError, OSError, EphemeralError, SubprocessError) as err:
        _say(f"\nThe stack failed: {err}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        _say("\nStopping Airflow and deleting its clusters ...")
        deleted = stack.stop()
        left = stack.processes()
        _say(f"Deleted clusters: {', '.join(deleted) or 'none were left'}.")
        _say("Stopped; no process of the stack is left." if not left else
             f"Processes still running: {[p.pid for p in left]}")
        (home / PID_FILE).unlink(missing_ok=True)
    return code


def down() -> int:
    home = stack_home()
    info = _running(home)
    if info is None:
        # No stack process: clean up what a killed one may have left.
        stale = home / PID_FILE
        saved = json.loads(stale.read_text()) if stale.exists() else {}
        stack = Stack(home=home, port=0)
        deleted = stack.stop()
        if saved.get("postgres"):
            pg = Postgres(Path(saved["postgres"]))
            pg._root = Path(saved["postgres"])
            pg.stop()
        stale.unlink(missing_ok=True)
        _say(f"No stack was running from {home}"
             + (f"; deleted clusters it left: {', '.join(deleted)}" if deleted else "") + ".")
        return 0
    pid = int(str(info["pid"]))
    _say(f"Stopping the stack (pid {pid}) ...")
    os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout=180)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        _say(f"pid {pid} still stopping after 180s")
        return 1
    _say("Stopped.")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["up"]:
        return up()
    if argv[:1] == ["down"]:
        return down()
    _say("usage: python -m ephemeral.devstack up|down")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
