"""``EphemeralSparkSubmitOperator``: a Spark application on an ephemeral cluster's master,
submitted through the Spark provider's ``SparkSubmitHook``.

The provider's hook builds and logs the ``spark-submit`` command (its ``secret``/``password``
masking, ``packages``, ``jars``, ``py_files``, ``files``, ``archives``, executor sizing) and
streams the driver's output into the task log; the operator injects OpenLineage's parent job
and transport properties as the provider's own ``SparkSubmitOperator`` does. What this module
adds, where the hook has no way to say it:

- the master comes from the cluster's handle (the setup task's XCom), not from an Airflow Spark
  connection, and ``spark-submit`` is the one of the installed pyspark;
- the driver authenticates with the cluster's ``spark.authenticate`` secret from a 0600
  properties file given as ``--extra-properties-file`` (the hook only knows
  ``--properties-file``, which would replace the cluster defaults) and removed when the driver
  ends; the secret is never in argv, conf, the log or XCom;
- the driver's environment is the job allow-list (``settings.job_environ``), passed to the
  process as a whole: the hook's ``env_vars`` are merged into this worker's whole environment;
- local clusters get the driver's loopback address settings;
- ``job_timeout`` and killing the task stop the driver's whole session (the hook's ``on_kill``
  stops the ``spark-submit`` JVM only, not the Python driver it started);
- the job's result (its result file, else its last JSON line) is pushed to XCom.

The provider's own ``SparkSubmitOperator`` can be imported beside this one. The provider is
imported when a task runs, not when a DAG is parsed (the compose image has no Spark).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ephemeral.airflow.handles import pointer
from ephemeral.airflow.lineage import JobLineageMixin
from ephemeral.airflow.links import SparkMasterLink
from ephemeral.airflow.operators import (
    JOB_RESULT_TOO_LARGE,
    _no_master,
    _within_ttl,
    check_rendered,
    cluster_backend,
    fits_xcom,
    job_target,
    job_timeout_seconds,
)
from ephemeral.airflow.release import before_job, release, released_by
from ephemeral.backends import ClusterHandle
from ephemeral.errors import EphemeralError, JobFailed, JobTimeout
from ephemeral.jobs.results import JobResult, JobStatus

if TYPE_CHECKING:
    from ephemeral.airflow.spark_submit_hook import ClusterSparkSubmitHook

# How long the driver's output may stay open after the driver exited (a process it left in
# its session holding the pipe) before that process is stopped.
DRAIN_SECONDS = 10.0
PROVIDER_MISSING = (
    "EphemeralSparkSubmitOperator submits through the Spark provider's SparkSubmitHook, which "
    "is not installed here: pip install 'airflow-provider-ephemeral[airflow]' "
    "(apache-airflow-providers-apache-spark>=5.3.4,<6)")


class EphemeralSparkSubmitOperator(JobLineageMixin, BaseOperator):
    """Run a Spark application on the cluster's master (driver in this task, executors on the
    workers), streaming the driver's output into the task log; push the job's result.

    ``cluster`` is the setup task's output. ``packages``, ``jars``, ``py_files``, ``files``,
    ``archives``, ``repositories`` and ``exclude_packages`` are comma-separated as in
    ``spark-submit`` and the provider's operator. ``env_vars`` are added to the driver's
    environment on top of the job allow-list; reserved names (``AIRFLOW*``, ``EPHEMERAL_*``
    but ``EPHEMERAL_ARTIFACT_ROOT``, ``RAY_AUTH_*``: ``ephemeral.jobs.runtime_env.check_job_env``)
    are refused before the driver starts, and so is a secret in ``conf`` (the rule of a spec's
    conf), or credentials in a URL option or an argument: they are spark-submit's command line
    (``ephemeral.jobs.spark_jobs.check_submit_input``); so is a ``conf`` key the operator puts
    over it: ``spark.app.name`` (set ``name``; default: the task id), ``spark.submit.deployMode``
    (drivers run in client mode here), and a key one of its arguments also sets
    (``spark.executor.memory`` with ``executor_memory``, ``spark.jars`` with ``jars``, ...:
    ``OPTION_CONF``). ``job_timeout`` (seconds) stops the
    driver. ``application_args`` (a list, None: none), ``conf`` and ``env_vars`` (dicts) are
    kept as given, a template or an XComArg included, and their rendered types checked when
    the task starts: a text there (a template renders as one unless the DAG sets
    ``render_template_as_native_obj``) fails the task naming the field.
    spark-submit's launcher, and the driver of a local cluster, start with the fast-start JVM
    flags (as ``ephemeral spark-submit``'s do) unless ``env_vars`` sets ``SPARK_LAUNCHER_OPTS``
    or ``conf`` sets ``spark.driver.extraJavaOptions``. The cluster's credentials come from the
    handle's backend and connection (or ``backend``, ``conn_id``, ``kubernetes_conn_id``), asked
    in this process.
    ``delete_cluster_on_success=True`` on the cluster's last job deletes the cluster the moment
    the application succeeds instead of when the teardown is scheduled
    (``ephemeral.airflow.release``; refused, before submitting, on a task that is not the
    cluster's last user).
    """

    template_fields: Sequence[str] = (
        "cluster", "application", "application_args", "conf", "name", "files", "py_files",
        "archives", "jars", "packages", "exclude_packages", "repositories", "java_class",
        "env_vars", "job_timeout")
    template_fields_renderers = {"conf": "json", "env_vars": "json"}
    operator_extra_links = (SparkMasterLink(),)
    ui_color = "#fdebd0"

    def __init__(self, *, cluster: Any, application: str,
                 application_args: Sequence[Any] | None = None,
                 conf: dict[str, Any] | None = None,
                 name: str | None = None, files: str | None = None,
                 py_files: str | None = None, archives: str | None = None,
                 jars: str | None = None, packages: str | None = None,
                 exclude_packages: str | None = None, repositories: str | None = None,
                 java_class: str | None = None, driver_memory: str | None = None,
                 executor_memory: str | None = None, executor_cores: int | None = None,
                 total_executor_cores: int | None = None,
                 env_vars: dict[str, str] | None = None, verbose: bool = False,
                 job_timeout: float | str | None = None,
                 openlineage_inject_parent_job_info: bool | None = None,
                 openlineage_inject_transport_info: bool | None = None,
                 delete_cluster_on_success: bool = False,
                 backend: str | None = None, conn_id: str | None = None,
                 kubernetes_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster
        self.delete_cluster_on_success = delete_cluster_on_success
        self.application = application
        self.application_args = application_args  # as given: a template or XComArg renders later
        self.conf = conf
        self.name = name
        self.files = files
        self.py_files = py_files
        self.archives = archives
        self.jars = jars
        self.packages = packages
        self.exclude_packages = exclude_packages
        self.repositories = repositories
        self.java_class = java_class
        self.driver_memory = driver_memory
        self.executor_memory = executor_memory
        self.executor_cores = executor_cores
        self.total_executor_cores = total_executor_cores
        self.env_vars = env_vars
        self.verbose = verbose
        self.job_timeout = job_timeout
        self.openlineage_inject_parent_job_info = openlineage_inject_parent_job_info
        self.openlineage_inject_transport_info = openlineage_inject_transport_info
        self.backend = backend
        self.conn_id = conn_id
        self.kubernetes_conn_id = kubernetes_conn_id
        self._driver: subprocess.Popen[str] | None = None

    @property
    def _timeout(self) -> float | None:
        return job_timeout_seconds(self.job_timeout)

    def execute(self, context: Any) -> dict[str, Any]:
        self._check_input()
        given = pointer(self.cluster)
        if not given.endpoints.spark_master:
            raise AirflowFailException(_no_master(given))
        _within_ttl(given, self._timeout)
        if not Path(self.application).is_file():
            raise AirflowFailException(f"no application file {self.application!r}")
        if self.delete_cluster_on_success and (
                earlier := before_job(self, context, given)) is not None:
            return earlier
        # The master, its secret and the cluster's conf: the backend's, not the handle's.
        handle = job_target(self, context, given)[1]
        if differ := sorted(k for k in handle.spark_conf.keys() | given.spark_conf.keys()
                            if handle.spark_conf.get(k) != given.spark_conf.get(k)):
            # The driver runs here and a conf can load code into it (spark.jars,
            # spark.driver.extraJavaOptions): it takes none that only one of the record (which
            # a namespace editor can rewrite) and the setup's XCom states.
            raise AirflowFailException(
                f"cluster {handle.name}: its record and its setup's XCom differ on the Spark "
                f"conf {', '.join(differ)}: one of them was edited. This task's driver runs on "
                "the Airflow worker and takes no conf that only one of them states; delete the "
                "cluster and rerun the setup.")
        self._check_executors(handle)
        context["ti"].xcom_push(key=SparkMasterLink().xcom_key, value=handle.endpoints.spark_ui)
        try:
            result = self._submit(context, handle)
        except EphemeralError as err:
            raise AirflowException(str(err)) from err
        done = result.model_dump(mode="json")
        fits_xcom(self, done, JOB_RESULT_TOO_LARGE)
        if self.delete_cluster_on_success:
            release(cluster_backend(handle, self), handle, released_by(context), done)
        return done

    def _conf(self, context: Any, handle: ClusterHandle) -> dict[str, Any]:
        # The driver runs on this host; a local cluster's executors must be able to call it back.
        # Then the cluster's defaults (its spec's conf), then the application's own.
        from ephemeral.jobs.spark_jobs import driver_conf

        master = str(handle.endpoints.spark_master)
        conf: dict[str, Any] = driver_conf(master) | handle.spark_conf | dict(self.conf or {})
        return _with_openlineage(conf, context, self.openlineage_inject_parent_job_info,
                                 self.openlineage_inject_transport_info)

    def _check_input(self) -> None:
        """No secret in the conf, a URL option or an argument (they are spark-submit's command
        line and the task log): the rule of a spec's conf, before anything is asked or run."""
        from ephemeral.jobs.spark_jobs import OPTION_CONF, URL_OPTIONS, check_submit_input

        check_rendered(self, application_args=(list, tuple), conf=dict, env_vars=dict)
        try:
            check_submit_input(f"task {self.task_id}", self.conf,
                               args=self.application_args or (),
                               options={f: getattr(self, f) for f in URL_OPTIONS},
                               name_field="the operator's name argument (default: the task id)",
                               flags={f: getattr(self, f) for f in OPTION_CONF})
        except EphemeralError as err:  # a retry would fail the same
            raise AirflowFailException(str(err)) from err

    def _check_executors(self, handle: ClusterHandle) -> None:
        """Executors no worker of the cluster can hold are refused before submitting: the
        application would wait for them until job_timeout (``check_executors_fit``)."""
        from ephemeral.jobs.spark_jobs import OPTION_CONF, check_executors_fit

        try:
            check_executors_fit(f"task {self.task_id}", handle, self.conf,
                                flags={f: getattr(self, f) for f in OPTION_CONF})
        except EphemeralError as err:  # a retry would fail the same
            raise AirflowFailException(str(err)) from err

    def _env_vars(self) -> dict[str, str]:
        from ephemeral.jobs.runtime_env import check_job_env

        try:  # no reserved names (AIRFLOW*, EPHEMERAL_*, ...): the rule of a Ray job's env_vars
            check_job_env(self.env_vars, f"task {self.task_id}", field="env_vars")
        except EphemeralError as err:  # before the driver starts; a retry would fail the same
            raise AirflowFailException(str(err)) from err
        return {k: str(v) for k, v in (self.env_vars or {}).items()}

    def _submit(self, context: Any, handle: ClusterHandle) -> JobResult:
        from ephemeral.jobs.results import RESULT_FILE_ENV, parse_result_line, read_result_file
        from ephemeral.jobs.spark_jobs import (
            _SPARK_INFO,
            _auth_properties,
            _private_dir,
            driver_environ,
            spark_auth_for,
            spark_submit_bin,
        )

        try:  # at run time: DAGs using the operator parse where the provider is not installed
            from ephemeral.airflow.spark_submit_hook import ClusterSparkSubmitHook
        except ImportError as err:
            raise AirflowFailException(PROVIDER_MISSING) from err
        # The driver authenticates with the cluster's secret (spark.authenticate), which
        # spark_auth_for registers with Airflow's log masker: a driver may print its conf.
        auth = spark_auth_for(handle, cluster_backend(handle, self))
        master = str(handle.endpoints.spark_master)
        conf, private_conf = _private_part(self._conf(context, handle))
        timed_out = threading.Event()
        env_vars = self._env_vars()
        with _private_dir() as private:  # the auth, result and temporary files; removed after
            env = driver_environ(private, env_vars)
            result_file = private / "result.json"
            env[RESULT_FILE_ENV] = str(result_file)
            hook = ClusterSparkSubmitHook(
                master=master, spark_binary=spark_submit_bin(),
                extra_args=_auth_properties(private, auth, private_conf),
                on_start=lambda proc: self._started(proc, hook, timed_out),
                conf=conf, name=self.name or self.task_id,
                files=self.files, py_files=self.py_files, archives=self.archives,
                jars=self.jars, packages=self.packages, exclude_packages=self.exclude_packages,
                repositories=self.repositories, java_class=self.java_class,
                driver_memory=self.driver_memory, executor_memory=self.executor_memory,
                executor_cores=self.executor_cores,
                total_executor_cores=self.total_executor_cores,
                application_args=[str(a) for a in self.application_args or ()], verbose=self.verbose)
            started, submitted_at = time.monotonic(), time.time()
            failed: AirflowException | None = None
            try:
                # The environment goes to Popen as a whole: the hook's env_vars would be
                # merged into this worker's environment, past the allow-list.
                hook.submit(self.application, env=env, start_new_session=True)
            except AirflowException as err:  # spark-submit exited non-zero
                failed = err
            except BaseException:
                self._stop_driver()  # interrupted: the driver must not outlive its task
                raise
            finally:
                self._driver = None
            job_id = hook.app_id or f"spark-submit-{self.task_id}"
            if timed_out.is_set():
                raise JobTimeout(f"spark application {self.application} did not finish in "
                                 f"{self._timeout:.0f}s; it was stopped")
            if failed is not None:
                code = hook._submit_sp.returncode if hook._submit_sp is not None else None
                useful = [line for line in hook.lines if not _SPARK_INFO.match(line)]
                raise JobFailed(job_id, JobStatus.FAILED.value, "\n".join(useful[-40:]),
                                exit_code=code) from failed
            result = read_result_file(result_file, job_id)
        if result is None:  # an application that does not use the channel: its last JSON line
            result = parse_result_line("\n".join(hook.lines), job_id)
        done = JobResult(job_id=job_id, cluster=handle.name, engine="spark",
                         cluster_created_at=handle.created_at,
                         status=JobStatus.SUCCEEDED, submitted_at=round(submitted_at, 3),
                         seconds=round(time.monotonic() - started, 3), result=result)
        # Logged as JobResult left it: without the secrets its gate masks.
        self.log.info("Spark application %s succeeded: %s", job_id, done.result)
        return done

    def _started(self, proc: subprocess.Popen[str], hook: ClusterSparkSubmitHook,
                 timed_out: threading.Event) -> None:
        self._driver = proc
        threading.Thread(target=_watch, args=(proc, hook, self._timeout, timed_out),
                         name=f"spark-driver-{proc.pid}", daemon=True).start()

    def _stop_driver(self) -> None:
        from ephemeral.jobs.spark_jobs import _kill

        if self._driver is not None:
            _kill(self._driver)

    def on_kill(self) -> None:
        # Airflow calls on_kill on SIGTERM; the driver runs in its own session, whole.
        proc = self._driver
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)


def _watch(proc: subprocess.Popen[str], hook: ClusterSparkSubmitHook, timeout: float | None,
           timed_out: threading.Event) -> None:
    """Stop the driver's session when ``timeout`` passes; once the driver has exited, stop
    what it left holding its output open, so the hook's read ends with the last lines."""
    from ephemeral.jobs.spark_jobs import _kill

    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out.set()
        _kill(proc)
        return
    if not hook.output_done.wait(DRAIN_SECONDS):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# The OpenLineage transport's credentials and headers (an Authorization header among them).
OPENLINEAGE_PRIVATE = ("spark.openlineage.transport.auth.", "spark.openlineage.transport.headers.")


def _private_part(conf: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``conf`` split into what may go on spark-submit's command line and the secrets (by the
    spec's rule, ``secret_conf_keys``) that go into its private properties file. The task's own
    conf was refused any (``_check_input``); these are what an integration injected: the
    OpenLineage transport's API key or headers, which ``ps``, the task log (the provider masks
    only keys with 'secret' or 'password') and the Spark UI (whose default redaction misses
    'apiKey' and 'Authorization') would show. With them, the private file widens the UI's
    redaction to them, unless the task chose its own."""
    from ephemeral.backends.base import hide_in_task_logs
    from ephemeral.specs.models import secret_conf_keys

    secret = secret_conf_keys({k: str(v) for k, v in conf.items()})
    headers = [k for k in conf if k.startswith(OPENLINEAGE_PRIVATE[1])]
    hide_in_task_logs(*(str(conf[k]) for k in (*secret, *headers)))
    private = {k: str(conf[k]) for k in sorted({*secret, *headers, *(
        k for k in conf if k.startswith(OPENLINEAGE_PRIVATE))})}
    if private and REDACTION not in conf:
        private[REDACTION] = WIDER_REDACTION
    return {k: v for k, v in conf.items() if k not in private}, private


# Spark's default spark.redaction.regex, and what the OpenLineage transport's keys are called.
REDACTION = "spark.redaction.regex"
WIDER_REDACTION = (r"(?i)secret|password|token|access[.]?key|api[._-]?key|authorization"
                   r"|openlineage\.transport\.(?:auth|headers)\.")


def _with_openlineage(conf: dict[str, Any], context: Any, parent: bool | None,
                      transport: bool | None) -> dict[str, Any]:
    """OpenLineage's Spark integration properties, as the provider's ``SparkSubmitOperator``
    injects them (both default to ``[openlineage] spark_inject_*_info``)."""
    from airflow.configuration import conf as airflow_conf

    if parent is None:
        parent = airflow_conf.getboolean("openlineage", "spark_inject_parent_job_info",
                                         fallback=False)
    if transport is None:
        transport = airflow_conf.getboolean("openlineage", "spark_inject_transport_info",
                                            fallback=False)
    if not (parent or transport):
        return conf
    from airflow.providers.common.compat.openlineage.utils.spark import (
        inject_parent_job_information_into_spark_properties,
        inject_transport_information_into_spark_properties,
    )

    if parent:
        conf = dict(inject_parent_job_information_into_spark_properties(conf, context))
    if transport:
        conf = dict(inject_transport_information_into_spark_properties(conf, context))
    return conf
