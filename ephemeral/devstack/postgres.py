"""A throwaway PostgreSQL for a local Airflow: Debian's ``initdb`` + ``pg_ctl`` on a folder of
its own and a loopback port, deleted when it stops.

PostgreSQL refuses to run as root, so as root the server runs as ``nobody`` with a folder that
``nobody`` owns. Nothing here is tuned for durability: fsync is off, the data is thrown away.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ephemeral.backends.local.secrets import write_private
from ephemeral.errors import EphemeralError

# Debian keeps the server binaries out of PATH (only the client wrappers are on it).
SEARCH = ("/usr/lib/postgresql/*/bin",)
RUN_AS = "nobody"


class PostgresError(EphemeralError):
    pass


def find_bin(name: str) -> Path:
    """``initdb``/``pg_ctl`` from PATH, else from Debian's versioned folder (newest first)."""
    if found := shutil.which(name):
        return Path(found)
    for pattern in SEARCH:
        root = Path("/")
        for candidate in sorted(root.glob(pattern.lstrip("/")), reverse=True):
            if (candidate / name).is_file():
                return candidate / name
    raise PostgresError(f"{name} not found on PATH nor in /usr/lib/postgresql/*/bin: install "
                        "Debian's postgresql package (apt-get install postgresql), or set "
                        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN to a database you run")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may traverse every folder down to ``path``."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


@dataclass
class Postgres:
    """One server: ``start()`` makes a fresh cluster and database, ``stop()`` deletes them."""

    folder: Path
    port: int = field(default_factory=free_port)
    user: str = "airflow"
    database: str = "airflow"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    _root: Path | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Airflow uses (psycopg2; Airflow derives its async URL from it)."""
        return (f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{self.database}")

    @property
    def root(self) -> Path:
        """Where data and log live: ``folder``, unless ``nobody`` cannot reach it (a 0700
        parent such as pytest's temporary folders), then a fresh folder under /tmp."""
        if self._root is None:
            folder = self.folder.resolve()
            if os.geteuid() == 0 and not _reachable_by_others(folder.parent):
                folder = Path(tempfile.mkdtemp(prefix="ephemeral-pg-"))
                folder.chmod(0o755)
            self._root = folder
        return self._root

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        as_root = os.geteuid() == 0
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C",
               "HOME": str(self.root)}
        try:
            return subprocess.run(
                list(args), env=env, capture_output=True, text=True, timeout=timeout, check=True,
                user=RUN_AS if as_root else None, group="nogroup" if as_root else None,
                extra_groups=[] if as_root else None, cwd=self.root,
                # pg_ctl's server must not get the Ctrl-C of the terminal's process group:
                # the stack stops it last, after the components that use it.
                start_new_session=True)
        except subprocess.CalledProcessError as err:
            tail = "\n".join((err.stdout + err.stderr).splitlines()[-20:])
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresError(f"{Path(args[0]).name} failed ({err.returncode}):\n{tail}\n{log}"
                                ) from None

    def start(self) -> None:
        if self.data.exists():
            shutil.rmtree(self.data)  # a previous run's leftover: this database is throwaway
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pwfile"
        write_private(pwfile, self.password + "\n")  # 0600 from its first byte
        if os.geteuid() == 0:
            shutil.chown(self.root, RUN_AS, "nogroup")
            shutil.chown(pwfile, RUN_AS, "nogroup")
        try:
            self._run(str(find_bin("initdb")), "-D", str(self.data), "-U", self.user,
                      "--pwfile", str(pwfile), "--auth-host=scram-sha-256",
                      "--auth-local=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        finally:
            pwfile.unlink(missing_ok=True)
        options = " ".join([
            f"-p {self.port}", "-c listen_addresses=127.0.0.1",
            "-c unix_socket_directories=''",  # TCP on loopback only; no socket in /var/run
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=200", "-c shared_buffers=64MB"])
        self._run(str(find_bin("pg_ctl")), "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "60", "-o", options, "start")
        self._create_database()

    def _create_database(self) -> None:
        import psycopg2  # type: ignore[import-untyped]

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                password=self.password, dbname="postgres", connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self, delete: bool = True) -> None:
        """Stop the server (fast: open sessions are ended) and delete its folder."""
        if self.running():
            try:
                self._run(str(find_bin("pg_ctl")), "-D", str(self.data), "-m", "fast", "-w",
                          "-t", "60", "stop")
            except PostgresError:
                if self.running():  # not merely "already stopped"
                    self._run(str(find_bin("pg_ctl")), "-D", str(self.data), "-m",
                              "immediate", "-w", "stop")
        if delete and self._root is not None and self._root.exists():
            shutil.rmtree(self._root, ignore_errors=True)
