"""The reaper's idle rule on the Kubernetes backend, against the strict API mock: it asks the Ray
dashboard's Jobs API, the Spark master's ``/json/`` and the Spark Connect server UI's sessions
and operations that the mock serves, with the headers ``backend.access`` gives (the cluster's
Ray token), and deletes what has been idle too long."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ephemeral.activity import cluster_activity
from ephemeral.backends.kubernetes import KubernetesBackend
from ephemeral.jobs.ray_jobs import ray_jobs_for
from ephemeral.jobs.runtime_env import job_runtime_env
from ephemeral.reaper import Decision, reap
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import parse_utc, utc_text
from ephemeral.specs.resolve import ResolvedSpec
from tests.conftest import small
from tests.kubernetes.apiserver import ApiServer, WebEndpoints
from tests.kubernetes.test_access import proxy_backend  # noqa: F401 - the fixture

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


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _cronjob_pass(backend: KubernetesBackend, tmp_path: Path, now: datetime) -> Decision:
    """One run of the reaper CronJob: its memory file in a fresh emptyDir."""
    fresh = tmp_path / f"pass-{len(list(tmp_path.iterdir()))}"
    fresh.mkdir()
    [d] = reap(backend, lookup=None, now=now, memory_file=fresh / "reaper-seen.json")
    return d


def test_the_cronjob_reaps_a_standalone_spark_connect_cluster_idle_since_its_last_query(
        k8s_backend: KubernetesBackend, apiserver: ApiServer, web: WebEndpoints,
        tmp_path: Path) -> None:
    """Standalone mode (the default): the Connect server's UI on its ``<name>-connect`` Service
    tells when its last session and operation ended, so the memory-less CronJob enforces
    idleTimeout. Before, that UI had no Service: the clock restarted at every pass ("idle for
    0s") and only the TTL removed such a cluster."""
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    created = parse_utc(handle.created_at)
    # The Connect server registered at the master and holds no executors (released 30 s after
    # its last task); alice's session ran a query and was closed a minute after creation.
    web.dashboards.spark_apps = [{"id": "app-1", "name": f"{handle.name}-connect", "cores": 0,
                                  "starttime": _ms(created + timedelta(seconds=20)),
                                  "state": "RUNNING"}]
    ended = created + timedelta(seconds=60)
    web.dashboards.connect_sessions = [{"sessionId": "s-alice", "userId": "alice",
                                        "startTimestamp": _ms(created + timedelta(seconds=30)),
                                        "finishTimestamp": _ms(ended)}]
    web.dashboards.connect_operations = [{"operationId": "op-1", "sessionId": "s-alice",
                                          "userId": "alice", "state": "CLOSED",
                                          "startTimestamp": _ms(created + timedelta(seconds=35)),
                                          "closeTimestamp": _ms(ended)}]

    d = _cronjob_pass(k8s_backend, tmp_path, ended + timedelta(seconds=1199))
    assert not d.delete, d
    assert "idle for 1199s of idleTimeout 1200s" in d.reason
    assert any(h.endswith(f"/{handle.name}/connect-ui/api/v1/applications/spark-mock-0001/"
                          "connect/sessions") for h in web.hits), web.hits
    d = _cronjob_pass(k8s_backend, tmp_path, ended + timedelta(seconds=1201))
    assert d.deleted, d
    assert d.reason == ("idle for 1201s, idleTimeout 1200s (no Spark application, Connect "
                        f"session or operation running since {utc_text(ended)})")
    assert apiserver.store.all() == []


def test_an_open_connect_session_keeps_a_standalone_cluster_between_queries(
        k8s_backend: KubernetesBackend, web: WebEndpoints, tmp_path: Path) -> None:
    """A notebook's session open between queries: no operation runs and the server released
    its executors, but the session is work, for the CronJob and for a reaper with memory
    alike. Before, it was invisible: such a cluster was deleted 20 minutes after the server
    released its executors, "no ... Connect session ... running"."""
    handle = k8s_backend.create(SPARK, identity=owner(SPARK))
    assert k8s_backend.wait_ready(handle, timeout=5).ready
    created = parse_utc(handle.created_at)
    web.dashboards.spark_apps = [{"id": "app-1", "name": f"{handle.name}-connect", "cores": 0,
                                  "starttime": _ms(created), "state": "RUNNING"}]
    web.dashboards.connect_sessions = [{"sessionId": "s-bob", "userId": "bob",
                                        "startTimestamp": _ms(created + timedelta(minutes=1))}]
    web.dashboards.connect_operations = [{"operationId": "op-1", "sessionId": "s-bob",
                                          "userId": "bob", "state": "CLOSED",
                                          "startTimestamp": _ms(created + timedelta(minutes=2)),
                                          "closeTimestamp": _ms(created + timedelta(minutes=3))}]
    later = created + timedelta(hours=2)
    d = _cronjob_pass(k8s_backend, tmp_path, later)
    assert not d.delete, d
    assert d.reason.endswith("busy: 1 running: Connect session s-bob"), d
    kept = tmp_path / "kept.json"  # the CLI and the reaping DAG keep their memory
    for minutes in (0, 10, 25):
        [d] = reap(k8s_backend, lookup=None, now=later + timedelta(minutes=minutes),
                   memory_file=kept)
        assert not d.delete, d
        assert d.reason.endswith("busy: 1 running: Connect session s-bob"), d


def test_the_connect_ui_is_reached_through_the_api_servers_proxy(
        proxy_backend: KubernetesBackend, apiserver: ApiServer) -> None:  # noqa: F811
    """Outside the cluster, the Connect server's UI goes through the API server's proxy to
    the ``web-ui`` port of ``<name>-connect``, as the master UI does to ``<name>-master``. A
    Service without that port (a cluster made by an earlier version) makes the activity
    unknown, never idle."""
    handle = proxy_backend.create(SPARK, identity=owner(SPARK))
    assert proxy_backend.wait_ready(handle, timeout=5).ready
    ui = (f"{apiserver.url}/api/v1/namespaces/{handle.namespace}/services/{handle.name}-connect:"
          "web-ui/proxy")
    assert proxy_backend.access(handle).connect_ui == ui
    apiserver.dashboards.connect_sessions = [{"sessionId": "s-1", "userId": "carol",
                                              "startTimestamp": _ms(datetime.now(UTC))}]
    seen = cluster_activity(proxy_backend, handle)
    assert (seen.busy, seen.what) == (True, "1 running: Connect session s-1")

    def unpublished(svc: dict[str, Any]) -> None:
        svc["spec"]["ports"] = [p for p in svc["spec"]["ports"] if p["name"] != "web-ui"]

    apiserver.store.update("services", handle.namespace, f"{handle.name}-connect", unpublished)
    seen = cluster_activity(proxy_backend, handle)
    assert seen.busy is None, seen
    assert seen.what == f"the Spark Connect UI at {ui} did not answer"
