"""Work done through Spark Connect (``@task.spark_connect``) is in the run report on Kubernetes,
in both Spark modes: the teardown's read of the engines (``report.engines.engine_jobs``) asks
the Connect server's UI, through the same reader and access as the idle rule, and the report
counts its operations as busy time. Before, it read that UI on the local backend only: such a
cluster was reported idle from start to end (busy 0 s), and in operator mode, which has no
master, its jobs were unknown."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from ephemeral.backends.kubernetes.render.spark_operator import is_operator
from ephemeral.reaper import RunInfo, reap
from ephemeral.report import load_report
from ephemeral.report.deletions import created_ts
from ephemeral.report.engines import engine_jobs
from ephemeral.specs import ClusterIdentity
from tests.conftest import small
from tests.kubernetes.apiserver import Operator, WebEndpoints

SPARK = small("spark/etl")


@pytest.fixture(params=["standalone", "operator"])
def spark_backend(request: pytest.FixtureRequest, kube_config: KubeConfig,
                  operator: Operator) -> Iterator[KubernetesBackend]:
    backend = KubernetesBackend(kube_config.model_copy(update={"spark_mode": request.param}))
    try:
        yield backend
    finally:
        backend.client.close()


def test_the_run_report_counts_spark_connect_operations_as_busy(
        spark_backend: KubernetesBackend, web: WebEndpoints) -> None:
    handle = spark_backend.create(SPARK, identity=ClusterIdentity(
        spec_name=SPARK.spec.name, dag_id="etl", run_id="run-1", task_id="create_cluster"))
    assert spark_backend.wait_ready(handle, timeout=5).ready
    created = created_ts(handle)  # its creation as the report counts it

    def ms(offset: float) -> int:
        return int((created + offset) * 1000)

    # Two queries of one session that touch (one busy spell) and one of another session, all
    # over before the cluster is deleted.
    web.dashboards.connect_sessions = [
        {"sessionId": "sess-alice-1", "userId": "alice", "startTimestamp": ms(0.1)},
        {"sessionId": "sess-bob-22", "userId": "bob", "startTimestamp": ms(0.1),
         "finishTimestamp": ms(1.0)}]
    web.dashboards.connect_operations = [
        {"operationId": "op-1", "sessionId": "sess-alice-1", "userId": "alice",
         "state": "CLOSED", "startTimestamp": ms(0.2), "finishTimestamp": ms(0.4)},
        {"operationId": "op-2", "sessionId": "sess-alice-1", "userId": "alice",
         "state": "CLOSED", "startTimestamp": ms(0.4), "finishTimestamp": ms(0.7)},
        {"operationId": "op-3", "sessionId": "sess-bob-22", "userId": "bob",
         "state": "FINISHED", "startTimestamp": ms(0.8), "finishTimestamp": ms(0.9)},
        # The readiness probe's session is no work.
        {"operationId": "probe", "sessionId": "p", "userId": "ephemeral-probe",
         "state": "CLOSED", "startTimestamp": ms(0.0), "finishTimestamp": ms(0.9)}]
    web.dashboards.spark_apps = [{"id": "app-1", "name": f"{handle.name}-connect",
                                  "starttime": ms(0), "cores": 0, "state": "RUNNING"}]

    jobs = engine_jobs(spark_backend, handle)
    assert jobs is not None
    assert sorted((j.job_id, j.status, j.start, j.end, j.source) for j in jobs) == [
        ("connect-sess-ali-0", "CONNECT", ms(0.2) / 1000, ms(0.7) / 1000, "spark connect"),
        ("connect-sess-bob-0", "CONNECT", ms(0.8) / 1000, ms(0.9) / 1000, "spark connect")]
    # The Connect server's own UI: in operator mode the cluster's Spark UI is that UI.
    ui = "spark-ui" if is_operator(handle) else "connect-ui"
    assert f"GET /{handle.namespace}/{handle.name}/{ui}/api/v1/applications/spark-mock-0001/" \
           "connect/operations" in web.hits, web.hits

    # What the user reads: the run's report, written by the reaper that deletes the cluster
    # once its run ended (it asks the engines first, as every teardown does).
    while time.time() < created + 1.0:  # the operations ended before it is deleted
        time.sleep(0.05)
    ended = datetime.now(UTC) - timedelta(hours=1)
    [d] = reap(spark_backend, lookup=lambda _d, _r: RunInfo("failed", end_date=ended), grace=60)
    assert d.deleted, d
    report = load_report("etl", "run-1")
    assert report is not None
    [cluster] = report["clusters"]
    assert cluster["busy_s"] == pytest.approx(0.6, abs=0.002)  # the operations' times, in ms
    assert cluster["idle_s"] == pytest.approx(cluster["lifetime_s"] - cluster["busy_s"])
