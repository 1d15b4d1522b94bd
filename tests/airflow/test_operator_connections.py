"""Operators with ``conn_id``: the ephemeral connection's instance owns the cluster through the
setup, its trigger and the teardown, and the handle's ``connection`` brings the triggerer and
the teardown to the same backend; ``on_failure``; ``deferrable``'s default. Against the strict
API mock (its KubeRay), with the operators' own execute methods and a real trigger run."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.kubernetes.apiserver import ApiServer, Operator, RayScenario, WebEndpoints
from tests.kubernetes.manifest_validation import validate_manifest

NAMESPACE = "conn-test"
SMALL_RAY = {"workers": {"replicas": 1}}


class Stack:
    def __init__(self, server: ApiServer, operator: Operator) -> None:
        self.server = server
        self.operator = operator

    def rayclusters(self) -> list[dict[str, Any]]:
        return self.server.store.list("rayclusters", NAMESPACE)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: str) -> Iterator[Stack]:
    server = ApiServer(validate=validate_manifest, namespace="elsewhere", token="tok-c1").start()
    operator = Operator(server.store).start()
    web = WebEndpoints(server.store, server.dashboards).start()
    try:
        kubeconfig = tmp_path / "kubeconfig.yaml"
        server.kubeconfig(kubeconfig)
        for conn_id, conn in {
            "k8s": {"conn_type": "kubernetes", "extra": {
                "kube_config_path": str(kubeconfig), "namespace": "elsewhere",
                "ephemeral_endpoint_mode": "ingress",
                "ephemeral_ingress_url_template": web.url_template}},
            "eph": {"conn_type": "ephemeral", "extra": {
                "namespace": NAMESPACE, "instance": "staging", "kubernetes_conn_id": "k8s"}},
        }.items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")  # the deployment's: not the clusters'
        yield Stack(server, operator)
    finally:
        web.stop()
        operator.stop()
        server.stop()


def context(task_id: str, run_id: str = "manual__1") -> dict[str, Any]:
    ti = SimpleNamespace(task_id=task_id, map_index=-1, try_number=1,
                         xcom_push=lambda key, value: None)
    return {"dag": SimpleNamespace(dag_id="conn_dag"), "run_id": run_id, "ti": ti}


def first_event(trigger: Any) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(run())


def test_the_connection_owns_the_cluster_from_setup_through_trigger_to_teardown(
        stack: Stack) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator
    from ephemeral.airflow.triggers import ClusterReadyTrigger

    # Held until the setup has deferred: not ready at its first probe, however slow the
    # machine (a delay raced a loaded CI runner's create).
    stack.operator.paused = True
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", overrides=SMALL_RAY,
                                   conn_id="eph", deferrable=True, poll_interval=0.05)
    with pytest.raises(TaskDeferred) as deferred:
        create.execute(context("create"))
    stack.operator.paused = False
    [cluster] = stack.rayclusters()  # in the connection's namespace, owned by its instance
    assert cluster["metadata"]["labels"]["ephemeral.dev/instance"] == "staging"
    path, kwargs = deferred.value.trigger.serialize()
    assert path == "ephemeral.airflow.triggers.ClusterReadyTrigger"
    assert kwargs["conn_id"] == "eph"  # the id only: the triggerer looks it up again
    # It holds its event until the executor's report of this deferral has reached the
    # scheduler (ephemeral.airflow.settle): the worker's wake-up interval plus a margin.
    assert 0 < kwargs["settles_at"] - time.time() <= 5.0 + 2.0
    event = first_event(ClusterReadyTrigger(**kwargs))
    assert event["status"] == "ready", event
    handle = create.execute_complete(context("create"), event)
    assert handle["connection"] == "eph"
    assert handle["namespace"] == NAMESPACE
    # A retry adopts it: the same identity, the connection's instance.
    again = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", overrides=SMALL_RAY,
                                  conn_id="eph", deferrable=False)
    assert again.execute(context("create"))["name"] == handle["name"]
    # The teardown, given only the handle, reaches it through the handle's connection.
    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create", cluster=handle)
    assert delete.execute(context("delete")) == {"deleted": [handle["name"]]}
    assert stack.rayclusters() == []


def test_a_teardown_without_handle_finds_the_cluster_by_the_connections_instance(
        stack: Stack) -> None:
    from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator

    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", overrides=SMALL_RAY,
                                   conn_id="eph", deferrable=False)
    name = create.execute(context("create"))["name"]
    # With the deployment's instance (prod) nothing of this run is found...
    blind = DeleteClusterOperator(task_id="delete", setup_task_id="create",
                                  kubernetes_conn_id="k8s")
    assert blind.execute(context("delete")) == {"deleted": []}
    # ...with the setup's connection (instance staging, its namespace) it is.
    delete = DeleteClusterOperator(task_id="delete", setup_task_id="create", conn_id="eph")
    assert delete.execute(context("delete")) == {"deleted": [name]}
    assert stack.rayclusters() == []


def test_a_teardown_naming_another_connection_than_the_handles_fails_loudly(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator

    handle = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", overrides=SMALL_RAY,
                                   conn_id="eph", deferrable=False).execute(context("create"))
    # The ephemeral connection's own kubernetes connection is the same connection...
    same = DeleteClusterOperator(task_id="delete", setup_task_id="create", cluster=handle,
                                 kubernetes_conn_id="k8s")
    assert same.execute(context("delete")) == {"deleted": [handle["name"]]}
    # ...another one is not.
    monkeypatch.setenv("AIRFLOW_CONN_K8S_PROD", json.dumps({"conn_type": "kubernetes"}))
    other = DeleteClusterOperator(task_id="delete", setup_task_id="create", cluster=handle,
                                  kubernetes_conn_id="k8s_prod")
    with pytest.raises(AirflowFailException, match="made through 'eph'"):
        other.execute(context("delete"))
    # A job task so configured fails too, before submitting anything anywhere (the Spark
    # operator shares the rule: operators.cluster_backend).
    from ephemeral.airflow.operators import RayJobOperator

    job = RayJobOperator(task_id="job", cluster=handle, entrypoint="python -V",
                         kubernetes_conn_id="k8s_prod", deferrable=False)
    with pytest.raises(AirflowFailException,
                       match="job is configured for kubernetes_conn_id 'k8s_prod'"):
        job.execute(context("job"))


def test_a_handle_edited_to_another_connection_of_this_airflow_points_nothing_there(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another connection of this Airflow (another team's namespace, another deployment's
    instance) is where an edited handle's ``connection`` would send the teardown and the job's
    look-ups; with scheduled run ids the same in every deployment, the other side's cluster of
    this DAG, run and setup would match. The DAG says which connection its setup uses."""
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.operators import (
        CreateClusterOperator,
        DeleteClusterOperator,
        RayJobOperator,
    )

    other = {"conn_type": "ephemeral", "extra": {"namespace": "team-b", "instance": "prod",
                                                 "kubernetes_conn_id": "k8s"}}
    monkeypatch.setenv("AIRFLOW_CONN_OTHER", json.dumps(other))
    with DAG("conn_dag", schedule=None):
        create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu",
                                       overrides=SMALL_RAY, conn_id="eph", deferrable=False)
        job = RayJobOperator(task_id="job", cluster=create.output, entrypoint="python -V",
                             deferrable=False)
        delete = DeleteClusterOperator(task_id="delete", setup_task_id="create",
                                       cluster=create.output)
    handle = create.execute(context("create"))
    edited = handle | {"connection": "other",
                       "labels": handle["labels"] | {"ephemeral.dev/instance": "prod"}}
    job.cluster = edited
    with pytest.raises(AirflowFailException, match="connection 'other' where create says 'eph'"):
        job.execute(context("job"))
    # A setup the DAG does not have is no setup of this DAG's.
    job.cluster = handle | {"annotations": handle["annotations"]
                            | {"ephemeral.dev/task-id": "nowhere"}}
    with pytest.raises(AirflowFailException, match="setup task 'nowhere', which DAG conn_dag"):
        job.execute(context("job"))
    assert len(stack.rayclusters()) == 1
    # The teardown deletes the run's cluster where its setup made it, then fails naming why.
    delete.cluster = edited
    with pytest.raises(AirflowFailException, match="connection 'other' where create says 'eph'"):
        delete.execute(context("delete"))
    assert stack.rayclusters() == []


# -- on_failure -----------------------------------------------------------------------------

def test_an_unknown_cleanup_policy_fails_at_parse_time() -> None:
    from ephemeral.airflow.operators import CreateClusterOperator

    with pytest.raises(ValueError, match=r"on_failure='retain' is not one of 'delete'"):
        CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", on_failure="retain")


def failing_setup(stack: Stack, **kwargs: Any) -> tuple[Any, str]:
    """A setup whose cluster never becomes ready (ImagePullBackOff) within its timeout."""
    from airflow.sdk.exceptions import AirflowException

    from ephemeral.airflow.operators import CreateClusterOperator
    from ephemeral.errors import ReadinessTimeout

    stack.operator.ray_scenario = RayScenario.IMAGE_PULL
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", overrides=SMALL_RAY,
                                   conn_id="eph", deferrable=False, ready_timeout=1.0,
                                   poll_interval=0.05, **kwargs)
    logged: list[str] = []
    create.log.error = lambda msg, *args: logged.append(msg % args)  # type: ignore[method-assign]
    with pytest.raises((AirflowException, ReadinessTimeout)):
        create.execute(context("create"))
    return create, "\n".join(logged)


def test_a_failed_setup_deletes_its_cluster_by_default(stack: Stack) -> None:
    _, log = failing_setup(stack)
    assert stack.rayclusters() == []
    assert "deleting it" in log


def test_keep_leaves_the_failed_cluster_and_says_how_to_delete_it(stack: Stack) -> None:
    from ephemeral.airflow.operators import kept_message
    from ephemeral.backends import ClusterHandle

    _, log = failing_setup(stack, on_failure="keep")
    [cluster] = stack.rayclusters()
    name = cluster["metadata"]["name"]
    assert cluster["metadata"]["labels"]["ephemeral.dev/on-failure"] == "keep"
    assert (f"EPHEMERAL_INSTANCE=staging EPHEMERAL_K8S_NAMESPACE={NAMESPACE} ephemeral down "
            f"{name} --backend kubernetes") in log
    assert "kept for debugging until its TTL" in log
    assert "connection 'eph'" in log
    handle = ClusterHandle(name="c", spec_ref="r", spec_hash="h", backend="local", engine="ray",
                           created_at="2026-01-01T00:00:00Z", expires_at="2026-01-01T01:00:00Z",
                           labels={"ephemeral.dev/instance": "prod"})
    assert "Delete it sooner with: ephemeral down c --backend local" in kept_message(handle)


def test_keep_also_holds_when_the_trigger_reports_the_failure(stack: Stack) -> None:
    from airflow.sdk.exceptions import AirflowException

    from ephemeral.airflow.operators import CreateClusterOperator

    stack.operator.provision_delay = 60.0
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", overrides=SMALL_RAY,
                                   conn_id="eph", deferrable=False, ready_timeout=0.2,
                                   on_failure="keep")
    [plain] = [CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu",
                                     overrides=SMALL_RAY, conn_id="eph", deferrable=False)]
    stack.operator.provision_delay = 0.0
    handle = plain.execute(context("create"))
    with pytest.raises(AirflowException, match="did not become ready"):
        create.execute_complete(context("create"), {"status": "timeout", "message": "slow",
                                                    "handle": handle})
    assert [c["metadata"]["name"] for c in stack.rayclusters()] == [handle["name"]]
    plain.on_failure = "delete"
    with pytest.raises(AirflowException, match="did not become ready"):
        plain.execute_complete(context("create"), {"status": "timeout", "message": "slow",
                                                   "handle": handle})
    assert stack.rayclusters() == []


def test_a_kept_cluster_outlives_its_run_until_the_ttl(stack: Stack,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.airflow.backends import resolve
    from ephemeral.airflow.run_end import delete_run_clusters, run_selector
    from ephemeral.backends import OwnerSelector
    from ephemeral.reaper import RunInfo, reap

    failing_setup(stack, on_failure="keep")
    backend = resolve(conn_id="eph").backend
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")  # the run-end cleanup of its instance
    assert [h.name for h in backend.list_owned(run_selector("conn_dag", "manual__1"))]
    # The setup failed (read from the metadata database in a deployment): kept.
    assert delete_run_clusters("conn_dag", "manual__1", backend=backend,
                               failed_setup=lambda h: True) == []
    assert len(stack.rayclusters()) == 1
    [handle] = backend.list_owned(OwnerSelector.everything())
    ended = datetime.now(UTC) - timedelta(hours=1)

    def lookup(dag_id: str, run_id: str) -> RunInfo:
        return RunInfo(state="failed", end_date=ended)

    class Scoped:  # the reaper of the connection's deployment instance
        def __getattr__(self, name: str) -> Any:
            return getattr(backend, name)

        def list_owned(self, selector: Any = None) -> Any:
            return backend.list_owned(OwnerSelector.everything())

    [kept] = reap(Scoped(), lookup=lookup, dry_run=True)  # type: ignore[arg-type]
    assert not kept.delete
    assert "kept for debugging" in kept.reason
    expiry = datetime.strptime(handle.expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    [due] = reap(Scoped(), lookup=lookup, dry_run=True,  # type: ignore[arg-type]
                 now=expiry + timedelta(seconds=1))
    assert due.delete
    assert "expired" in due.reason


# -- deferrable -----------------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "expected"), [(None, False), ("True", True),
                                                   ("False", False)])
def test_deferrable_defaults_to_operators_default_deferrable(
        monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: bool) -> None:
    from ephemeral.airflow.operators import CreateClusterOperator, RayJobOperator

    if setting is None:
        monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", setting)
    assert CreateClusterOperator(task_id="c", spec="ray/adhoc-cpu").deferrable is expected
    assert RayJobOperator(task_id="j", cluster={}, entrypoint="x").deferrable is expected
    assert CreateClusterOperator(task_id="c", spec="ray/adhoc-cpu",
                                 deferrable=not expected).deferrable is not expected


def test_keep_does_not_hold_a_cluster_whose_setup_succeeded(stack: Stack,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A setup that succeeded handed its cluster to the teardown: when the run ends without it
    (skipped, failed, marked), the run-end cleanup deletes it despite on_failure='keep'."""
    from ephemeral.airflow.backends import resolve
    from ephemeral.airflow.run_end import delete_run_clusters

    failing_setup(stack, on_failure="keep")  # a kept cluster in the API server
    backend = resolve(conn_id="eph").backend
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    seen: list[str] = []

    def succeeded(handle: Any) -> bool:
        seen.append(handle.name)
        return False

    deleted = delete_run_clusters("conn_dag", "manual__1", backend=backend,
                                  failed_setup=succeeded)
    assert deleted == seen
    assert len(deleted) == 1
    assert stack.rayclusters() == []


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_handle_xcom_refuses_fails_the_setup_and_deletes_its_cluster(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, deferrable: bool) -> None:
    """Airflow pushes the setup's handle after execute returns, outside its clean-up: a handle
    over the metadata-only XCom's limit (a long pip list, a large Spark conf) must fail the
    setup there, with its cluster deleted, not after, with the cluster left running."""
    from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

    from ephemeral.airflow.operators import CreateClusterOperator
    from ephemeral.airflow.triggers import ClusterReadyTrigger

    monkeypatch.setenv("AIRFLOW__CORE__XCOM_BACKEND", "ephemeral.airflow.xcom.MetadataOnlyXCom")
    monkeypatch.setenv("EPHEMERAL_XCOM_MAX_BYTES", "600")
    stack.operator.paused = deferrable  # held until the setup has deferred
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", overrides=SMALL_RAY,
                                   conn_id="eph", deferrable=deferrable, poll_interval=0.05)
    if not deferrable:
        with pytest.raises(AirflowFailException, match="over the 600-byte limit") as err:
            create.execute(context("create"))
    else:
        with pytest.raises(TaskDeferred) as deferred:
            create.execute(context("create"))
        stack.operator.paused = False
        event = first_event(ClusterReadyTrigger(**deferred.value.trigger.serialize()[1]))
        assert event["status"] == "ready", event
        with pytest.raises(AirflowFailException, match="over the 600-byte limit") as err:
            create.execute_complete(context("create"), event)
    assert "EPHEMERAL_XCOM_MAX_BYTES" in str(err.value)
    assert stack.rayclusters() == []


def test_a_setup_whose_deployment_left_its_instance_unset_fails_before_creating(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Airflow container's home is /opt/airflow: a derived instance would be the same in
    staging and prod, so the same run's cluster would be one both adopt and delete."""
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.operators import CreateClusterOperator

    monkeypatch.delenv("EPHEMERAL_INSTANCE")
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", overrides=SMALL_RAY,
                                   conn_id="k8s", deferrable=False)
    with pytest.raises(AirflowFailException, match="EPHEMERAL_INSTANCE"):
        create.execute(context("create"))
    assert stack.rayclusters() == []
    assert not [c for c in stack.server.calls if c[0] == "POST"]
