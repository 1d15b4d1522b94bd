"""A real Airflow 3.3 for this checkout, as teams run it: the metadata database migrated, then
api-server, scheduler (LocalExecutor), dag-processor and triggerer as separate processes, with
the project's DAGs, the metadata-only XCom backend and the local backend.

The database is SQLite under the stack's home by default; ``db="postgres"`` starts a throwaway
PostgreSQL (``ephemeral.devstack.postgres``); an ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` in the
environment is used as it is. ``stop()`` stops every component and every process they left,
deletes every cluster of the stack's deployment instance, then stops the database.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ephemeral.devstack.api import AirflowApi
from ephemeral.devstack.postgres import Postgres
from ephemeral.settings import instance_of

ROOT = Path(__file__).resolve().parent.parent.parent
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
DB_VAR = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def runs_airflow(cmdline: list[str]) -> bool:
    """Airflow's processes (``python -m airflow``, the ``airflow`` script, a process retitled
    ``airflow …``) and ours (``python -m ephemeral.airflow…``), never ``make airflow``, a shell,
    or the ``up``/``down`` command that merely share the stack's AIRFLOW_HOME."""
    words = " ".join(cmdline).split()
    if not words:
        return False
    exe, rest = Path(words[0]).name, words[1:]
    if exe == "airflow":
        return True
    if not exe.startswith("python") or not rest:
        return False
    return (rest[0].endswith("bin/airflow")
            or (rest[0] == "-m" and len(rest) > 1
                and (rest[1] == "airflow" or rest[1].startswith("ephemeral.airflow"))))


def _secret_file(path: Path, make: str) -> str:
    """A secret kept 0600 in the stack's home, so a restart keeps logins and tokens."""
    from ephemeral.backends.local.secrets import write_private

    if path.exists():
        path.chmod(0o600)  # (one an older version left readable)
        return path.read_text().strip()
    write_private(path, make + "\n")  # 0600 from its first byte
    return make


@dataclass
class Stack(AirflowApi):
    home: Path
    """AIRFLOW_HOME of the stack: config, logs, SQLite database, secrets, pid file."""
    dags: Path = ROOT / "dags"
    db: str = "sqlite"
    """``sqlite`` or ``postgres``; ignored when ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` is set."""
    ephemeral_home: Path | None = None
    """Where the local backend keeps its clusters (default ``$EPHEMERAL_HOME``, else beside
    the stack's home)."""
    port: int = 8080
    """The api-server's port; 0, or a port already taken, picks a free one."""
    instance: str = ""
    """Deployment instance owning the clusters: ``$EPHEMERAL_INSTANCE``, else derived from the
    stack's home (as every component derives it)."""
    base_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    """The environment components inherit; the user's ``AIRFLOW__*`` settings in it win over
    the stack's defaults, except what the stack must own (ports, executor, secrets)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Every component's session, the killed ones' too: their children stay in it.
    sessions: set[int] = field(default_factory=set)
    postgres: Postgres | None = None

    def __post_init__(self) -> None:
        self.home = self.home.resolve()
        self.dags = self.dags.resolve()
        if self.ephemeral_home is None:
            given = self.base_env.get("EPHEMERAL_HOME")
            self.ephemeral_home = Path(given) if given else self.home.parent
        self.ephemeral_home = self.ephemeral_home.resolve()
        if not self.instance:
            self.instance = instance_of({"AIRFLOW_HOME": str(self.home),
                                         **{k: v for k, v in self.base_env.items()
                                            if k == "EPHEMERAL_INSTANCE"}})
        if self.db not in ("sqlite", "postgres"):
            raise ValueError(f"db={self.db!r}: EPHEMERAL_AIRFLOW_DB must be sqlite or postgres")
        if self.port == 0 or not port_free(self.port):
            from ephemeral.devstack.postgres import free_port

            self.port = free_port()

    # -- configuration -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def password(self) -> str:
        return str(json.loads((self.home / "passwords.json").read_text())[self.username])

    @property
    def database_url(self) -> str:
        if given := self.base_env.get(DB_VAR):
            return given
        if self.postgres is not None:
            return self.postgres.url
        return f"sqlite:///{self.home / 'airflow.db'}"

    def env(self) -> dict[str, str]:
        bindir = str(Path(sys.executable).parent)
        env = dict(self.base_env)
        defaults = {
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Cluster waits in the triggerer, not in a worker slot (the providers' default is off).
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
            "AIRFLOW__CORE__PARALLELISM": "8",
            # A local stack runs what its user triggers: no run starts by itself because a
            # DAG (train_distributed is @daily) was unpaused from the trigger form.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # A worker notices its task's exit only at its next wake-up, this often: at the
            # default 5 s, one task in three reached the scheduler 5 s late here (a hand-off
            # between tasks; a deferral's hold, ephemeral.airflow.settle).
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "EPHEMERAL_BACKEND": "local",
        }
        for key, value in defaults.items():
            env.setdefault(key, value)
        env.update({
            "PATH": bindir + os.pathsep + env.get("PATH", ""),
            "AIRFLOW_HOME": str(self.home),
            DB_VAR: self.database_url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__XCOM_BACKEND": "ephemeral.airflow.xcom.MetadataOnlyXCom",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            # One secret for every component: they verify each other's tokens.
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret_file(self.home / "jwt_secret",
                                                          secrets.token_urlsafe(32)),
            "EPHEMERAL_HOME": str(self.ephemeral_home),
            "EPHEMERAL_INSTANCE": self.instance,
        })
        env.update(self.extra_env)
        return env

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 600.0) -> None:
        """Database, migration, the four components; returns when the api-server is healthy.
        On failure everything started is stopped again."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        _secret_file(self.home / "passwords.json",
                     json.dumps({self.username: secrets.token_urlsafe(12)}))
        try:
            if self.db == "postgres" and not self.base_env.get(DB_VAR):
                self.postgres = Postgres(self.home / "postgres")
                self.postgres.start()
            env = self.env()
            migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                                     capture_output=True, text=True, timeout=600)
            if migrate.returncode != 0:
                raise RuntimeError("airflow db migrate failed:\n" + migrate.stderr[-3000:])
            for name in COMPONENTS:
                self.launch(name)
            deadline = time.monotonic() + timeout
            while not self.healthy():
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"api-server not healthy after {timeout}s\n" + self.logs())
                time.sleep(1)
            self.create_pools()
        except BaseException:
            self.stop()
            raise

    def create_pools(self) -> None:
        """The pool train_distributed's trials run in (``$EPHEMERAL_GPU_POOL``), as a deployment
        creates it once: without it the scheduler never starts a trial."""
        from ephemeral.settings import setting
        from ephemeral.trials import DEFAULT_POOL

        # The setting's rule (a variable or AIRFLOW__EPHEMERAL__GPU_POOL), as the DAG reads it.
        name = setting("gpu_pool", self.env()) or DEFAULT_POOL
        if self.request("GET", f"/api/v2/pools/{name}")[0] == 200:
            return
        status, body = self.request("POST", "/api/v2/pools", {
            "name": name, "slots": 2, "description": "GPU trials at once"})
        if status not in (200, 201):
            raise RuntimeError(f"creating pool {name}: HTTP {status} {body}")

    def log_path(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def launch(self, name: str) -> None:
        """Start one component in its own session (a terminal's Ctrl-C reaches only the stack,
        which then stops the components in order), appending to its log."""
        with open(self.log_path(name), "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", name], env=self.env(), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.sessions.add(self.procs[name].pid)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill one component's main process as a crash would; ``launch`` starts it again.
        Its children live on (a scheduler's LocalExecutor workers, serve-logs): ``stop`` finds
        them by their session."""
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}\n"
                                   + self.logs(name))

    def logs(self, *names: str, tail: int = 30) -> str:
        out = []
        for name in names or COMPONENTS:
            path = self.log_path(name)
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {name} ---\n" + "\n".join(lines))
        return "\n".join(out)

    def task_log(self, dag_id: str, run_id: str, task_id: str, attempt: int,
                 trigger: bool = False) -> str:
        """A try's log, or with ``trigger`` the logs its triggers wrote in the triggerer."""
        logs = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        pattern = f"attempt={attempt}.log.trigger.*" if trigger else f"attempt={attempt}.log"
        return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob(pattern)))

    def processes(self) -> list[psutil.Process]:
        """Every process of this stack: the components, their children, any process still in
        a component's session (orphans of a killed component: Airflow's process titles
        overwrite their environment, so it cannot tell them) and any process that runs with
        this stack's AIRFLOW_HOME (task supervisors, the run-end deleting process)."""
        found: dict[int, psutil.Process] = {}
        for proc in self.procs.values():
            try:
                p = psutil.Process(proc.pid)
                found[p.pid] = p
                found.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        me = os.getpid()
        for p in psutil.process_iter():
            if p.pid == me or p.pid in found:
                continue
            try:
                if runs_airflow(p.cmdline()) and (
                        os.getsid(p.pid) in self.sessions
                        or p.environ().get("AIRFLOW_HOME") == str(self.home)):
                    found[p.pid] = p
            except (psutil.Error, OSError):
                continue
        return list(found.values())

    def stop(self) -> list[str]:
        """Stop everything and delete the instance's clusters; the names of those deleted."""
        procs = self.processes()
        orphans = self._orphans(procs)
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        for p in procs:
            try:
                # An orphan of a killed component has nothing left to shut it down in order,
                # and an idle LocalExecutor worker ignores SIGTERM: waiting for it held every
                # stop after a crash for the whole 30 s.
                p.kill() if p in orphans else p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=30)
        for p in alive + [p for p in self.processes() if p.is_running()]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        deleted = self.delete_clusters()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
        return deleted

    def _orphans(self, procs: list[psutil.Process]) -> list[psutil.Process]:
        """Processes in a component's session that no live component has as a descendant."""
        kept: set[int] = set()
        for proc in self.procs.values():
            try:
                p = psutil.Process(proc.pid)
                kept |= {p.pid} | {c.pid for c in p.children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
        out = []
        for p in procs:
            try:
                if p.pid not in kept and os.getsid(p.pid) in self.sessions:
                    out.append(p)
            except OSError:
                continue
        return out

    def delete_clusters(self) -> list[str]:
        """Delete every cluster of this stack's instance on its local backend."""
        from ephemeral.backends.base import OwnerSelector
        from ephemeral.backends.local import LocalBackend
        from ephemeral.specs.identity import INSTANCE_LABEL

        backend = LocalBackend(self.ephemeral_home)
        selector = OwnerSelector(labels={INSTANCE_LABEL: self.instance})
        names = []
        for handle in backend.list_owned(selector):
            backend.delete(handle, wait=True)
            names.append(handle.name)
        return names
