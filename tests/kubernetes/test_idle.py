"""The reaper's idle rule on the Kubernetes backend, against the strict API mock: it asks the Ray
dashboard's Jobs API and the Spark master's ``/json/`` that the mock serves, with the headers
``backend.access`` gives (the cluster's Ray token), and deletes what has been idle too long."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.jobs.ray_jobs import ray_jobs_for
from ephemeral.jobs.runtime_env import job_runtime_env
from ephemeral.reaper import reap
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import parse_utc
from ephemeral.specs.resolve import ResolvedSpec
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer, WebEndpoints

RAY = small("ray/adhoc-cpu", replicas=1)  # idleTimeout 15m
SPARK = small("spark/etl")  # idleTimeout 20m


def owner(spec: ResolvedSpec) -> ClusterIdentity:
    return ClusterIdentity(spec_name=spec.spec.name, dag_id="k8s", run_id="run-1",
                           task_id="create_cluster")


def test_a_ray_cluster_is_kept_while_a_job_runs_and_reaped_once_idle(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, web: WebEndpoints,
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    assert handle.idle_timeout_s == 900
    memory = tmp_path / "seen.json"
    web.dashboards.job_status = "RUNNING"
    jid = ray_jobs_for(handle, k8s_backend).submit("python -c pass",
                                                   runtime_env=job_runtime_env(handle, None))
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=16)  # long past ready

    [d] = reap(k8s_backend, lookup=None, now=t0, memory_file=memory)
    assert not d.delete, d
    assert "busy: 1 Ray job(s) pending or running" in d.reason
    listed = f"/{handle.namespace}/{handle.name}/dashboard/api/jobs"
    assert any(h == f"GET {listed}/" or h == f"GET {listed}" for h in web.hits), web.hits
    assert "authorization" in web.dashboards.seen_headers[-1]  # with the cluster's token

    web.dashboards.job_status = "SUCCEEDED"  # the mock reports no end time: the reaper's
    [d] = reap(k8s_backend, lookup=None, now=t0 + timedelta(seconds=899), memory_file=memory)
    assert not d.delete, d  # last sight of the job running starts the clock
    assert "idle for 899s of idleTimeout 900s" in d.reason
    [d] = reap(k8s_backend, lookup=None, now=t0 + timedelta(seconds=901), memory_file=memory)
    assert d.deleted, d
    assert d.reason.startswith("idle for 901s, idleTimeout 900s")
    assert jid
    assert apiserver.store.all() == []


def test_a_ray_cluster_with_no_time_to_count_from_is_not_idle(
        k8s_backend: KubernetesBackend, web: WebEndpoints,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The mock serves no state API (no node start) and its finished jobs no end time: with no
    job yet the cluster's age is no idle time (it may still be starting), and a job that ended
    at an unknown time leaves only the reaper's sightings, which a memory-less run lacks."""
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    later = parse_utc(handle.created_at) + timedelta(hours=1)
    [d] = reap(k8s_backend, lookup=None, now=later)
    assert not d.delete, d
    assert "activity unknown (no Ray job ran yet and the state API gave no node start)" \
        in d.reason
    web.dashboards.job_status = "SUCCEEDED"
    ray_jobs_for(handle, k8s_backend).submit("python -c pass",
                                             runtime_env=job_runtime_env(handle, None))
    [d] = reap(k8s_backend, lookup=None, now=later)
    assert not d.delete, d
    assert "idle for 0s of idleTimeout 900s" in d.reason


def test_a_spark_cluster_without_applications_is_reaped(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, web: WebEndpoints) -> None:
    """No readiness time from the master (no Connect application on the mock) and nothing ever
    ran: the clock starts at its creation, without the reaper's memory (as in the CronJob,
    whose emptyDir forgets between runs)."""
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    t0 = parse_utc(handle.created_at)
    [d] = reap(k8s_backend, lookup=None, now=t0 + timedelta(seconds=1199))
    assert not d.delete, d
    assert "idle for 1199s of idleTimeout 1200s" in d.reason
    assert any(h.endswith("/spark-ui/json") for h in web.hits)
    [d] = reap(k8s_backend, lookup=None, now=t0 + timedelta(seconds=1201))
    assert d.deleted, d
    assert d.reason.startswith("idle for 1201s, idleTimeout 1200s (no Spark application")
    assert apiserver.store.all() == []


def test_a_spark_cluster_still_starting_is_not_idle(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, web: WebEndpoints) -> None:
    """Its master answers before its workers register: with nothing run yet and no readiness
    time, its age is no idle time, so it is not judged until every worker is ALIVE."""
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    workers = [p["metadata"]["name"] for p in apiserver.store.list("pods", handle.namespace)
               if p["metadata"]["labels"].get("app.kubernetes.io/component") == "spark-worker"
               and p["metadata"]["labels"].get("ephemeral.dev/cluster") == handle.name]
    assert workers

    def pending(pod: dict[str, Any]) -> None:
        pod["status"]["phase"] = "Pending"

    apiserver.store.update("pods", handle.namespace, workers[0], pending)
    later = parse_utc(handle.created_at) + timedelta(hours=1)
    [d] = reap(k8s_backend, lookup=None, now=later)
    assert not d.delete, d
    assert f"activity unknown (still starting: {len(workers) - 1} of {len(workers)} workers " \
           "ALIVE)" in d.reason


def test_a_dashboard_that_does_not_answer_is_not_idle(
        k8s_backend: KubernetesBackend, web: WebEndpoints) -> None:
    handle = k8s_backend.create(RAY, identity=owner(RAY))
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    web.down = True
    [d] = reap(k8s_backend, lookup=None, now=datetime.now(UTC) + timedelta(hours=1, minutes=59))
    assert not d.delete, d
    assert "activity unknown (the Ray Jobs API did not answer)" in d.reason


def test_spark_connect_on_kubernetes_is_busy_while_it_holds_executors(
        k8s_backend: KubernetesBackend, web: WebEndpoints,
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Kubernetes publishes no Service for the Connect server's UI: its sessions cannot be seen,
    so executors it holds count as work, and only the reaper's own sightings start the clock."""
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    memory = tmp_path / "seen.json"
    long_ago = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000)
    connect = {"id": "app-1", "name": f"{handle.name}-connect", "starttime": long_ago,
               "cores": 4, "state": "RUNNING", "duration": 3_600_000}
    web.dashboards.spark_apps = [connect]
    t0 = datetime.now(UTC).replace(microsecond=0)
    [d] = reap(k8s_backend, lookup=None, now=t0, memory_file=memory)
    assert not d.delete, d
    assert "busy: 1 running: Spark Connect holds 4 cores" in d.reason

    web.dashboards.spark_apps = [connect | {"cores": 0, "state": "WAITING"}]
    # Registered an hour ago, but that is no evidence of when its last query ended.
    [d] = reap(k8s_backend, lookup=None, now=t0 + timedelta(seconds=600), memory_file=memory)
    assert not d.delete, d
    assert "idle for 600s of idleTimeout 1200s" in d.reason
    # Without the reaper's memory (the CronJob's emptyDir) it is never called idle.
    [d] = reap(k8s_backend, lookup=None, now=t0 + timedelta(hours=2, minutes=59))
    assert not d.delete, d
    assert "idle for 0s" in d.reason
    [d] = reap(k8s_backend, lookup=None, now=t0 + timedelta(seconds=1201), memory_file=memory)
    assert d.deleted, d
