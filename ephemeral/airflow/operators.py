"""Operators: create a cluster (setup), delete it (teardown), run Ray jobs and Spark apps on it.

Wiring, with the cluster's lifetime bounded by setup and teardown::

    create = CreateClusterOperator(task_id="create_ray", spec="ray/train-gpu@1")
    train = RayJobOperator(task_id="train", cluster=create.output, entrypoint="python t.py")
    delete = DeleteClusterOperator(task_id="delete_ray", cluster=create.output)
    create >> train >> delete.as_teardown(setups=create)
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowTaskTerminated,
    TaskDeferred,
)

from ephemeral.airflow.backends import (
    Target,
    instance_of,
    same_connection,
    task_backend,
)
from ephemeral.airflow.backends import resolve as resolve_target
from ephemeral.airflow.context import cluster_identity, map_index, owner_selector, task_key
from ephemeral.airflow.handles import (
    job_cluster,
    made_through,
    pointer,
    setup_args,
    with_setup_facts,
)
from ephemeral.airflow.in_process import delete_at_exit, deleted_by_teardown
from ephemeral.airflow.lineage import JobLineageMixin
from ephemeral.airflow.links import RayDashboardLink, RunReportLink, SparkMasterLink
from ephemeral.airflow.release import before_job, is_a, release, released_by
from ephemeral.airflow.settle import settles_at
from ephemeral.airflow.triggers import ClusterReadyTrigger, RayJobTrigger
from ephemeral.backends import ClusterBackend, ClusterHandle
from ephemeral.backends.readiness import Readiness
from ephemeral.errors import (
    BackendMisconfigured,
    ClusterExpired,
    ClusterFailed,
    EphemeralError,
    IdentityConflict,
    InstanceRequired,
    JobSubmissionFailed,
    ListingIncomplete,
    SettingError,
    SpecError,
)
from ephemeral.jobs.ray_jobs import JobIdTaken, RayJobs, ray_jobs_for
from ephemeral.jobs.results import JobResult, JobStatus, tail
from ephemeral.lifecycle import (
    SETUP_READY_TIMEOUT,
    delete_killed,
    deleting_on_failure,
)
from ephemeral.settings import instance_mismatch
from ephemeral.specs.identity import PREFIX, current_instance

DAGRUN_TIMEOUT_WARNING = (
    "DAG {dag_id!r} sets dagrun_timeout and creates ephemeral clusters: when it fires, Airflow "
    "3.3 marks unfinished teardowns SKIPPED and the cluster leaks until the reaper finds it. "
    "Use execution_timeout on the work tasks instead.")


class DagrunTimeoutWarning(UserWarning):
    pass


ON_FAILURE = ("delete", "keep")
MAP_INDEX = PREFIX + "map-index"


def default_deferrable(value: bool | None) -> bool:
    """``deferrable`` as other providers default it: ``[operators] default_deferrable``
    (Airflow's default: False). Set it to True to wait for clusters and jobs in the
    triggerer, without holding a worker slot (docs/getting-started.md)."""
    if value is not None:
        return value
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def seconds_arg(op: BaseOperator, field: str, value: Any, fix: str) -> float:
    """``op``'s ``field`` as seconds: a finite number above 0, not a bool. Anything else is
    refused as the DAG is parsed, naming the field and ending with ``fix``: else a text fails
    with a TypeError once the cluster exists, and 0 or less times out at once or probes
    without pause (an API server's load)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        seconds = float(value)
        if math.isfinite(seconds) and seconds > 0:
            return seconds
    raise ValueError(f"{type(op).__name__}(task_id={op.task_id!r}): {field}={value!r} is not a "
                     f"finite number of seconds above 0: {fix}")


def poll_interval_arg(op: BaseOperator, value: Any) -> float | None:
    """An operator's ``poll_interval``: None (the default pace), else ``seconds_arg``."""
    if value is None:
        return None
    return seconds_arg(op, "poll_interval", value,
                       "give the longest pause between checks, e.g. 2, or leave it out (None)")


def warn_if_dagrun_timeout(op: BaseOperator) -> None:
    dag = getattr(op, "dag", None) if op.has_dag() else None
    if dag is not None and dag.dagrun_timeout is not None:
        warnings.warn(DAGRUN_TIMEOUT_WARNING.format(dag_id=dag.dag_id), DagrunTimeoutWarning,
                      stacklevel=3)


# Why a job task finds its cluster near its expiry, and what to do.
LATE_JOB = (
    "This task started only when nearly all of the cluster's lifetime.ttl, counted from its "
    "setup, had passed: it waited in between (e.g. queued in a full pool). Put that pool on "
    "the setup task too, so the cluster is made when its jobs can run, or raise lifetime.ttl "
    "in the spec.")


def _within_ttl(handle: ClusterHandle, timeout: float | None) -> None:
    """A job on a cluster near its expiry, or with a timeout past it, is refused before
    submitting: the reaper would delete the cluster under the running job."""
    from ephemeral.adhoc import check_timeout_within_ttl

    try:
        check_timeout_within_ttl(handle, timeout, field="job_timeout", late=LATE_JOB)
    except SpecError as err:
        raise AirflowFailException(str(err)) from err


# How long after its own limit (a job's timeout, else its cluster's expiry; a setup's readiness
# deadline) a deferred task ends in any case: the trigger ends it at the limit itself, so this
# only ends a trigger held in spite of its bounds (a stuck triggerer thread, a triggerer that
# never picks it up). Airflow then fails the task, and the teardown or the run-end listener
# deletes the cluster, rather than the reaper at its TTL. Room for the trigger's own stop
# (STOP_TIMEOUT plus stop()'s wait) and a release's deletion.
DEFER_MARGIN = 600.0


def beyond(limit: float) -> timedelta:
    """The deferral timeout of a task whose trigger ends by itself ``limit`` seconds from now."""
    return timedelta(seconds=max(limit, 0.0) + DEFER_MARGIN)


def defer_timeout(handle: ClusterHandle, job_timeout: float | None) -> timedelta:
    """The deferral timeout of a task waiting for a job on ``handle``'s cluster."""
    from ephemeral.adhoc import lifetime_left

    return beyond(lifetime_left(handle) if job_timeout is None else job_timeout)


def elsewhere(handle: ClusterHandle, backend: str | None, conn_id: str | None,
              kubernetes_conn_id: str | None) -> list[str]:
    """How a task's own backend and connections differ from where the cluster lives (the
    handle's): a task so configured would reach another API server or namespace."""
    problems = []
    if backend and backend != handle.backend:
        problems.append(f"backend {backend!r} but the cluster is on {handle.backend!r}")
    for field, mine in (("conn_id", conn_id), ("kubernetes_conn_id", kubernetes_conn_id)):
        if mine and handle.connection and mine not in same_connection(handle.connection):
            problems.append(f"{field} {mine!r} but the cluster was made through "
                            f"{handle.connection!r}")
    return problems


def foreign_instance(handle: ClusterHandle, conn_id: str | None) -> str | None:
    """What is wrong when the cluster belongs to another deployment instance than the one a
    task deleting it runs for (its connection's, else ``EPHEMERAL_INSTANCE``); None if not."""
    instance = instance_of(conn_id or handle.connection)
    if not handle.instance or handle.instance == instance:
        return None
    if not (conn_id or handle.connection):
        return instance_mismatch(instance, handle.instance)
    return (f"deployment instance {instance!r} (from its connection) but the cluster belongs to "
            f"{handle.instance!r} (EPHEMERAL_INSTANCE differs between the setup and this task)")


@contextlib.contextmanager
def settings_refused() -> Iterator[None]:
    """A task's backend settings or connection that cannot work (``BackendMisconfigured``,
    ``SettingError``) fail the task without its retries: each would read the same."""
    try:
        yield
    except (BackendMisconfigured, SettingError) as err:
        raise AirflowFailException(str(err)) from err


def cluster_backend(handle: ClusterHandle, op: Any) -> ClusterBackend:
    """The backend a job task reaches its cluster through: the handle's own (backend,
    connection); a job task configured for another fails instead of submitting elsewhere."""
    problems = elsewhere(handle, op.backend, op.conn_id, op.kubernetes_conn_id)
    if problems:
        raise AirflowFailException(f"{op.task_id} is configured for " + "; ".join(problems)
                                   + ": give it the setup's backend and connection, or none")
    with settings_refused():
        return task_backend(handle.backend, cluster_connection(handle, op))


def job_target(op: Any, context: Any, given: ClusterHandle) -> tuple[ClusterBackend,
                                                                      ClusterHandle]:
    """The backend a job task reaches its cluster through, and the backend's record of that
    cluster (``handles.job_cluster``): never the handle's word alone."""
    made_through(op, given, given.setup_task)
    backend = cluster_backend(given, op)
    if other := foreign_instance(given, getattr(op, "conn_id", None)):
        raise AirflowFailException(f"{op.task_id} runs for {other}: give it the setup's "
                                   "connection, or run it with the setup's EPHEMERAL_INSTANCE")
    return backend, job_cluster(context, backend, given,
                                instance_of(cluster_connection(given, op)))


def cluster_connection(handle: ClusterHandle, op: Any) -> str | None:
    """The connection a task reaches its cluster through: the one the setup recorded."""
    return handle.connection or op.conn_id or op.kubernetes_conn_id


def job_timeout_seconds(value: Any) -> float | None:
    """A job operator's rendered ``job_timeout``: seconds, or None for no limit; anything else
    fails the task naming the field, before a job is submitted (``adhoc.job_timeout_seconds``,
    the rule the CLI's --timeout follows too)."""
    from ephemeral.adhoc import job_timeout_seconds as seconds

    try:
        return seconds(value, "job_timeout")
    except SpecError as err:
        raise AirflowFailException(str(err)) from err


def check_rendered(op: Any, **kinds: type | tuple[type, ...]) -> None:
    """Fail the task, naming the field, when a rendered list or dict field is of another type
    (None passes): a template renders as text unless the DAG sets
    ``render_template_as_native_obj=True``, and a text is no list of arguments nor a conf.
    Checked once, at the start of ``execute``, since templates and XComArgs render only then;
    the value is not shown (it may hold a secret)."""
    for field, kind in kinds.items():
        value = getattr(op, field)
        if value is None or (isinstance(value, kind) and not isinstance(value, str)):
            continue
        wanted = "list" if kind in (list, (list, tuple)) else getattr(kind, "__name__", "dict")
        raise AirflowFailException(
            f"{op.task_id}: {field} is a {type(value).__name__} where a {wanted} belongs. A "
            "template ('{{ params.x }}') renders as text: pass a " + wanted + " (its items may "
            "be templates) or an XComArg of one, or set render_template_as_native_obj=True on "
            "the DAG.")


def run_stamp(context: Any) -> str | None:
    """The DAG run's ``run_after``: kept by a clear, new for a run deleted and triggered again
    under the same id (whose jobs are not this run's)."""
    when = getattr(context.get("dag_run"), "run_after", None)
    return when.isoformat() if when is not None else None


JOB_RESULT_TOO_LARGE = (
    "The job succeeded, but its result line is for metadata (artifact URIs, a few metrics): "
    "write larger data to the artifact store (ephemeral.jobs.artifacts) and report its URI, or "
    "raise EPHEMERAL_XCOM_MAX_BYTES.")


def fits_xcom(op: BaseOperator, pushed: Any, fix: str) -> None:
    """Serialize what ``op`` returns as Airflow will push it, in ``execute``: the push comes
    after it returns, where a refusal fails the task after its work is done, and every retry
    the same. An over-size value fails the task here, with ``fix``, and without retries.
    Nothing is checked when ``op`` pushes nothing (``do_xcom_push=False``)."""
    from airflow.sdk.execution_time.xcom import resolve_xcom_backend

    from ephemeral.airflow.xcom import MetadataOnlyXCom

    if not op.do_xcom_push:
        return
    xcom = resolve_xcom_backend()
    if not issubclass(xcom, MetadataOnlyXCom):  # others may store the value as they serialize
        return
    try:
        xcom.serialize_value(pushed, key="return_value", task_id=op.task_id)
    except ValueError as err:
        raise AirflowFailException(f"{err} {fix}") from err


def _log_backend_notes(log: Any, spec: Any, backend: ClusterBackend) -> None:
    """What the backend does differently from the spec's fields (no autoscaling locally,
    placement it cannot honour, ...), in the setup's log as ``specs show`` and ``up`` say it:
    the DAG path is where most clusters are made."""
    from ephemeral.backends.notes import backend_notes, spark_mode_of

    for note in backend_notes(spec, backend.name, default_spark_mode=spark_mode_of(backend)):
        log.warning("%s: %s", spec.ref, note)


def _no_master(handle: ClusterHandle) -> str:
    if handle.engine == "spark":  # a spark-operator SparkConnect: Connect only
        return (f"cluster {handle.name} has no Spark master (a spark-operator SparkConnect): "
                "use Spark Connect (ephemeral.airflow.spark.spark_connect), or a standalone "
                "cluster (kubernetesMode: standalone) for spark-submit")
    return f"cluster {handle.name} is not a Spark cluster"




class CreateClusterOperator(BaseOperator):
    """Setup: create a cluster from a versioned spec and wait until it is usable: in the
    triggerer when ``deferrable`` (default: ``[operators] default_deferrable``, False unless
    set), else in the worker.

    A retry adopts the cluster its earlier try made (the identity is derived from the run, the
    task and the map index). On any failure after creation started it deletes the cluster
    before failing (Airflow never runs the teardown of a failed setup), unless
    ``on_failure="keep"``: then the cluster stays for debugging until its TTL, and the log says
    how to delete it. Pushes the handle.

    ``conn_id`` names an ``ephemeral`` connection (backend, namespace, deployment instance,
    Kubernetes connection); ``backend`` and ``kubernetes_conn_id`` still work alone or with it
    when they agree. ``poll_interval`` caps the pause between readiness probes (default: the
    backend's, 0.5 s local, 2 s Kubernetes).
    """

    template_fields: Sequence[str] = ("spec", "profile", "overrides")
    template_fields_renderers = {"overrides": "json"}
    operator_extra_links = (RayDashboardLink(), SparkMasterLink())
    ui_color = "#d5f5e3"

    def __init__(self, *, spec: str, profile: str | None = None,
                 overrides: dict[str, Any] | None = None, backend: str | None = None,
                 conn_id: str | None = None, kubernetes_conn_id: str | None = None,
                 ready_timeout: float = SETUP_READY_TIMEOUT, poll_interval: float | None = None,
                 deferrable: bool | None = None, on_failure: str = "delete",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if on_failure not in ON_FAILURE:  # at DAG parse, before anything exists
            raise ValueError(f"CreateClusterOperator(task_id={kwargs.get('task_id')!r}): "
                             f"on_failure={on_failure!r} is not one of 'delete' (the default) "
                             "or 'keep' (leave a failed cluster for debugging until its TTL)")
        self.spec = spec
        self.profile = profile
        self.overrides = overrides
        self.backend = backend
        self.conn_id = conn_id
        self.kubernetes_conn_id = kubernetes_conn_id
        # Neither is a template field: checked here, before any cluster exists.
        self.ready_timeout = seconds_arg(
            self, "ready_timeout", ready_timeout,
            f"give the seconds to wait for the cluster, e.g. {SETUP_READY_TIMEOUT:g} (the default)")
        self.poll_interval = poll_interval_arg(self, poll_interval)
        self.deferrable = default_deferrable(deferrable)
        self.on_failure = on_failure
        self._created: ClusterHandle | None = None
        self._creating = False  # backend.create runs: on_kill interrupts it (see there)
        self._connection: str | None = None
        self._cleaning = False
        warn_if_dagrun_timeout(self)

    def execute(self, context: Any) -> dict[str, Any]:
        from ephemeral.airflow.listener import run_end_linger
        from ephemeral.jobs.artifacts import job_root
        from ephemeral.report.store import ArtifactUrlError, artifact_url
        from ephemeral.specs import resolve

        try:
            # A templated profile of a form's null param renders as the text "None".
            profile = None if self.profile in (None, "", "None") else self.profile
            spec = resolve(self.spec, profile, self.overrides or None)
        except SpecError as err:  # bad input: nothing was made, a retry cannot help
            raise AirflowFailException(str(err)) from err
        try:
            artifact_url()
        except ArtifactUrlError as err:  # only the report's link: said here, never fatal
            self.log.warning("the run report will have no link: %s", err)
        try:  # every job would carry it; the run-end cleanup of this cluster reads the other
            job_root()
            run_end_linger()
        except SettingError as err:
            raise AirflowFailException(str(err)) from err
        target = self._target()
        backend = target.backend
        identity = cluster_identity(context, spec.spec.name, instance=target.instance,
                                    on_failure=self.on_failure)
        self.log.info("creating %s from %s (hash %s)", identity.name, spec.label(), spec.hash)
        _log_backend_notes(self.log, spec, backend)
        self._connection, self._creating = target.connection, True
        try:
            # Stored as create returns: a kill from then on deletes it (on_kill).
            self._created = backend.create(spec, identity=identity)
        except ClusterExpired:  # the reaper deletes it: a later try may make it anew
            raise
        # Nothing created, and a retry fails the same: an IdentityConflict is a name holding
        # another spec's (or owner's) cluster, which each retry would meet while it sat idle.
        except (SpecError, InstanceRequired, IdentityConflict) as err:
            raise AirflowFailException(str(err)) from err
        finally:
            self._creating = False
        # The teardown, the triggerer and the job tasks reach the cluster through the same
        # connection (its id; each looks it up again).
        handle = self._created = self._created.model_copy(
            update={"connection": target.connection})
        if handle.adopted:
            self.log.info("adopted %s, created at %s by an earlier try", handle.name,
                          handle.created_at)
        elif delete_at_exit(backend, handle, self.task_id, context.get("dag_run")):
            self.log.info("an in-process test run: %s is deleted when this process ends, if "
                          "its teardown has not deleted it by then", handle.name)
        with self._cleanup_on_failure(context, backend, handle):
            self._push_links(context, handle)
            wait = Readiness.within(backend, handle, timeout=self.ready_timeout,
                                    poll_interval=self.poll_interval)
            # A wait longer than the default: the reaper's idle rule counts it as starting.
            from ephemeral.report.deletions import record_ready_deadline

            record_ready_deadline(handle, wait.deadline)
            status = wait.step()
            if not status.ready and self.deferrable:
                self.defer(
                    trigger=ClusterReadyTrigger(backend=backend.name,
                                                conn_id=target.connection,
                                                handle=handle.model_dump(mode="json"),
                                                deadline=wait.deadline,
                                                poll_interval=(self.poll_interval
                                                               or backend.probe_interval),
                                                settles_at=settles_at(),
                                                adopted=handle.adopted),
                    method_name="execute_complete",
                    timeout=beyond(wait.deadline - time.time()),
                )
            if not status.ready:
                status = wait.wait()
            return self._ready(handle, status.message)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        h = ClusterHandle.model_validate(event["handle"]).model_copy(
            update={"adopted": bool(event.get("adopted"))})
        if event.get("status") == "ready":
            # Within the clean-up, as in execute: a handle XCom refuses must not leave the
            # cluster behind a failed setup (Airflow runs no teardown for it).
            with self._cleanup_on_failure(context, task_backend(h.backend, h.connection), h):
                return self._ready(h, str(event.get("message", "")), event.get("ready_ts"))
        error = AirflowException(f"cluster {h.name} did not become ready "
                                 f"({event.get('status')}): {event.get('message')}")
        # As in the worker (deleting_on_failure): the trigger names the error's type.
        with self._cleanup_on_failure(context, task_backend(h.backend, h.connection), h):
            if event.get("error") == ClusterFailed.__name__:
                raise error from ClusterFailed(str(event.get("message")))
            raise error

    def _ready(self, handle: ClusterHandle, message: str,
               seen: float | None = None) -> dict[str, Any]:
        # When it was seen usable (by the triggerer, when it waited), for the run report's
        # "starting" share of the cluster's life: the wait for this task to resume is
        # orchestration's, not the engine's start-up.
        handle = handle.model_copy(update={"ready_ts": round(seen or time.time(), 3)})
        pushed = handle.model_dump(mode="json")
        self._fits_xcom(pushed)
        # Also beside the run's report: whatever deletes the cluster without this XCom
        # (run-end, the reaper) reports its start as starting too. Never raises.
        from ephemeral.report.deletions import record_ready

        record_ready(handle)
        self.log.info("cluster %s ready: %s; endpoints %s", handle.name, message,
                      handle.endpoints.model_dump(exclude_none=True))
        return pushed

    def _fits_xcom(self, pushed: dict[str, Any]) -> None:
        # While the clean-up still holds: a refusal at the push would fail the setup with its
        # cluster left running.
        fits_xcom(self, pushed,
                  "The handle carries the spec's runtimeEnv.pip and Spark conf: shorten them "
                  "(move Spark settings the jobs pass themselves into the application), or "
                  "raise EPHEMERAL_XCOM_MAX_BYTES.")

    def _target(self) -> Target:
        with settings_refused():  # nothing was created
            return resolve_target(self.backend, self.conn_id, self.kubernetes_conn_id)

    def _cleanup_on_failure(self, context: Any, backend: ClusterBackend, handle: ClusterHandle
                            ) -> contextlib.AbstractContextManager[None]:
        before = functools.partial(self._cleanup_starts, handle)
        if self.on_failure == "keep":
            return _keeping(passes=(TaskDeferred,), before=before)
        return deleting_on_failure(backend, handle, passes=(TaskDeferred,), before=before,
                                   after=functools.partial(self._report_deleted, context, handle))

    def _report_deleted(self, context: Any, handle: ClusterHandle, started: float,
                        deleted: bool) -> None:
        """The failed setup's cluster in the run's report: it was made, and cost its start,
        but Airflow runs no teardown for a failed setup to record it (and the failure
        notification links the report). Never raises (``record_teardown``)."""
        from ephemeral.airflow.report import record_teardown

        name = handle.name
        record_teardown(context, setup_task_id=self.task_id, targets={name: handle},
                        engine_views={name: []}, started=started,
                        deleted={name: time.time()} if deleted else {},
                        failures={} if deleted else {
                            name: "failed after the setup failed: the reaper deletes it"})

    def _push_links(self, context: Any, handle: ClusterHandle) -> None:
        # Both keys, the other engine's empty: Airflow resolves every link of the operator
        # when the task ends and logs an error for each key it cannot find.
        ti = context["ti"]
        ti.xcom_push(key=RayDashboardLink().xcom_key, value=handle.endpoints.dashboard or "")
        ti.xcom_push(key=SparkMasterLink().xcom_key, value=handle.endpoints.spark_ui or "")

    def _cleanup_starts(self, handle: ClusterHandle, err: BaseException) -> None:
        self._cleaning = True  # on_kill must not try to take the cluster's lock again
        if self.on_failure == "delete":
            self.log.error("setup failed after creating %s (%s): deleting it", handle.name, err)
        else:
            self.log.error("setup failed after creating %s (%s). %s", handle.name, err,
                           kept_message(handle))

    def on_kill(self) -> None:
        # Killed while waiting in the worker (not deferred): nothing downstream deletes it.
        # A kill is someone stopping the setup: the cluster goes, whatever on_failure says.
        if self._created is not None and not self._cleaning:
            self._cleaning = True
            h = self._created
            delete_killed(task_backend(h.backend, h.connection or self._connection), h,
                          self.task_id)
        elif self._creating:
            # Airflow calls this from its SIGTERM handler, in the thread that runs create, and
            # SIGKILLs 5 s later: raising here interrupts create, whose own undo (on any
            # BaseException) removes what it made so far. The task runner fails the task.
            self._creating = False
            raise AirflowTaskTerminated(
                f"setup {self.task_id} was killed while its cluster was being made: undone")


@contextlib.contextmanager
def _keeping(*, passes: tuple[type[BaseException], ...],
             before: Callable[[BaseException], None]) -> Iterator[None]:
    """``deleting_on_failure``'s counterpart for ``on_failure="keep"``: say, don't delete."""
    try:
        yield
    except passes:
        raise
    except BaseException as err:
        before(err)
        raise


def kept_message(handle: ClusterHandle) -> str:
    """What a kept cluster's log says: until when it stays, and the command that deletes it."""
    env = []
    if handle.instance and handle.instance != current_instance():
        env.append(f"EPHEMERAL_INSTANCE={handle.instance}")
    if handle.backend == "kubernetes" and handle.namespace:
        env.append(f"EPHEMERAL_K8S_NAMESPACE={handle.namespace}")
    command = " ".join([*env, "ephemeral", "down", handle.name, "--backend", handle.backend])
    reach = (f" (with the Kubernetes credentials of connection {handle.connection!r}, e.g. "
             "EPHEMERAL_KUBECONFIG)" if handle.backend == "kubernetes" and handle.connection
             else "")
    return (f"on_failure='keep': cluster {handle.name} is kept for debugging until its TTL "
            f"({handle.expires_at}), when the reaper deletes it. Delete it sooner with: "
            f"{command}{reach}")


class DeleteClusterOperator(BaseOperator):
    """Teardown: delete the clusters its setup made in this run, and wait until nothing of them
    is left.

    Its setup is the ``CreateClusterOperator`` it tears down (``as_teardown(setups=create)``):
    ``setup_task_id`` names it, and may be left out when the teardown has exactly one such
    setup. A name that is not one of its setups (a task group's prefix left off) fails the DAG's
    parsing where the setups are known, else the teardown, naming the ids it could mean. An
    unmapped teardown deletes the clusters of every map index of a mapped setup; a mapped one
    (``.partial().expand(cluster=create.output)``) those of its own map index.

    It finds the clusters by their owner labels, not only by XCom, so a setup killed between
    "created" and "XCom pushed" still gets its cluster deleted. Fails loudly, naming what is
    left, when deletion is incomplete. It reaches the clusters through the connection their
    handles record (``cluster``: the setup's output, one handle or, of a mapped setup, their
    list); ``conn_id``/``backend``/``kubernetes_conn_id`` are needed only without a handle,
    and must then be the setup's.
    """

    template_fields: Sequence[str] = ("cluster",)
    operator_extra_links = (RunReportLink(),)
    ui_color = "#fadbd8"

    def __init__(self, *, setup_task_id: str | None = None, cluster: Any = None,
                 backend: str | None = None, conn_id: str | None = None,
                 kubernetes_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.setup_task_id = setup_task_id
        self.cluster = cluster
        self.backend = backend
        self.conn_id = conn_id
        self.kubernetes_conn_id = kubernetes_conn_id

    def as_teardown(self, *, setups: Any = None,
                    on_failure_fail_dagrun: bool | None = None) -> DeleteClusterOperator:
        super().as_teardown(setups=setups, on_failure_fail_dagrun=on_failure_fail_dagrun)
        if self.setup_task_id is not None:  # the setups are known now: refused at parse
            self._setup_task(ValueError)
        return self

    def _cluster_setups(self) -> list[str]:
        """The ids of this teardown's setups in its DAG: the ``CreateClusterOperator`` tasks
        right upstream, those marked as setups (``as_teardown(setups=...)``) when any are."""
        upstream = [t for t in self.upstream_list if is_a(t, CreateClusterOperator)]
        marked = [t for t in upstream if t.is_setup]
        return sorted(t.task_id for t in marked or upstream)

    def _setup_task(self, error: type[Exception], *, running: bool = False) -> str:
        """The setup task whose clusters this teardown deletes, checked against the DAG; raises
        ``error`` naming the ids it could mean when the DAG does not bear it out. ``running``
        (execute): any ``CreateClusterOperator`` of the DAG named is taken, wired as a setup
        of this teardown or not, since refusing it there would leave its clusters running."""
        given = self.setup_task_id
        if not self.has_dag():  # nothing to check it against
            if given is None:
                raise error(f"{self.task_id}: give setup_task_id, the CreateClusterOperator "
                            "whose clusters this teardown deletes")
            return given
        setups = self._cluster_setups()
        if given is None:
            if len(setups) == 1:
                return setups[0]
            raise error(
                f"{self.task_id}: setup_task_id is not given and the teardown has "
                + (f"{len(setups)} cluster setups ({', '.join(setups)}): name the one whose "
                   "clusters it deletes" if setups else
                   "no CreateClusterOperator setup: wire it with "
                   "as_teardown(setups=create), or give setup_task_id"))
        dag = self.dag
        if given in setups or ((running or not setups) and dag.has_task(given)
                               and is_a(dag.get_task(given), CreateClusterOperator)):
            return given
        meant = setups or sorted(t.task_id for t in dag.tasks if is_a(t, CreateClusterOperator)
                                 and t.task_id.endswith("." + given))
        hint = (f" It could mean {' or '.join(map(repr, meant))} (a task group prefixes the ids "
                "of its tasks); setup_task_id may be left out when the teardown has one setup."
                if meant else "")
        raise error(f"{self.task_id}: setup_task_id={given!r} names no "
                    f"{'setup of this teardown' if setups else 'CreateClusterOperator task'} "
                    f"in DAG {dag.dag_id}: it would find no cluster to delete.{hint}")

    def _handles(self) -> list[ClusterHandle]:
        """The handles the teardown was given: none, one, or a mapped setup's list."""
        value = self.cluster
        if not value:
            return []
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            return [pointer(v) for v in value if v is not None]
        return [pointer(value)]

    def execute(self, context: Any) -> dict[str, Any]:
        from ephemeral.airflow.report import note_deleted, record_teardown, released
        from ephemeral.report.engines import engine_jobs

        started = time.time()
        setup = self._setup_task(AirflowFailException, running=True)
        handles: list[ClusterHandle] = []
        unusable: AirflowFailException | None = None
        try:
            handles = self._handles()
            for given in handles:
                made_through(self, given, setup)
        except AirflowFailException as err:  # the run's clusters still go, found by labels
            handles, unusable = [], err
        backend, instance = self._backend_of(handles, setup)
        # Whose a cluster is, the run's and the setup's labels prove, at any map index: Airflow
        # expands a mapped teardown over the handles its setup pushed, so teardown [0] gets
        # setup [1]'s when setup [0] pushed none.
        selector = owner_selector(context, setup, instance, any_map_index=True)
        try:
            listed = backend.list_owned(selector)
        except EphemeralError as err:  # e.g. a Role that cannot list one of the kinds
            # What it saw, and the handles' clusters, each looked up in its own kind below,
            # are deleted; then the teardown fails naming what it could not list.
            listed = err.found if isinstance(err, ListingIncomplete) else []
            unusable = AirflowFailException(
                f"cannot list the clusters {setup} made in this run: {err}")
        # What the backend records for this setup in this run; a handle only points (its
        # namespace, its ready time): it never adds a cluster the backend does not confirm.
        targets: dict[str, ClusterHandle] = {}
        gone: dict[str, ClusterHandle] = {}
        for handle in handles:
            try:
                record = next((h for h in listed if h.name == handle.name), None) \
                    or backend.owned(handle, selector)
            except EphemeralError as err:  # e.g. a namespace this identity cannot list
                record, unusable = None, AirflowFailException(
                    f"cannot look up {handle.name}, which the handle names: {err}")
            if record is not None:
                targets[handle.name] = with_setup_facts(record, handle)
            elif unusable is not None:
                pass  # said at the end, after the run's own clusters are gone
            elif released(context, handle) is not None:
                gone[handle.name] = handle  # deleted by its last job or the reaper: reported
            else:
                # Nothing of the run's records accounts for it: deleted behind Airflow's back,
                # not this run's, or a record the backend cannot read (then only `ephemeral
                # down` deletes it). Never deleted on the handle's word; never passed over
                # in silence either.
                unusable = AirflowFailException(
                    f"the handle names {handle.name}, which the {backend.name} backend does not "
                    f"record as a cluster {setup} made in this run, and no task of "
                    "the run deleted it: nothing of it was deleted. If it still exists (`ephemeral "
                    f"ls --all-instances`), it is not this run's, or its record is unreadable: "
                    f"`ephemeral down {handle.name}` deletes it by its processes' markers.")
        # Found by labels too (a setup killed before it pushed its handle): an unmapped
        # teardown's are every map index of its setup; a mapped one's, those its handles'
        # clusters have, or without a handle its own.
        index = map_index(context)
        indexes = None if index < 0 else {str(index)} if not handles else {
            t.labels.get(MAP_INDEX) for t in targets.values()}
        targets = {h.name: h for h in listed
                   if indexes is None or h.labels.get(MAP_INDEX) in indexes} | targets
        if not targets and not gone:
            self.log.info("no cluster of %s in this run: nothing to delete", setup)
        # A cluster its last job's task already deleted (delete_cluster_on_success): the
        # deletion below only makes sure nothing of it is left; the report keeps its moments.
        releases = {name: r for name, target in (targets | gone).items()
                    if (r := released(context, target)) is not None}
        # What ran on each cluster, asked of its engine while it is still there (run report).
        seen = {name: engine_jobs(backend, target) for name, target in targets.items()
                if name not in releases}
        failures: dict[str, str] = {}
        deleted: dict[str, float] = {}
        for name, target in sorted(targets.items()):
            self.log.info("%s %s", "making sure nothing is left of" if name in releases
                          else "deleting", name)
            try:
                backend.delete(target, wait=True)
                deleted[name] = time.time()
            except EphemeralError as err:  # keep going: every other cluster must still go
                failures[name] = f"incomplete: {err}"
                continue
            if name not in releases:
                note_deleted(context, target, started=started, deleted=deleted[name],
                             jobs=seen.get(name))
        for done in [*(targets[name] for name in deleted), *gone.values()]:
            deleted_by_teardown(done)
        # Never raises: the report and its link (a failed teardown links it too) must not hide
        # the deletion's outcome.
        record_teardown(context, setup_task_id=setup, targets=targets | gone,
                        engine_views=seen, started=started, deleted=deleted, failures=failures,
                        releases=releases, link_key=RunReportLink().xcom_key)
        if failures:
            raise AirflowException("teardown incomplete: " + "; ".join(
                f"{name}: {why}" for name, why in failures.items()))
        if unusable is not None:
            raise unusable
        return {"deleted": sorted(targets | gone)}

    def _backend_of(self, handles: list[ClusterHandle], setup: str
                    ) -> tuple[ClusterBackend, str]:
        """The backend the clusters live on and the deployment instance that owns them: the
        handles' own (backend, connection, instance; deleting by handle uses its namespace),
        where the setup pushed them. A teardown configured otherwise fails loudly rather than
        finding nothing there and succeeding while the clusters run on."""
        if not handles:  # no usable handle: the setup's own target, as the DAG gives it
            with settings_refused():
                target = resolve_target(*self._setup_args(setup))
            return target.backend, target.instance
        handle = handles[0]
        problems = elsewhere(handle, self.backend, self.conn_id, self.kubernetes_conn_id)
        instance = instance_of(self.conn_id or handle.connection)
        if other := foreign_instance(handle, self.conn_id):
            problems.append(other)
        if len({(h.backend, h.connection, h.instance) for h in handles}) > 1:
            problems.append("its handles name different backends, connections or instances "
                            "(one teardown per map index: .partial().expand(cluster=...))")
        if problems:
            raise AirflowFailException(f"teardown of {handle.name} is configured for "
                                       + "; ".join(problems) + ": it would not find the cluster. "
                                       "Give the teardown the setup's backend and connection.")
        with settings_refused():
            return (task_backend(handle.backend, cluster_connection(handle, self)),
                    handle.instance or instance)

    def _setup_args(self, setup: str) -> tuple[str | None, str | None, str | None]:
        """(backend, conn_id, kubernetes_conn_id): this teardown's own when it names any,
        else those of its setup task in the DAG (where the run's clusters were made)."""
        mine = (self.backend, self.conn_id, self.kubernetes_conn_id)
        if any(mine):
            return mine
        return setup_args(self, setup) or mine


class RayJobOperator(JobLineageMixin, BaseOperator):
    """Run ``entrypoint`` as a Ray job on the cluster, wait for it (in the triggerer when
    ``deferrable``, by default ``[operators] default_deferrable``, else in the worker), stream
    its logs into the task log and push its result (job id, status, the job's own JSON result
    line).

    ``entrypoint`` is a command line, or an argv list whose elements are templated one by one
    and quoted (``shlex.join``): the form for any value from XCom, an Asset event or a param,
    since Ray runs the entrypoint with a shell.

    A retry attaches to the job of an earlier try while it runs (job ids are deterministic per
    cluster, task and try) instead of submitting it twice. Killing the task stops the job.
    Every call authenticates with the cluster's token, which the handle's backend and
    connection (or ``backend``/``conn_id``/``kubernetes_conn_id``) give this process and the
    triggerer on demand.

    ``delete_cluster_on_success=True`` on the cluster's last job deletes the cluster the moment
    the job succeeds instead of when the teardown is scheduled (``ephemeral.airflow.release``;
    refused, before submitting, on a task that is not the cluster's last user).
    ``poll_interval`` caps the pause between status checks of the job (default: 0.25 s waiting
    in the worker, the backend's ``probe_interval`` in the triggerer): a job that ended unseen
    keeps its cluster reserved meanwhile.
    """

    template_fields: Sequence[str] = ("cluster", "entrypoint", "working_dir", "runtime_env",
                                      "job_timeout")
    template_fields_renderers = {"runtime_env": "json"}
    operator_extra_links = (RayDashboardLink(),)
    ui_color = "#d6eaf8"

    def __init__(self, *, cluster: Any, entrypoint: str | Sequence[Any],
                 working_dir: str | None = None, runtime_env: dict[str, Any] | None = None,
                 job_timeout: float | str | None = None, deferrable: bool | None = None,
                 poll_interval: float | None = None, delete_cluster_on_success: bool = False,
                 backend: str | None = None, conn_id: str | None = None,
                 kubernetes_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster
        self.delete_cluster_on_success = delete_cluster_on_success
        self.backend = backend
        self.conn_id = conn_id
        self.kubernetes_conn_id = kubernetes_conn_id
        self.entrypoint = entrypoint
        self.working_dir = working_dir
        self.runtime_env = runtime_env
        if isinstance(runtime_env, Mapping) and isinstance(working_dir, str):
            # Both given as values: refused at parse, before the setup makes a cluster
            # (templates and XComArgs are checked in execute, once rendered).
            from ephemeral.jobs.runtime_env import with_working_dir

            try:
                with_working_dir(runtime_env, working_dir,
                                 f"RayJobOperator(task_id={self.task_id!r})")
            except JobSubmissionFailed as err:
                raise ValueError(str(err)) from err
        self.job_timeout = job_timeout
        self.deferrable = default_deferrable(deferrable)
        self.poll_interval = poll_interval_arg(self, poll_interval)
        self._job: tuple[ClusterHandle, str] | None = None

    def _jobs(self, handle: ClusterHandle, backend: ClusterBackend | None = None) -> RayJobs:
        try:
            return ray_jobs_for(handle, backend or cluster_backend(handle, self))
        except JobSubmissionFailed as err:
            raise AirflowFailException(str(err)) from err

    @property
    def _timeout(self) -> float | None:
        return job_timeout_seconds(self.job_timeout)

    def execute(self, context: Any) -> dict[str, Any]:
        from ephemeral.jobs.runtime_env import (
            check_submitted,
            command_line,
            job_runtime_env,
            with_working_dir,
        )

        check_rendered(self, runtime_env=dict)
        try:  # an argv list (rendered word by word) becomes one quoted command line
            self.entrypoint = command_line(self.entrypoint)
        except JobSubmissionFailed as err:
            raise AirflowFailException(str(err)) from err
        given = pointer(self.cluster)
        _within_ttl(given, self._timeout)
        if self.delete_cluster_on_success and (
                earlier := before_job(self, context, given)) is not None:
            return earlier
        backend, handle = job_target(self, context, given)  # once: it may look up a connection
        jobs = self._jobs(handle, backend)
        try:  # the cluster's default pip, then ours; bad input: a retry cannot help
            env = job_runtime_env(handle, self.runtime_env)
            # Before the entrypoint is logged: no credentials in it nor in working_dir.
            where = f"task {self.task_id}"
            check_submitted(with_working_dir(env, self.working_dir, where), where,
                            self.entrypoint)
        except JobSubmissionFailed as err:
            raise AirflowFailException(str(err)) from err
        ti = context["ti"]
        ti.xcom_push(key=RayDashboardLink().xcom_key, value=handle.endpoints.dashboard)
        try:
            jid, attached = jobs.submit_or_attach(
                self.entrypoint, task_key=task_key(context), attempt=int(ti.try_number or 1),
                run_stamp=run_stamp(context),
                working_dir=self.working_dir, runtime_env=env)
        except JobIdTaken as err:  # a retry finds the same job
            raise AirflowFailException(str(err)) from err
        except EphemeralError as err:
            raise AirflowException(str(err)) from err
        self._job = (handle, jid)
        self.log.info("%s Ray job %s on %s: %s", "attached to" if attached else "submitted", jid,
                      handle.name, self.entrypoint)
        if self.deferrable:
            poll = self.poll_interval or backend.probe_interval
            by = released_by(context) if self.delete_cluster_on_success else None
            self.defer(trigger=RayJobTrigger(handle=handle.model_dump(mode="json"),
                                             backend=handle.backend,
                                             conn_id=cluster_connection(handle, self),
                                             job_id=jid, timeout=self._timeout,
                                             poll_interval=poll, release=by,
                                             settles_at=settles_at()),
                       method_name="execute_complete",
                       timeout=defer_timeout(handle, self._timeout))
        try:
            result = jobs.follow(jid, sink=lambda line: self.log.info("[%s] %s", jid, line),
                                 timeout=self._timeout, poll_interval=self.poll_interval)
        except EphemeralError as err:
            raise AirflowException(str(err)) from err
        return self._release(context, handle, result, backend)

    def _release(self, context: Any, handle: ClusterHandle, result: JobResult,
                 backend: ClusterBackend) -> dict[str, Any]:
        done = result.model_dump(mode="json")
        fits_xcom(self, done, JOB_RESULT_TOO_LARGE)
        if self.delete_cluster_on_success:
            release(backend, handle, released_by(context), done)
        return done

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("result"):  # the trigger read it, then deleted the cluster (released)
            result = JobResult.model_validate(event["result"])
            self.log.info("Ray job %s succeeded: %s; %s", result.job_id, result.result,
                          event.get("released") or "its cluster is left to the teardown")
            done = result.model_dump(mode="json")
            fits_xcom(self, done, JOB_RESULT_TOO_LARGE)
            return done
        jid = str(event["job_id"])
        if event["status"] != JobStatus.SUCCEEDED.value:
            logs = ""
            if event["status"] != "ERROR":  # ERROR: the cluster is lost, its logs with it
                try:
                    backend, h = job_target(self, context, pointer(self.cluster))
                    logs = self._jobs(h, backend).logs(jid)
                except AirflowFailException as err:  # the job's own end is the error to raise
                    logs = f"(none: {err})"
            raise AirflowException(f"Ray job {jid} ended {event['status']} "
                                   f"{event.get('message', '')}\nlast log lines:\n{tail(logs)}")
        backend, h = job_target(self, context, pointer(self.cluster))
        jobs = self._jobs(h, backend)
        result = jobs.succeeded_result(jid)
        self.log.info("Ray job %s succeeded: %s", jid, result.result)
        return self._release(context, h, result, backend)

    def on_kill(self) -> None:
        if self._job:
            handle, jid = self._job
            self._jobs(handle).stop(jid)


def __getattr__(name: str) -> Any:
    # The Spark operator moved to ephemeral.airflow.spark_submit under a name of its own: the
    # Spark provider's SparkSubmitOperator can be imported beside it.
    if name == "SparkSubmitOperator":
        from airflow.exceptions import AirflowProviderDeprecationWarning

        from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

        warnings.warn("ephemeral.airflow.operators.SparkSubmitOperator is deprecated: use "
                      "ephemeral.airflow.spark_submit.EphemeralSparkSubmitOperator",
                      AirflowProviderDeprecationWarning, stacklevel=2)
        return EphemeralSparkSubmitOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
