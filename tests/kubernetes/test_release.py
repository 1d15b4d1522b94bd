"""``delete_cluster_on_success`` on Kubernetes, against the strict API mock: the Ray job's
trigger (in the triggerer, from the settings alone) reads a succeeded job's result from the
dashboard and deletes the RayCluster, a failed job leaves it to the teardown, and a Spark
application's task deletes its cluster's Deployments and Services."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ephemeral.airflow.release import recorded, release
from ephemeral.airflow.triggers import RayJobTrigger
from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.jobs.ray_jobs import ray_jobs_for
from ephemeral.specs import ClusterIdentity
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer, WebEndpoints
from tests.kubernetes.conftest import NAMESPACE

RAY = small("ray/adhoc-cpu", replicas=1)
SPARK = small("spark/etl")
BY = {"dag_id": "k8s", "run_id": "run-1", "task": "train"}


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, kubeconfig_file: Path, web: WebEndpoints) -> None:
    """What the triggerer knows: the deployment's settings, not the test's backend object."""
    for key, value in {"KUBECONFIG": str(kubeconfig_file), "K8S_NAMESPACE": NAMESPACE,
                       "K8S_ENDPOINT_MODE": "ingress",
                       "K8S_INGRESS_URL_TEMPLATE": web.url_template}.items():
        monkeypatch.setenv(f"EPHEMERAL_{key}", value)


def first_event(trigger: RayJobTrigger) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")
    return asyncio.run(run())


def ray_job(k8s_backend: KubernetesBackend) -> tuple[Any, RayJobTrigger]:
    identity = ClusterIdentity(spec_name=RAY.spec.name, dag_id="k8s", run_id="run-1",
                               task_id="create")
    handle = k8s_backend.create(RAY, identity=identity)
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    job_id = ray_jobs_for(handle, k8s_backend).client.submit_job(
        entrypoint="python train.py", submission_id="eph-k8s-train-a1")
    trigger = RayJobTrigger(handle=handle.model_dump(mode="json"), backend="kubernetes",
                            job_id=job_id, poll_interval=0.05, release=BY)
    return handle, trigger


@pytest.mark.usefixtures("settings", "ephemeral_home")
def test_the_trigger_releases_the_raycluster_of_a_succeeded_job(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    apiserver.dashboards.job_logs = 'epoch 1\n{"model_uri": "s3://models/m.pt"}\n'
    handle, trigger = ray_job(k8s_backend)
    event = first_event(trigger)
    assert event["status"] == "SUCCEEDED"
    assert event["result"]["result"] == {"model_uri": "s3://models/m.pt"}
    assert str(event["released"]).startswith(f"deleted {handle.name}")
    assert apiserver.store.list("rayclusters", NAMESPACE) == []
    assert k8s_backend.list_owned() == []
    rel = recorded(handle, "k8s", "run-1")
    assert rel is not None
    assert rel.deleted is not None
    assert rel.task == "train"
    assert [j.job_id for j in rel.jobs or []] == ["eph-k8s-train-a1"]  # asked before deleting


@pytest.mark.usefixtures("settings", "ephemeral_home")
def test_a_failed_job_keeps_its_raycluster_for_the_teardown(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    apiserver.dashboards.job_status = "FAILED"
    handle, trigger = ray_job(k8s_backend)
    event = first_event(trigger)
    assert event["status"] == "FAILED"
    assert "released" not in event
    assert [o["metadata"]["name"] for o in apiserver.store.list("rayclusters", NAMESPACE)] == [
        handle.name]
    assert recorded(handle, "k8s", "run-1") is None
    k8s_backend.delete(handle)  # what the teardown does
    assert apiserver.store.all() == []


@pytest.mark.usefixtures("ephemeral_home")
def test_a_spark_applications_task_releases_its_cluster(
        k8s_backend: KubernetesBackend, apiserver: ApiServer) -> None:
    identity = ClusterIdentity(spec_name=SPARK.spec.name, dag_id="k8s", run_id="run-1",
                               task_id="create")
    handle = k8s_backend.create(SPARK, identity=identity)
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    done = release(k8s_backend, handle, {**BY, "task": "etl"}, {"job_id": "app-1"})
    assert done is not None
    assert done.startswith(f"deleted {handle.name}")
    assert apiserver.store.all() == []
    rel = recorded(handle, "k8s", "run-1")
    assert rel is not None
    assert rel.deleted is not None
    assert rel.result == {"job_id": "app-1"}
