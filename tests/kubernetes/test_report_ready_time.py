"""A cluster that run-end or the reaper deletes has its start counted as starting in the run's
report: the setup, which saw it ready, records when, beside the run's report parts, and their
parts read it (the handles they list carry no readiness time; only the setup's XCom does).
The setup is the operator's own ``execute``; on Kubernetes against the strict API mock (the
Role's verbs only: no cluster object is patched), else the in-memory backend."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends import ClusterBackend
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.backends.kubernetes import KubernetesBackend
from tests.kubernetes.apiserver import ApiServer, Operator
from tests.kubernetes.test_rbac_sufficient import enforce, granted

SMALL_RAY = {"workers": {"replicas": 1}}


def context(run_id: str) -> dict[str, Any]:
    ti = SimpleNamespace(task_id="create", map_index=-1, try_number=1,
                         xcom_push=lambda key, value: None)
    return {"dag": SimpleNamespace(dag_id="d"), "run_id": run_id, "ti": ti}


def setup(monkeypatch: pytest.MonkeyPatch, backend: ClusterBackend, run_id: str
          ) -> dict[str, Any]:
    """The setup task of ``run_id`` on ``backend``, waiting in the worker until ready."""
    import ephemeral.airflow.operators as operators
    from ephemeral.airflow.backends import Target
    from ephemeral.specs.identity import current_instance

    monkeypatch.setattr(operators, "resolve_target", lambda *args: Target(
        backend=backend, instance=current_instance(), connection=None))
    op = operators.CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu",
                                         overrides=SMALL_RAY, deferrable=False,
                                         poll_interval=0.05)
    handle = op.execute(context(run_id))
    assert handle["ready_ts"] is not None
    return handle


def by_run_end(backend: ClusterBackend, run_id: str) -> None:
    from ephemeral.airflow.run_end import delete_run_clusters

    assert delete_run_clusters("d", run_id, backend=backend)


def by_reaper(backend: ClusterBackend, run_id: str) -> None:
    from ephemeral.reaper import RunInfo, reap

    ended = datetime.now(UTC) - timedelta(hours=1)
    [decision] = reap(backend, lookup=lambda d, r: RunInfo("failed", end_date=ended), grace=60)
    assert decision.deleted, decision


def the_part(run_id: str, handle: dict[str, Any]) -> dict[str, Any]:
    from ephemeral.report import load_report

    report = load_report("d", run_id)
    assert report is not None
    [cluster] = report["clusters"]
    assert cluster["name"] == handle["name"]
    return dict(cluster)


DELETERS: dict[str, Callable[[ClusterBackend, str], None]] = {
    "run-end": by_run_end, "reaper": by_reaper}


@pytest.mark.parametrize("deleter", DELETERS)
def test_a_part_run_end_or_the_reaper_writes_counts_the_start_as_starting(
        deleter: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = InMemoryBackend(ready_after_probes=3)
    handle = setup(monkeypatch, backend, "r1")
    DELETERS[deleter](backend, "r1")
    part = the_part("r1", handle)
    assert part["released_by"] == deleter
    assert part["ready"] == handle["ready_ts"]
    assert part["starting_s"] > 0
    assert part["starting_s"] == pytest.approx(handle["ready_ts"] - part["created"], abs=0.002)


@pytest.mark.parametrize("deleter", DELETERS)
def test_on_kubernetes_too_with_the_roles_verbs_only(
        deleter: str, monkeypatch: pytest.MonkeyPatch, k8s_backend: KubernetesBackend,
        apiserver: ApiServer, operator: Operator) -> None:
    enforce(apiserver, granted())
    operator.provision_delay = 0.3
    handle = setup(monkeypatch, k8s_backend, "r1")
    DELETERS[deleter](k8s_backend, "r1")
    part = the_part("r1", handle)
    assert part["released_by"] == deleter
    assert part["ready"] == handle["ready_ts"]
    assert part["starting_s"] >= 0.3


def test_the_readiness_time_is_that_cluster_lifes_own(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A later life of the same name (a cleared run's setup) does not take an earlier one's."""
    from ephemeral.report.deletions import ready_ts

    backend = InMemoryBackend(ready_after_probes=3)
    handle = setup(monkeypatch, backend, "r1")
    [listed] = backend.list_owned()
    assert listed.ready_ts is None
    assert ready_ts(listed, "d", "r1") == handle["ready_ts"]
    again = listed.model_copy(update={"created_at": "2099-01-01T00:00:00Z"})
    assert ready_ts(again, "d", "r1") is None
