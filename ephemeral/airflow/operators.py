"""Operators: create a cluster (setup), delete it (teardown), run Ray jobs and Spark apps on it.

Wiring, with the cluster's lifetime bounded by setup and teardown::

    create = CreateClusterOperator(task_id="create_ray", spec="ray/train-gpu@1")
    train = RayJobOperator(task_id="train", cluster=create.output, entrypoint="python t.py")
    delete = DeleteClusterOperator(task_id="delete_ray", setup_task_id="create_ray",
                                   cluster=create.output)
    create >> train >> delete.as_teardown(setups=create)
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from ephemeral.airflow.backends import task_backend
from ephemeral.airflow.context import cluster_identity, owner_selector, task_key
from ephemeral.airflow.lineage import JobLineageMixin
from ephemeral.airflow.links import RayDashboardLink, RunReportLink, SparkMasterLink
from ephemeral.airflow.triggers import ClusterReadyTrigger, RayJobTrigger
from ephemeral.backends import ClusterBackend, ClusterHandle
from ephemeral.backends.readiness import Readiness
from ephemeral.errors import EphemeralError, JobSubmissionFailed, SpecError
from ephemeral.jobs.ray_jobs import RayJobs, ray_jobs_for
from ephemeral.jobs.results import JobResult, JobStatus, parse_result_line, tail
from ephemeral.lifecycle import delete_after_failure, deleting_on_failure
from ephemeral.specs.identity import current_instance, parse_utc

DAGRUN_TIMEOUT_WARNING = (
    "DAG {dag_id!r} sets dagrun_timeout and creates ephemeral clusters: when it fires, Airflow "
    "3.3 marks unfinished teardowns SKIPPED and the cluster leaks until the reaper finds it. "
    "Use execution_timeout on the work tasks instead.")


class DagrunTimeoutWarning(UserWarning):
    pass


def warn_if_dagrun_timeout(op: BaseOperator) -> None:
    dag = getattr(op, "dag", None) if op.has_dag() else None
    if dag is not None and dag.dagrun_timeout is not None:
        warnings.warn(DAGRUN_TIMEOUT_WARNING.format(dag_id=dag.dag_id), DagrunTimeoutWarning,
                      stacklevel=3)


def _within_ttl(handle: ClusterHandle, timeout: float | None) -> None:
    """A job timeout past the cluster's expiry is refused before submitting: the reaper would
    delete the cluster under the running job."""
    from ephemeral.adhoc import check_timeout_within_ttl

    try:
        check_timeout_within_ttl(handle, timeout, field="job_timeout")
    except SpecError as err:
        raise AirflowFailException(str(err)) from err


def _no_master(handle: ClusterHandle) -> str:
    if handle.engine == "spark":  # a spark-operator SparkConnect: Connect only
        return (f"cluster {handle.name} has no Spark master (a spark-operator SparkConnect): "
                "use Spark Connect (ephemeral.airflow.spark.spark_connect), or a standalone "
                "cluster (kubernetesMode: standalone) for spark-submit")
    return f"cluster {handle.name} is not a Spark cluster"


def _handle(value: Any) -> ClusterHandle:
    if isinstance(value, ClusterHandle):
        return value
    if not isinstance(value, dict):
        raise AirflowFailException(f"expected a cluster handle (the setup task's XCom), got "
                                   f"{type(value).__name__}")
    return ClusterHandle.model_validate(value)


class CreateClusterOperator(BaseOperator):
    """Setup: create a cluster from a versioned spec and wait, deferred, until it is usable.

    A retry adopts the cluster its earlier try made (the identity is derived from the run, the
    task and the map index). On any failure after creation started it deletes the cluster
    before failing: Airflow never runs the teardown of a failed setup. Pushes the handle.
    """

    template_fields: Sequence[str] = ("spec", "profile", "overrides")
    template_fields_renderers = {"overrides": "json"}
    operator_extra_links = (RayDashboardLink(), SparkMasterLink())
    ui_color = "#d5f5e3"

    def __init__(self, *, spec: str, profile: str | None = None,
                 overrides: dict[str, Any] | None = None, backend: str | None = None,
                 kubernetes_conn_id: str | None = None,
                 ready_timeout: float = 900.0, poll_interval: float = 2.0,
                 deferrable: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.profile = profile
        self.overrides = overrides
        self.backend = backend
        self.kubernetes_conn_id = kubernetes_conn_id
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self._created: ClusterHandle | None = None
        self._cleaning = False
        warn_if_dagrun_timeout(self)

    def execute(self, context: Any) -> dict[str, Any]:
        from ephemeral.specs import resolve

        try:
            # A templated profile of a form's null param renders as the text "None".
            profile = None if self.profile in (None, "", "None") else self.profile
            spec = resolve(self.spec, profile, self.overrides or None)
        except SpecError as err:  # bad input: nothing was created, and a retry cannot help
            raise AirflowFailException(str(err)) from err
        backend = self._backend()
        identity = cluster_identity(context, spec.spec.name)
        self.log.info("creating %s from %s (hash %s)", identity.name, spec.label(), spec.hash)
        asked = datetime.now(UTC).replace(microsecond=0)
        try:
            handle = backend.create(spec, identity=identity)
        except SpecError as err:
            raise AirflowFailException(str(err)) from err
        # The teardown and the trigger reach the cluster through the same connection.
        handle = self._created = handle.model_copy(update={"connection": self.kubernetes_conn_id})
        if parse_utc(handle.created_at) < asked:
            self.log.info("adopted %s, created at %s by an earlier try", handle.name,
                          handle.created_at)
        with deleting_on_failure(backend, handle, passes=(TaskDeferred,),
                                 before=lambda err: self._cleanup_starts(handle, err)):
            self._push_links(context, handle)
            wait = Readiness.within(backend, handle, timeout=self.ready_timeout,
                                    poll_interval=self.poll_interval)
            status = wait.step()
            if not status.ready and self.deferrable:
                self.defer(
                    trigger=ClusterReadyTrigger(backend=backend.name,
                                                kubernetes_conn_id=self.kubernetes_conn_id,
                                                handle=handle.model_dump(mode="json"),
                                                deadline=wait.deadline,
                                                poll_interval=self.poll_interval),
                    method_name="execute_complete",
                )
            if not status.ready:
                status = wait.wait()
            return self._ready(handle, status.message)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        h = ClusterHandle.model_validate(event["handle"])
        if event.get("status") == "ready":
            return self._ready(h, str(event.get("message", "")))
        error = AirflowException(f"cluster {h.name} did not become ready "
                                 f"({event.get('status')}): {event.get('message')}")
        self._cleanup_starts(h, error)
        delete_after_failure(self._backend(), h, error)
        raise error

    def _ready(self, handle: ClusterHandle, message: str) -> dict[str, Any]:
        # When it became usable, for the run report's "starting" share of the cluster's life.
        handle = handle.model_copy(update={"ready_ts": round(time.time(), 3)})
        self.log.info("cluster %s ready: %s; endpoints %s", handle.name, message,
                      handle.endpoints.model_dump(exclude_none=True))
        return handle.model_dump(mode="json")

    def _backend(self) -> ClusterBackend:
        return task_backend(self.backend, self.kubernetes_conn_id)

    def _push_links(self, context: Any, handle: ClusterHandle) -> None:
        # Both keys, the other engine's empty: Airflow resolves every link of the operator
        # when the task ends and logs an error for each key it cannot find.
        ti = context["ti"]
        ti.xcom_push(key=RayDashboardLink().xcom_key, value=handle.endpoints.dashboard or "")
        ti.xcom_push(key=SparkMasterLink().xcom_key, value=handle.endpoints.spark_ui or "")

    def _cleanup_starts(self, handle: ClusterHandle, err: BaseException) -> None:
        self._cleaning = True  # on_kill must not try to take the cluster's lock again
        self.log.error("setup failed after creating %s (%s): deleting it", handle.name, err)

    def on_kill(self) -> None:
        # Killed while waiting in the worker (not deferred): nothing downstream deletes it.
        if self._created is not None and not self._cleaning:
            self._backend().delete(self._created, wait=True)


class DeleteClusterOperator(BaseOperator):
    """Teardown: delete the cluster of ``setup_task_id`` in this run and map index, and wait
    until nothing of it is left.

    It finds the cluster by its owner labels, not only by XCom, so a setup killed between
    "created" and "XCom pushed" still gets its cluster deleted. Fails loudly, naming what is
    left, when deletion is incomplete.
    """

    template_fields: Sequence[str] = ("cluster",)
    operator_extra_links = (RunReportLink(),)
    ui_color = "#fadbd8"

    def __init__(self, *, setup_task_id: str, cluster: Any = None, backend: str | None = None,
                 kubernetes_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.setup_task_id = setup_task_id
        self.cluster = cluster
        self.backend = backend
        self.kubernetes_conn_id = kubernetes_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from ephemeral.airflow.report import record_teardown
        from ephemeral.report.engines import engine_jobs

        started = time.time()
        handle = _handle(self.cluster) if self.cluster else None
        backend = self._backend_of(handle)
        # By handle where there is one: it carries the cluster's own namespace.
        targets = {h.name: h for h in backend.list_owned(
            owner_selector(context, self.setup_task_id))}
        if handle:
            targets[handle.name] = handle
        if not targets:
            self.log.info("no cluster of %s in this run: nothing to delete", self.setup_task_id)
        # What ran on each cluster, asked of its engine while it is still there (run report).
        seen = {name: engine_jobs(backend, target) for name, target in targets.items()}
        failures: dict[str, str] = {}
        deleted: dict[str, float] = {}
        for name, target in sorted(targets.items()):
            self.log.info("deleting %s", name)
            try:
                backend.delete(target, wait=True)
                deleted[name] = time.time()
            except EphemeralError as err:  # keep going: every other cluster must still go
                failures[name] = f"incomplete: {err}"
        # Never raises: the report and its link (a failed teardown links it too) must not hide
        # the deletion's outcome.
        record_teardown(context, setup_task_id=self.setup_task_id, targets=targets,
                        engine_views=seen, started=started, deleted=deleted, failures=failures,
                        link_key=RunReportLink().xcom_key)
        if failures:
            raise AirflowException("teardown incomplete: " + "; ".join(
                f"{name}: {why}" for name, why in failures.items()))
        return {"deleted": sorted(targets)}

    def _backend_of(self, handle: ClusterHandle | None) -> ClusterBackend:
        """The backend the cluster lives on: the handle's own (backend, connection, deployment;
        deleting by handle uses its namespace), where the setup pushed one. A teardown configured otherwise fails loudly
        rather than finding nothing there and succeeding while the cluster runs on."""
        if handle is None:
            return task_backend(self.backend, self.kubernetes_conn_id)
        problems = []
        if self.backend and self.backend != handle.backend:
            problems.append(f"backend {self.backend!r} but the cluster is on {handle.backend!r}")
        if self.kubernetes_conn_id and handle.connection and (
                self.kubernetes_conn_id != handle.connection):
            problems.append(f"kubernetes_conn_id {self.kubernetes_conn_id!r} but the cluster was "
                            f"made through {handle.connection!r}")
        if handle.instance and handle.instance != current_instance():
            problems.append(f"deployment instance {current_instance()!r} but the cluster belongs "
                            f"to {handle.instance!r} (EPHEMERAL_INSTANCE differs between the "
                            "setup and the teardown)")
        if problems:
            raise AirflowFailException(f"teardown of {handle.name} is configured for "
                                       + "; ".join(problems) + ": it would not find the cluster. "
                                       "Give the teardown the setup's backend and connection.")
        return task_backend(handle.backend, handle.connection or self.kubernetes_conn_id)


class RayJobOperator(JobLineageMixin, BaseOperator):
    """Run ``entrypoint`` as a Ray job on the cluster, wait deferred, stream its logs into the
    task log and push its result (job id, status, the job's own JSON result line).

    A retry attaches to the job of an earlier try while it runs (job ids are deterministic per
    cluster, task and try) instead of submitting it twice. Killing the task stops the job.
    Every call authenticates with the cluster's token, which the handle's backend (or
    ``backend``/``kubernetes_conn_id``) gives this process and the triggerer on demand.
    """

    template_fields: Sequence[str] = ("cluster", "entrypoint", "working_dir", "runtime_env",
                                      "job_timeout")
    template_fields_renderers = {"runtime_env": "json"}
    operator_extra_links = (RayDashboardLink(),)
    ui_color = "#d6eaf8"

    def __init__(self, *, cluster: Any, entrypoint: str, working_dir: str | None = None,
                 runtime_env: dict[str, Any] | None = None,
                 job_timeout: float | str | None = None, deferrable: bool = True,
                 poll_interval: float = 1.0, backend: str | None = None,
                 kubernetes_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster
        self.backend = backend
        self.kubernetes_conn_id = kubernetes_conn_id
        self.entrypoint = entrypoint
        self.working_dir = working_dir
        self.runtime_env = runtime_env
        self.job_timeout = job_timeout
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self._job: tuple[ClusterHandle, str] | None = None

    def _backend_name(self, handle: ClusterHandle) -> str:
        return self.backend or handle.backend

    def _jobs(self, handle: ClusterHandle) -> RayJobs:
        try:
            return ray_jobs_for(handle, task_backend(self._backend_name(handle),
                                                     self.kubernetes_conn_id))
        except JobSubmissionFailed as err:
            raise AirflowFailException(str(err)) from err

    @property
    def _timeout(self) -> float | None:
        return None if self.job_timeout in (None, "", "None") else float(self.job_timeout)

    def execute(self, context: Any) -> dict[str, Any]:
        from ephemeral.jobs.runtime_env import job_runtime_env

        handle = _handle(self.cluster)
        _within_ttl(handle, self._timeout)
        jobs = self._jobs(handle)
        env = job_runtime_env(handle, self.runtime_env)  # the cluster's default pip, then ours
        ti = context["ti"]
        ti.xcom_push(key=RayDashboardLink().xcom_key, value=handle.endpoints.dashboard)
        try:
            jid, attached = jobs.submit_or_attach(
                self.entrypoint, task_key=task_key(context), attempt=int(ti.try_number or 1),
                working_dir=self.working_dir, runtime_env=env)
        except EphemeralError as err:
            raise AirflowException(str(err)) from err
        self._job = (handle, jid)
        self.log.info("%s Ray job %s on %s: %s", "attached to" if attached else "submitted", jid,
                      handle.name, self.entrypoint)
        if self.deferrable:
            self.defer(trigger=RayJobTrigger(handle=handle.model_dump(mode="json"),
                                             backend=self._backend_name(handle),
                                             kubernetes_conn_id=self.kubernetes_conn_id,
                                             job_id=jid, timeout=self._timeout,
                                             poll_interval=self.poll_interval),
                       method_name="execute_complete")
        try:
            result = jobs.follow(jid, sink=lambda line: self.log.info("[%s] %s", jid, line),
                                 timeout=self._timeout)
        except EphemeralError as err:
            raise AirflowException(str(err)) from err
        return result.model_dump(mode="json")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        h = _handle(self.cluster)
        jobs = self._jobs(h)
        jid = str(event["job_id"])
        logs = jobs.logs(jid) if event["status"] != "ERROR" else ""
        if event["status"] != JobStatus.SUCCEEDED.value:
            raise AirflowException(f"Ray job {jid} ended {event['status']} "
                                   f"{event.get('message', '')}\nlast log lines:\n{tail(logs)}")
        info = jobs.client.get_job_info(jid)
        seconds = ((info.end_time or 0) - (info.start_time or 0)) / 1000
        result = JobResult(job_id=jid, cluster=h.name, engine="ray",
                           status=JobStatus.SUCCEEDED, seconds=round(seconds, 3),
                           result=parse_result_line(logs, jid))
        self.log.info("Ray job %s succeeded: %s", jid, result.result)
        return result.model_dump(mode="json")

    def on_kill(self) -> None:
        if self._job:
            handle, jid = self._job
            self._jobs(handle).stop(jid)


class SparkSubmitOperator(JobLineageMixin, BaseOperator):
    """Run a Spark application on the cluster's master (driver in this task, executors on the
    workers), streaming the driver's output into the task log; push the job's result."""

    template_fields: Sequence[str] = ("cluster", "application", "application_args", "conf")
    operator_extra_links = (SparkMasterLink(),)
    ui_color = "#fdebd0"

    def __init__(self, *, cluster: Any, application: str,
                 application_args: Sequence[str] = (), conf: dict[str, str] | None = None,
                 job_timeout: float | None = None, backend: str | None = None,
                 kubernetes_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster
        self.backend = backend
        self.kubernetes_conn_id = kubernetes_conn_id
        self.application = application
        self.application_args = list(application_args)
        self.conf = conf
        self.job_timeout = job_timeout
        self._driver_sid: int | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        from ephemeral.jobs import artifacts
        from ephemeral.jobs.spark_jobs import spark_auth_for, spark_submit

        handle = _handle(self.cluster)
        if not handle.endpoints.spark_master:
            raise AirflowFailException(_no_master(handle))
        _within_ttl(handle, self.job_timeout)
        context["ti"].xcom_push(key=SparkMasterLink().xcom_key, value=handle.endpoints.spark_ui)
        try:
            # The driver authenticates with the cluster's secret (spark.authenticate).
            auth = spark_auth_for(handle, task_backend(self.backend or handle.backend,
                                                       self.kubernetes_conn_id))
            result = spark_submit(
                handle.endpoints.spark_master, self.application,
                [str(a) for a in self.application_args], conf=self.conf, cluster=handle.name,
                env={"EPHEMERAL_ARTIFACT_ROOT": artifacts.root()}, timeout=self.job_timeout,
                sink=self.log.info, on_start=self._driver_started, auth=auth)
        except EphemeralError as err:
            raise AirflowException(str(err)) from err
        finally:
            self._driver_sid = None
        return result.model_dump(mode="json")

    def _driver_started(self, sid: int) -> None:
        self._driver_sid = sid

    def on_kill(self) -> None:
        # Airflow only calls on_kill on SIGTERM; the driver runs in its own session.
        if self._driver_sid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._driver_sid, signal.SIGTERM)
