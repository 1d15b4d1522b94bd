"""A real Airflow 3.3 deployment for tests: api-server, scheduler (LocalExecutor), dag-processor
and triggerer as separate processes on a throwaway SQLite home, driven over REST API v2."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

from ephemeral.devstack import Postgres

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
FINISHED = {"success", "failed"}


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AirflowStack:
    home: Path
    dags: Path
    ephemeral_home: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    # One secret for every component (and every restart of one): they verify each other's tokens.
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Every component, the deleting processes they start and the test's reaper act as one
    # deployment instance (cluster ownership includes it).
    instance: str = field(default_factory=lambda: "live-" + secrets.token_hex(4))
    extra_env: dict[str, str] = field(default_factory=dict)
    # The metadata database: a throwaway PostgreSQL as production has (ephemeral.devstack's,
    # started with the stack, deleted by stop()), or "sqlite" for the smoke case.
    db: str = "postgres"
    postgres: Postgres | None = None
    # Process groups of components killed and started again: orphans (a killed scheduler's
    # LocalExecutor workers) live on in them until stop().
    _old_groups: list[int] = field(default_factory=list)
    _token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        bindir = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRFLOW", "PYTEST_", "EPHEMERAL_"))}
        env.update({
            "PATH": bindir + os.pathsep + env.get("PATH", ""),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__XCOM_BACKEND": "ephemeral.airflow.xcom.MetadataOnlyXCom",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "EPHEMERAL_HOME": str(self.ephemeral_home),
            "EPHEMERAL_INSTANCE": self.instance,
        })
        if self.postgres is not None:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.postgres.url
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 180.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({"admin": self.password}))
        if self.db == "postgres" and self.postgres is None:
            self.postgres = Postgres(self.home.parent / "postgres")
            self.postgres.start()
        env = self.env()
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
        for name in COMPONENTS:
            self.launch(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                status, body = self.request("GET", "/api/v2/monitor/health", auth=False)
                if status == 200 and isinstance(body, dict):
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow api-server not healthy after {timeout}s\n" + self.logs())

    def launch(self, name: str) -> None:
        """Start one component (again), appending to its log."""
        with open(self.home / f"{name}.log", "ab") as log:  # the child keeps its own fd
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", *name.split()], env=self.env(), stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill one component's main process as a crash would; its children live on."""
        proc = self.procs.pop(name)
        self._old_groups.append(proc.pid)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}\n"
                                   + self.logs(name))

    def logs(self, *names: str, tail: int = 40) -> str:
        out = []
        for name in names or tuple(self.procs):
            path = self.home / f"{name}.log"
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {name} ---\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        procs = []
        for proc in self.procs.values():
            try:
                procs.append(psutil.Process(proc.pid))
                procs.extend(psutil.Process(proc.pid).children(recursive=True))
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        for group in self._old_groups:
            procs.extend(p for p in psutil.process_iter() if _pgid(p) == group)
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        for proc in self.procs.values():
            proc.wait(timeout=10)
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    # -- REST API v2 -------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                auth: bool = True) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def token(self) -> str:
        if self._token is None:
            status, body = self.request("POST", "/auth/token",
                                        {"username": "admin", "password": self.password},
                                        auth=False)
            assert status in (200, 201), f"token refused: {status} {body}"
            self._token = str(body["access_token"])
        return self._token

    def wait_parsed(self, dag_id: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self.request("GET", f"/api/v2/dags/{dag_id}")[0] == 200:
                return
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout}s\n" + self.logs())

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        self.wait_parsed(dag_id)
        status, body = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                                    {"logical_date": None, "conf": conf or {}})
        assert status == 200, f"trigger {dag_id}: HTTP {status} {body}"
        return str(body["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        status, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}")
        assert status == 200, f"{status} {body}"
        return str(body["state"])

    def wait_finished(self, dag_id: str, run_id: str, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.run_state(dag_id, run_id)
            if state in FINISHED:
                return state
            time.sleep(2)
        raise TimeoutError(f"{dag_id}/{run_id} still {state} after {timeout}s\n"
                           + json.dumps(self.task_instances(dag_id, run_id), indent=1)
                           + "\n" + self.logs())

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        status, body = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances")
        assert status == 200, f"{status} {body}"
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        status, body = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}/tries")
        assert status == 200, f"{status} {body}"
        return list(body["task_instances"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        status, body = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}"
                   f"/xcomEntries/{key}?deserialize=true")
        assert status == 200, f"{status} {body}"
        return body["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, attempt: int,
                 trigger: bool = False) -> str:
        """The try's log, or with ``trigger`` the logs its triggers wrote in the triggerer."""
        logs = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        pattern = f"attempt={attempt}.log.trigger.*" if trigger else f"attempt={attempt}.log"
        return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob(pattern)))

    def links(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        status, body = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}/links")
        assert status == 200, f"{status} {body}"
        return dict(body["extra_links"])

    def _patch(self, path: str, body: dict[str, Any], what: str) -> None:
        """A PATCH as a user clicking again does it: SQLite under a busy host sometimes answers
        "database is locked" (HTTP 500) when four components write at once."""
        for _ in range(3):
            status, answer = self.request("PATCH", path, body)
            if status != 500:
                break
            time.sleep(0.5)
        assert status == 200, f"{what}: HTTP {status} {answer}"

    def mark_run(self, dag_id: str, run_id: str, state: str) -> None:
        """What the UI's "mark run as failed/success" does."""
        self._patch(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}", {"state": state},
                    f"mark {dag_id}/{run_id} {state}")

    def mark_task(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        self._patch(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}",
                    {"new_state": state}, f"mark {dag_id}/{run_id}/{task_id} {state}")

    def task_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        status, body = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}")
        assert status == 200, f"{status} {body}"
        return None if body["state"] is None else str(body["state"])

    def wait_task(self, dag_id: str, run_id: str, task_id: str, states: set[str],
                  timeout: float = 300.0, every: float = 0.2) -> str:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.task_state(dag_id, run_id, task_id)
            if state in states:
                return state
            if state in ("failed", "upstream_failed", "skipped", "removed"):
                raise RuntimeError(f"{dag_id}/{run_id}/{task_id} ended {state} before reaching "
                                   f"{states}:\n" + json.dumps(self.task_instances(
                                       dag_id, run_id), indent=1)[:4000])
            time.sleep(every)
        raise TimeoutError(f"{dag_id}/{run_id}/{task_id} still {state}, not in {states} after "
                           f"{timeout}s\n" + self.logs())
