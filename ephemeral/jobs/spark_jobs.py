"""Spark applications: ``spark-submit`` (from the pyspark distribution) against the cluster's
master in client mode, with the driver's output streamed line by line; and Spark Connect
sessions for Python code that runs inside a task.

Both authenticate: ``spark-submit`` with the cluster's ``spark.authenticate`` secret, read by
the driver from a 0600 properties file (never an argv visible in ``ps``), and Connect sessions
with the server's bearer token as gRPC metadata. ``spark_auth_for`` asks the cluster's backend
for both, in the process that submits."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ephemeral.backends.base import hide_in_task_logs
from ephemeral.backends.http import GRPC_NO_PROXY
from ephemeral.errors import JobFailed, JobRefused, JobSubmissionFailed, JobTimeout
from ephemeral.jobs.results import (
    RESULT_FILE_ENV,
    JobResult,
    JobStatus,
    parse_result_line,
    read_result_file,
)
from ephemeral.jobs.runtime_env import check_job_env
from ephemeral.settings import job_environ

if TYPE_CHECKING:
    from ephemeral.backends.base import ClusterBackend, ClusterHandle

LogSink = Callable[[str], None]
# pyspark marks its process as Spark Connect mode once a remote session was built in it; a
# spark-submit child inheriting that would run the application in the wrong mode.
CONNECT_MODE_VARS = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE")
_APP_ID = re.compile(r"\b(app-\d{14}-\d{4,})\b")
# Spark's own INFO chatter at shutdown would push the application's error out of the tail.
_SPARK_INFO = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (INFO|DEBUG) ")
# JVM flags for Spark processes whose start-up dominates their work: the client compiler and the
# serial GC start a JVM with far less CPU (measured ~45% less to a Connect server's first
# session). spark-submit's launcher JVM (which only builds the driver's command line) and
# drivers run with them unless the caller sets their options; the local backend's daemons too.
FAST_START_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
DRIVER_ENV = {"SPARK_LAUNCHER_OPTS": FAST_START_JVM}


def driver_java_options() -> str:
    """JVM options of a driver of a local cluster: it mostly plans and waits for executors,
    and its start is time its cluster waits; it maps this host's class-data-sharing archive
    of a driver when one is built (``jvm_share``)."""
    from ephemeral.backends.local import jvm_share

    return f"{FAST_START_JVM} {jvm_share.java_options('driver')}".strip()


def driver_conf(master: str) -> dict[str, str]:
    """What a driver started on this host gets unless its caller says otherwise. For a local
    cluster (a loopback master): an address the executors on the workers can call back, and
    ``driver_java_options``. A driver of a remote cluster keeps Spark's and the JVM's defaults:
    it may plan large queries or collect large results."""
    if "://127." not in master:
        return {}
    return {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.extraJavaOptions": driver_java_options()}


@dataclass(frozen=True)
class SparkAuth:
    """A Spark cluster's credentials, made on demand by its backend; never stored or logged."""

    secret: str | None = None
    """``spark.authenticate.secret`` of master, workers, executors and drivers."""
    connect_token: str | None = None
    """The Spark Connect server's bearer token."""

    def __repr__(self) -> str:  # keep credentials out of tracebacks and logs
        return (f"SparkAuth(secret={'***' if self.secret else None}, "
                f"connect_token={'***' if self.connect_token else None})")

    __str__ = __repr__


def spark_auth_for(handle: ClusterHandle, backend: ClusterBackend) -> SparkAuth:
    """The credentials of ``handle``'s cluster from its backend (none when the backend keeps
    none: its Spark clusters run without authentication)."""
    get = getattr(backend, "spark_auth", None)
    auth = get(handle) if callable(get) else None
    if not isinstance(auth, SparkAuth):
        return SparkAuth()
    hide_in_task_logs(auth.secret, auth.connect_token)
    return auth


@contextmanager
def _private_dir() -> Iterator[Path]:
    """A temporary folder only this user can enter (0700), removed with what is in it."""
    folder = tempfile.mkdtemp(prefix="ephemeral-spark-submit-")
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def driver_environ(private: Path, env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment of a driver started on this host (``spark_submit`` and the Airflow
    operator): ``job_environ()`` without Spark Connect's mode variables, this Python for
    PySpark, ``DRIVER_ENV``, its temporary files in ``private``, then the caller's ``env``.

    spark-submit's own folders, the block manager's and Python's temporary files go to
    ``private``, which the caller removes once the driver has ended: a killed driver never
    cleans up /tmp. ``SPARK_SUBMIT_OPTS`` of the deployment's (when its job environment lets
    it through) and of ``env`` come after ours, in that order, so theirs win; a
    ``SPARK_LOCAL_DIRS`` of either (a scratch disk) is kept."""
    env = dict(env or {})
    base = {k: v for k, v in job_environ().items() if k not in CONNECT_MODE_VARS}
    tmp = private / "tmp"
    tmp.mkdir(exist_ok=True)
    opts = [f"-Djava.io.tmpdir={tmp}", base.get("SPARK_SUBMIT_OPTS", ""),
            env.pop("SPARK_SUBMIT_OPTS", "")]
    own = {"TMPDIR": str(tmp),
           "SPARK_LOCAL_DIRS": base.get("SPARK_LOCAL_DIRS", str(private / "local")),
           "SPARK_SUBMIT_OPTS": " ".join(o for o in opts if o)}
    return base | {"PYSPARK_PYTHON": sys.executable, **DRIVER_ENV, **own, **env}


def _auth_properties(folder: Path, auth: SparkAuth | None,
                     private: Mapping[str, str] | None = None) -> list[str]:
    """spark-submit arguments that authenticate the driver, and give it the ``private``
    settings (secrets an integration injected into its conf): a 0600 properties file in
    ``folder`` (private, removed when the driver has ended), never its command line."""
    lines = {**({"spark.authenticate": "true", "spark.authenticate.secret": auth.secret}
                if auth is not None and auth.secret else {}), **(private or {})}
    if not lines:
        return []
    file = folder / "auth.properties"
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(f"{key}={_escaped(value)}\n" for key, value in lines.items())
    return ["--extra-properties-file", str(file)]


def _escaped(value: str) -> str:
    """A value as java.util.Properties reads it back (backslashes and line breaks escaped;
    leading blanks kept)."""
    text = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return "\\" + text if text[:1] in (" ", "\t") else text


# spark-submit's options that take URLs (comma-separated): where it fetches code and data.
URL_OPTIONS = ("files", "py_files", "archives", "jars", "packages", "exclude_packages",
               "repositories")
# The operator's arguments that are spark-submit options, and the conf key each one's option
# sets: spark-submit takes an option given over its key in conf (on a standalone master).
OPTION_CONF: Mapping[str, str] = {
    "files": "spark.files", "py_files": "spark.submit.pyFiles", "archives": "spark.archives",
    "jars": "spark.jars", "packages": "spark.jars.packages",
    "exclude_packages": "spark.jars.excludes", "repositories": "spark.jars.repositories",
    "driver_memory": "spark.driver.memory", "executor_memory": "spark.executor.memory",
    "executor_cores": "spark.executor.cores", "total_executor_cores": "spark.cores.max",
}


def check_submit_input(where: str, conf: Mapping[str, Any] | None, *, conf_field: str = "conf",
                       options: Mapping[str, str | None] | None = None,
                       args: Sequence[Any] = (), args_field: str = "application_args",
                       name_field: str = "name",
                       flags: Mapping[str, Any] | None = None) -> None:
    """Refuse, before spark-submit starts, a conf key ephemeral sets for the cluster
    (``CLUSTER_CONF``: its master, its authentication, client mode), ``spark.app.name`` (the
    application is named by ``name_field``, spark-submit's ``--name``), a conf key an option
    in ``flags`` (``OPTION_CONF``: the operator's arguments) puts a value over, and a secret in
    what becomes its command line (visible in ``ps`` to every user of the host, and in the
    task log): a conf key or value that is one (``secret_conf_keys``, the rule a spec's conf
    follows), credentials in a URL of an option (``repositories``, ``jars``, ...;
    ``credentials_problem``) and a secret in an application argument (``command_secrets``: the
    rule of a Ray job's entrypoint). Names each field; shows no secret."""
    from ephemeral.jobs.command_secrets import secret_words_problem
    from ephemeral.jobs.runtime_env import CREDENTIALS_FIX
    from ephemeral.specs.models import CLUSTER_CONF, backend_keys, backend_reason, secret_conf_keys
    from ephemeral.specs.pip_credentials import credentials_problem

    problems = []
    # The driver is pointed at the cluster, authenticated to it and run in client mode by
    # ephemeral (--master, the auth properties file, --deploy-mode): a --conf would win over
    # the file and leave a driver the master refuses, move the driver off this host, or be
    # ignored for the option.
    if owned := backend_keys((str(k) for k in conf or {}), CLUSTER_CONF):
        problems.append(f"{conf_field} sets " + "; ".join(
            f"{k}, which is the cluster's ({backend_reason(k)})" for k in owned) + ": remove it")
    # --name wins over it: the operator always sends one (its name, else the task id).
    if "spark.app.name" in {str(k) for k in conf or {}}:
        problems.append(f"{conf_field} sets spark.app.name, which spark-submit's --name "
                        f"overrides: name the application with {name_field} instead")
    # The hook sends an option only when it is truthy; sent, it wins and the key does nothing.
    if both := [(f, OPTION_CONF[f]) for f, value in (flags or {}).items()
                if value and OPTION_CONF[f] in {str(k) for k in conf or {}}]:
        problems.append(f"{conf_field} sets " + "; ".join(
            f"{key}, which {field} overrides (spark-submit's --{field.replace('_', '-')} wins "
            "over conf)" for field, key in both) + ": set only one of them")
    if keys := secret_conf_keys({str(k): str(v) for k, v in (conf or {}).items()}):
        problems.append(
            f"{conf_field} sets {', '.join(keys)} to a secret (by its key, or a value with "
            "credentials or a key in it), which would be on spark-submit's command line "
            "(visible in ps on this host) and in the log; use a credentials provider (e.g. "
            "spark.hadoop.fs.s3a.aws.credentials.provider with the host's role or the "
            "driver's environment) or a key file's path (e.g. ...service.account.json.keyfile)")
    for field, value in (options or {}).items():
        if value and (problem := credentials_problem(str(value), CREDENTIALS_FIX)) is not None:
            problems.append(f"{field}: {problem}")
    words = [str(a) for a in args]
    if (problem := secret_words_problem(words, lambda i: f"{args_field}[{i}]:")) is not None:
        problems.append(problem)
    if problems:
        raise JobRefused(f"{where}: " + "; ".join(problems))


def check_executors_fit(where: str, handle: ClusterHandle, conf: Mapping[str, Any] | None, *,
                        conf_field: str = "conf", flags: Mapping[str, Any] | None = None) -> None:
    """Refuse, before spark-submit starts, executors or tasks bigger than one worker of
    ``handle``'s cluster: its master never places such an executor, and the application waits
    for one until its timeout. The rule of a spec's conf (``executor_problems``), on what the
    driver gets: the cluster's defaults, ``conf`` over them, the options of ``flags`` (the
    operator's arguments, ``OPTION_CONF``) over those. A handle of older code (no node groups)
    is not judged."""
    from ephemeral.specs.models import WorkerSize, executor_problems
    from ephemeral.specs.quantities import format_memory

    worker = next((g for g in handle.groups if g.name == "workers"), None)
    if worker is None:
        return
    own = {str(k): str(v) for k, v in (conf or {}).items()}
    # Judged even where the hook would not send it (0, ""): accepted, it would do nothing.
    options = {OPTION_CONF[f]: f for f, value in (flags or {}).items() if value is not None}
    given = own | {key: str((flags or {})[f]) for key, f in options.items()}
    memory, offered = format_memory(worker.memory_bytes), worker.memory_bytes
    if handle.backend == "kubernetes":
        # A worker pod offers executors only part of its memory (heaps, the JVMs' overhead):
        # an executor between that and the pod's memory is never placed either.
        from ephemeral.backends.kubernetes.render.checks import STANDALONE

        offered = STANDALONE.offered(memory) * 2**20
        memory = f"{memory}, of which {offered // 2**20}m {STANDALONE.of_worker}"
    size = WorkerSize(cores=int(worker.cpu), memory_bytes=offered, memory=memory,
                      gpus=worker.gpus)

    def named(key: str) -> str:
        return options.get(key) or (f"{conf_field} {key}" if key in own
                                    else f"the cluster's conf {key}")

    if problems := executor_problems(handle.spark_conf | given, size):
        raise JobRefused(f"{where}: executors and their tasks must fit one worker of cluster "
                         f"{handle.name}: " + "; ".join(f"{named(key)}: {why}"
                                                        for key, why in problems))


def spark_submit_bin() -> str:
    try:
        from pyspark.find_spark_home import _find_spark_home
    except ImportError as err:
        raise JobSubmissionFailed("spark-submit needs pyspark: pip install "
                                  "'airflow-provider-ephemeral[local]'") from err
    return str(Path(_find_spark_home()) / "bin" / "spark-submit")


def spark_submit(
    master: str,
    application: str,
    args: Sequence[str] = (),
    *,
    conf: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    cluster: str = "",
    sink: LogSink | None = None,
    timeout: float | None = None,
    on_start: Callable[[int], None] | None = None,
    auth: SparkAuth | None = None,
) -> JobResult:
    """Run ``application`` on the cluster (driver here, executors on the workers); raise
    ``JobFailed`` with the last log lines when it fails. ``auth``: the cluster's credentials
    (``spark_auth_for``); the driver's environment is ``job_environ()`` plus ``env``.
    spark-submit's launcher starts with ``FAST_START_JVM`` unless ``env`` sets
    ``SPARK_LAUNCHER_OPTS``; so does the driver of a local cluster (``driver_conf``) unless
    ``conf`` sets ``spark.driver.extraJavaOptions``. The job's result is what it wrote
    to ``$EPHEMERAL_RESULT_FILE`` (``jobs/_common.emit_result`` does), else its last JSON line;
    a declared result that cannot be read raises ``ResultUnreadable``."""
    check_job_env(env, "spark-submit", field="env")  # however it is called, before it starts
    check_submit_input("spark-submit", conf, args=args, args_field="args", name_field="name")
    if not Path(application).is_file():
        raise JobRefused(f"no application file {application!r}")
    argv = [spark_submit_bin(), "--master", master]
    if name:
        argv += ["--name", name]
    settings = driver_conf(master) | dict(conf or {})
    for key, value in settings.items():
        argv += ["--conf", f"{key}={value}"]
    with _private_dir() as private:  # removed once the driver ended
        run_env = driver_environ(private, env)
        # The driver runs here (client mode): it writes its result to a file of ours. Its
        # output is no channel for it: spark-submit copies the driver's stdout into the JVM's
        # in 1 KiB chunks, merged with the JVM's own log4j lines, and Python writes a line and
        # its newline apart (-u), so a log line can land inside the result line.
        result_file = private / "result.json"
        run_env[RESULT_FILE_ENV] = str(result_file)
        argv += [*_auth_properties(private, auth), application, *args]
        started, submitted_at = time.monotonic(), time.time()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=run_env, start_new_session=True, bufsize=1)
        if on_start:
            on_start(proc.pid)  # the driver's session id, so a killed task can stop it
        lines: deque[str] = deque(maxlen=2000)
        app_id: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                lines.append(line)
                if not app_id and (m := _APP_ID.search(line)):
                    app_id.append(m.group(1))
                if sink:
                    sink(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            _kill(proc)
            raise JobTimeout(f"spark application {application} did not finish in "
                             f"{timeout:.0f}s; it was stopped") from err
        except BaseException:
            _kill(proc)  # interrupted: the driver must not outlive its caller
            raise
        _drain(proc, reader)
        job_id = app_id[0] if app_id else f"spark-submit-pid-{proc.pid}"
        status = JobStatus.SUCCEEDED if code == 0 else JobStatus.FAILED
        if status is not JobStatus.SUCCEEDED:
            useful = [line for line in lines if not _SPARK_INFO.match(line)]
            raise JobFailed(job_id, status.value, "\n".join(useful[-40:]), exit_code=code,
                            streamed=sink is not None)
        result = read_result_file(result_file, job_id)
    if result is None:  # an application that does not use the channel: its last JSON line
        result = parse_result_line("\n".join(lines), job_id)
    return JobResult(job_id=job_id, cluster=cluster, engine="spark", status=status,
                     submitted_at=round(submitted_at, 3),
                     seconds=round(time.monotonic() - started, 3), result=result)


def _drain(proc: subprocess.Popen[str], reader: threading.Thread) -> None:
    """Read the driver's output to its end. A process the driver left in its session can hold
    the pipe open: once the driver has exited, its leftovers are stopped rather than the read
    cut short (a cut read loses the last lines, the ones that say how the job ended)."""
    reader.join(timeout=10)
    if reader.is_alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        reader.join(timeout=10)


def _kill(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def connect_session(endpoint: str, *, app_name: str = "ephemeral", token: str | None = None
                    ) -> Any:
    """A ``SparkSession`` on the cluster's Spark Connect server (``sc://host:port``),
    authenticated with the server's ``token`` when it has one."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    saved = {k: os.environ.get(k) for k in CONNECT_MODE_VARS}
    try:
        return ConnectSession.builder.channelBuilder(channel_builder(endpoint, token)) \
            .appName(app_name).getOrCreate()
    finally:  # keep this process (an Airflow worker, a test) out of Spark Connect mode
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def channel_builder(endpoint: str, token: str | None) -> Any:
    """The gRPC channel of a Connect session: never through a proxy from the environment
    (``GRPC_NO_PROXY``: gRPC reads http_proxy itself), and sending ``token`` as the gRPC
    ``authorization`` header when there is one.

    pyspark's own ``;token=`` parameter turns TLS on for any host but ``localhost``, and the
    cluster's server listens on a 127.0.x.y address without TLS: the token goes as metadata on
    the plain channel instead, which the server checks the same way."""
    from pyspark.sql.connect.client import DefaultChannelBuilder

    builder = DefaultChannelBuilder(endpoint, channelOptions=list(GRPC_NO_PROXY))
    if token:
        builder.set("authorization", f"Bearer {token}")
    return builder
