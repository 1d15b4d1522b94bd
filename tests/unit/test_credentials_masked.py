"""A cluster's credentials are registered with Airflow's log masker where a task or the
triggerer obtains them (``ray_jobs_for``, ``spark_auth_for``): a job's or driver's output
streamed into the task log may print them. Without Airflow loaded, nothing is imported."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from ephemeral.backends.base import Access
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.jobs.ray_jobs import ray_jobs_for
from ephemeral.jobs.spark_jobs import SparkAuth, spark_auth_for
from ephemeral.specs import ClusterIdentity, resolve


@pytest.fixture
def masked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import airflow.sdk.log

    found: list[str] = []
    monkeypatch.setattr(airflow.sdk.log, "mask_secret", found.append)
    return found


class _Backend(InMemoryBackend):
    def access(self, handle: Any) -> Access:
        return Access(dashboard="http://127.0.0.1:8265",
                      headers={"Authorization": "Bearer kube-tok", "X-Ray-Authorization":
                               "Bearer ray-tok"})

    def spark_auth(self, handle: Any) -> SparkAuth:
        return SparkAuth(secret="spark-secret", connect_token="connect-tok")


def _cluster(backend: InMemoryBackend, ref: str) -> Any:
    return backend.create(resolve(ref, "ci-cpu"), identity=ClusterIdentity(
        spec_name=ref.split("/")[1].split("@")[0], dag_id="d", run_id="r", task_id="t"))


def test_the_ray_token_is_masked_where_a_task_obtains_it(masked: list[str]) -> None:
    backend = _Backend()
    ray_jobs_for(_cluster(backend, "ray/adhoc-cpu@1"), backend)
    assert {"ray-tok", "kube-tok", "Bearer ray-tok"} <= set(masked)


def test_the_spark_secret_and_connect_token_are_masked(masked: list[str]) -> None:
    backend = _Backend()
    spark_auth_for(_cluster(backend, "spark/etl@1"), backend)
    assert {"spark-secret", "connect-tok"} <= set(masked)


def test_without_airflow_loaded_nothing_is_imported() -> None:
    code = ("import sys\nfrom ephemeral.backends.base import hide_in_task_logs\n"
            "hide_in_task_logs('x')\nassert 'airflow' not in sys.modules, 'imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
