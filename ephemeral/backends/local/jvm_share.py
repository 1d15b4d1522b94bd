"""Class-data sharing (AppCDS) for the Spark JVMs this host starts: master, workers, drivers.

A JVM spends most of its start loading, parsing and verifying the few thousand classes Spark's
daemons and drivers need; a shared archive holds them ready to map. Measured here (Java 17,
Spark 4.3): a standalone master reaches its web UI with half the CPU (2.4-3.5 s -> 1.3-1.6 s)
and in half the time, on a 2-core machine where every CPU-second of a cluster's start is idle,
reserved time.

``python -m ephemeral.backends.local`` (``make setup`` runs it) builds one archive per
kind of JVM: it runs a small authenticated master, a worker and a PySpark driver that record
the classes they load, then dumps each list with ``java -Xshare:dump``. Archives are named by a
digest of the Java runtime and of every jar's name, size and time (what the JVM checks an
archive against), so an upgrade or a reinstall simply finds none; a JVM that cannot map its
archive anyway starts without it (``-Xshare:auto``). Without an archive, JVMs start as before. Setting
``jvm_archives`` to ``off`` turns this off; another path moves the archives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ephemeral.backends.http import get_json
from ephemeral.settings import folder, job_environ, setting

ROLES = ("master", "worker", "driver")
DUMP_TIMEOUT = 300.0
log = logging.getLogger(__name__)
# The JVM flags of the recording run's command line that the dump must repeat: the module
# graph Spark asks for, and the class path (an archive only maps for the same class path).
_MODULE_FLAG = re.compile(r"^(--add-(opens|exports|modules|reads)=\S+|-XX:\+IgnoreUnrecognizedVMOptions)$")


def spark_home() -> Path | None:
    try:
        from pyspark.find_spark_home import _find_spark_home
    except ImportError:
        return None
    return Path(_find_spark_home())


def java_bin() -> str | None:
    """The java that Spark's scripts run: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return os.path.realpath(found) if found and os.path.exists(found) else None


def archive_dir() -> Path | None:
    """Where archives live; None when turned off, or when nothing names a folder and this OS
    user has no home (a container's user without a passwd entry): the archives only make
    starts faster, and their absence must not stop a cluster."""
    value = setting("jvm_archives")
    if value and value.strip().lower() == "off":
        return None
    if value:
        return folder("jvm_archives")
    try:
        return Path.home() / ".cache" / "ephemeral" / "jvm"
    except RuntimeError:
        return None


def _digest(java: str, home: Path) -> str:
    """The Java runtime and every jar as the JVM checks them (name, size, time): a JVM that
    finds its archive stale maps neither it nor the JDK's own default archive, so a
    reinstalled Spark must get a new archive, not the old one under the same name."""
    release = Path(java).parent.parent / "release"
    parts = [java, release.read_text(errors="replace") if release.is_file() else "",
             str(home.resolve())]
    with os.scandir(home / "jars") as jars:
        for jar in sorted(jars, key=lambda e: e.name):
            st = jar.stat()
            parts.append(f"{jar.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _trusted(path: Path) -> bool:
    """An archive is code every Spark JVM maps: only one of this user's (or root's) that no one
    else can write, in a folder no one else can write."""
    for p in (path, path.parent):
        st = p.stat()
        if st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o022:
            return False
    return True


def archive_path(role: str) -> Path | None:
    """Where the archive of ``role`` is (or would be) for this host's Java and Spark."""
    folder, java, home = archive_dir(), java_bin(), spark_home()
    if folder is None or java is None or home is None:
        return None
    return folder / f"spark-{role}-{_digest(java, home)}.jsa"


def java_options(role: str) -> str:
    """The JVM options that map ``role``'s archive, or "" when there is none."""
    path = archive_path(role)
    if path is None or not path.is_file() or not _trusted(path):
        return ""
    # auto: a JVM that cannot map it (jars changed since) starts as if it were not there.
    return f"-XX:SharedArchiveFile={path} -Xshare:auto -Xlog:cds=off -Xlog:cds+dynamic=off"


# --- building ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], bool], what: str, timeout: float,
          running: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if any(proc.poll() is not None for proc in running):
            raise RuntimeError(f"a recording JVM exited while waiting for {what}")
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def _master_state(ui: str) -> dict[str, Any]:
    body = get_json(f"{ui}/json/", timeout=2)
    return body if isinstance(body, dict) else {}


@contextmanager
def _sessions() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started in sessions of their own; all of them killed on the way out."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in started:
            proc.wait()


def _command_flags(log_file: Path) -> tuple[str, list[str]]:
    """Class path and module flags from the ``Spark Command:`` line the launcher printed."""
    for line in log_file.read_text(errors="replace").splitlines():
        if line.startswith("Spark Command: "):
            args = line.removeprefix("Spark Command: ").split(" ")
            cp = args[args.index("-cp") + 1]
            return cp, [a for a in args if _MODULE_FLAG.match(a)]
    raise RuntimeError(f"no 'Spark Command:' line in {log_file}")


def record(work: Path, *, timeout: float = 180.0) -> dict[str, tuple[Path, Path]]:
    """Run a master, a worker and a driver that list the classes they load; return, per role,
    the class list and the log holding its command line."""
    home, java = spark_home(), java_bin()
    if home is None or java is None:
        raise RuntimeError("building JVM archives needs pyspark and a java")
    work.mkdir(parents=True, exist_ok=True)
    secret = work / "auth.properties"
    secret.write_text(f"spark.authenticate=true\nspark.authenticate.secret={os.urandom(16).hex()}\n")
    secret.chmod(0o600)
    master_port, ui_port = _free_port(), _free_port()
    ui, master = f"http://127.0.0.1:{ui_port}", f"spark://127.0.0.1:{master_port}"
    lists = {role: (work / f"{role}.classlist", work / f"{role}.log") for role in ROLES}
    # The environment nodes and drivers get (job_environ), so the class path recorded is the
    # one they run with, and the caller's secrets stay out.
    base = {**job_environ(), "SPARK_HOME": str(home), "SPARK_NO_DAEMONIZE": "1",
            "SPARK_PRINT_LAUNCH_COMMAND": "1", "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(work / "logs"), "PYSPARK_PYTHON": sys.executable,
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
            # Killed at the end, the JVMs never clean up their temporary folders: all in
            # ``work``, which the caller removes.
            "SPARK_LOCAL_DIRS": str(work / "local"), "TMPDIR": str(work / "tmp")}
    (work / "tmp").mkdir(exist_ok=True)
    from ephemeral.jobs.spark_jobs import FAST_START_JVM

    def opts(role: str) -> str:
        return (f"{FAST_START_JVM} -Djava.io.tmpdir={work / 'tmp'} "
                f"-XX:DumpLoadedClassList={lists[role][0]}")

    spark_class = str(home / "bin" / "spark-class")
    app = work / "app.py"
    app.write_text("from pyspark.sql import SparkSession\n"
                   "s = SparkSession.builder.getOrCreate()\n"
                   "s.range(1000).selectExpr('id % 7 as k').groupBy('k').count().collect()\n"
                   "s.stop()\n")
    with _sessions() as started:
        def start(role: str, argv: list[str], env: dict[str, str]) -> None:
            with open(lists[role][1], "wb") as out:
                started.append(subprocess.Popen(argv, env=env, stdout=out,
                                                stderr=subprocess.STDOUT, cwd=work,
                                                start_new_session=True))

        start("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host",
                         "127.0.0.1", "--port", str(master_port), "--webui-port", str(ui_port),
                         "--properties-file", str(secret)],
              base | {"SPARK_DAEMON_JAVA_OPTS": opts("master")})
        _wait(lambda: _master_state(ui).get("status") == "ALIVE", "the master", timeout,
              started)
        start("worker", [spark_class, "org.apache.spark.deploy.worker.Worker", "--host",
                         "127.0.0.1", "--port", str(_free_port()), "--webui-port",
                         str(_free_port()), "--cores", "1", "--memory", "1g", "--work-dir",
                         str(work / "worker"), "--properties-file", str(secret), master],
              base | {"SPARK_DAEMON_JAVA_OPTS": opts("worker")})
        _wait(lambda: bool(_master_state(ui).get("workers")), "the worker", timeout, started)
        start("driver", [str(home / "bin" / "spark-submit"), "--master", master,
                         "--properties-file", str(secret),
                         "--conf", f"spark.driver.extraJavaOptions={opts('driver')}",
                         "--conf", "spark.driver.host=127.0.0.1",
                         "--conf", "spark.driver.bindAddress=127.0.0.1", str(app)],
              base | {"SPARK_LAUNCHER_OPTS": FAST_START_JVM})
        code = started[-1].wait(timeout=timeout)
        if code != 0:
            raise RuntimeError(f"the recording driver failed (exit {code}): "
                               f"{lists['driver'][1].read_text(errors='replace')[-2000:]}")
    return lists


def dump(role: str, classlist: Path, log_file: Path, target: Path) -> None:
    """``java -Xshare:dump`` of ``classlist`` into ``target`` (written whole, then renamed)."""
    java = java_bin()
    if java is None:
        raise RuntimeError("no java")
    cp, flags = _command_flags(log_file)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        out = subprocess.run([java, "-Xshare:dump", f"-XX:SharedClassListFile={classlist}",
                              f"-XX:SharedArchiveFile={tmp}", *flags, "-cp", cp],
                             capture_output=True, text=True, timeout=DUMP_TIMEOUT, check=False)
        if out.returncode != 0 or not tmp.is_file():
            raise RuntimeError(f"dumping the {role} archive failed (exit {out.returncode}): "
                               f"{out.stdout[-1500:]}{out.stderr[-1500:]}")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def build(*, force: bool = False) -> dict[str, Path]:
    """Build the archives this host lacks (all with ``force``); return them by role."""
    wanted = {role: archive_path(role) for role in ROLES}
    if any(p is None for p in wanted.values()):
        raise RuntimeError("JVM archives are off (jvm_archives=off), or pyspark or java is "
                           "missing")
    paths = {role: p for role, p in wanted.items() if p is not None}
    folder = next(iter(paths.values())).parent
    folder.mkdir(parents=True, exist_ok=True)
    if folder.stat().st_uid == os.getuid():
        folder.chmod(0o755)  # archives are used only from a folder no one else can write
    prune(folder)
    todo = [r for r, p in paths.items() if force or not p.is_file()]
    if todo:
        with tempfile.TemporaryDirectory(prefix="ephemeral-jvm-") as tmp:
            try:
                lists = record(Path(tmp) / "1")
            except (RuntimeError, OSError, subprocess.SubprocessError) as err:  # busy: again
                log.warning("recording the JVMs' classes failed (%s); trying once more", err)
                lists = record(Path(tmp) / "2")
            for role in todo:
                dump(role, *lists[role], paths[role])
                paths[role].with_suffix(".json").write_text(json.dumps(
                    {"java": java_bin(), "spark_home": str(spark_home())}))
    return paths


def prune(folder: Path) -> None:
    """Remove the archives of Java runtimes or Spark installs that are gone (a deleted
    virtualenv's) or changed in place (an upgrade): each is 60-180 MiB."""
    current = {str(p) for p in (archive_path(r) for r in ROLES) if p is not None}
    here = (java_bin(), str(spark_home()))
    for meta in folder.glob("spark-*.json"):
        try:
            made = json.loads(meta.read_text())
            gone = not all(Path(str(made[k])).exists() for k in ("java", "spark_home"))
            replaced = (made["java"], made["spark_home"]) == here \
                and str(meta.with_suffix(".jsa")) not in current
        except (OSError, ValueError, KeyError):
            gone, replaced = True, False
        if gone or replaced:
            meta.with_suffix(".jsa").unlink(missing_ok=True)
            meta.unlink(missing_ok=True)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Stopped by SIGTERM (a CI runner's timeout), the recording's JVMs, in sessions of their
    # own, are still killed: SystemExit runs the finally blocks that kill them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if archive_dir() is None:
        print("JVM archives are off (jvm_archives=off): nothing to build")
        return 0
    started = time.monotonic()
    try:
        paths = build(force="--force" in sys.argv[1:])
    except (RuntimeError, OSError, TimeoutError, subprocess.SubprocessError) as err:
        # Not fatal for anything: Spark starts without archives, only slower.
        print(f"JVM archives not built: {err}", file=sys.stderr)
        return 1
    for role, path in paths.items():
        print(f"{role}: {path} ({path.stat().st_size // 2**20} MiB)")
    print(f"in {time.monotonic() - started:.0f} s")
    return 0

