"""The run-end listener's parts that need no live stack: Airflow finds it through the package's
entry point, and the deleting process takes exactly one run's clusters, also those that appear
while it lingers. The live fault matrix (test_fault_matrix.py) covers the real paths."""

from __future__ import annotations

import threading
import time

from ephemeral.airflow import run_end
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.specs import ClusterIdentity, resolve


def _make(backend: InMemoryBackend, run_id: str, task_id: str = "create") -> str:
    identity = ClusterIdentity(spec_name="adhoc-cpu", dag_id="d", run_id=run_id,
                               task_id=task_id)
    return backend.create(resolve("ray/adhoc-cpu", "ci-cpu"), identity=identity).name


def test_airflow_loads_the_listener_through_the_entry_point() -> None:
    from airflow.listeners.listener import get_listener_manager

    hooks = get_listener_manager().pm.hook
    for name in ("on_dag_run_success", "on_dag_run_failed"):
        owners = [impl.plugin_name for impl in getattr(hooks, name).get_hookimpls()]
        assert "ephemeral.airflow.listener" in owners, owners


def test_deletes_every_cluster_of_the_run_and_nothing_else() -> None:
    backend = InMemoryBackend()
    mine = {_make(backend, "r1"), _make(backend, "r1", task_id="create_spark")}
    other = _make(backend, "r2")
    deleted = run_end.delete_run_clusters("d", "r1", backend=backend)
    assert set(deleted) == mine
    assert [h.name for h in backend.list_owned()] == [other]
    # No teardown will record them (the run ended without it): the cleanup puts them in the
    # run's report, as deleted by the run's end, and no other run's.
    from ephemeral.report import load_report

    report = load_report("d", "r1")
    assert report is not None
    assert {c["name"]: c["released_by"] for c in report["clusters"]} == dict.fromkeys(
        mine, "run-end")
    assert all(c["deletion"] == "complete" and c["deleted"] for c in report["clusters"])
    assert load_report("d", "r2") is None
    # A teardown that still comes (the run cleared) reports these moments, not its own.
    from ephemeral.report.store import read_release

    for name in mine:
        rel = read_release("d", "r1", name)
        assert rel is not None
        assert rel.task == "run-end"
        assert rel.deleted == next(c["deleted"] for c in report["clusters"] if c["name"] == name)


def test_lingering_deletes_a_cluster_made_after_the_end() -> None:
    """A setup marked failed dies at its next heartbeat and may create its cluster after the
    run ended."""
    backend = InMemoryBackend()
    late = threading.Timer(0.5, _make, (backend, "r1"))
    late.start()
    started = time.monotonic()
    deleted = run_end.delete_run_clusters("d", "r1", linger=3.0, backend=backend)
    late.join()
    assert len(deleted) == 1
    assert backend.list_owned() == []
    assert time.monotonic() - started >= 3.0
