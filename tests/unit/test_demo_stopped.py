"""`make demo` leaving dag.test by an exception (Ctrl-C or SIGTERM between tasks; inside a task,
dag.test makes either a task failure and runs the teardowns) deletes the clusters its run made
before it exits: no teardown and no reaper would."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from ephemeral.backends.fake import InMemoryBackend
from ephemeral.specs import ClusterIdentity, resolve

ROOT = Path(__file__).resolve().parents[2]


def demo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts/demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_this_runs_clusters_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another DAG's cluster, and another demo's run of the same DAG started a moment later
    in the same home, stay: the run is told by the run id dag.test makes of run_after."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    backend = InMemoryBackend()
    monkeypatch.setattr("ephemeral.backends.get_backend", lambda *a, **k: backend)
    spec = resolve("ray/adhoc-cpu", "ci-cpu")

    def made(dag_id: str, run_id: str) -> str:
        return backend.create(spec, identity=ClusterIdentity(
            spec_name=spec.spec.name, dag_id=dag_id, run_id=run_id, task_id="create")).name

    def run_id(after: datetime) -> str:  # as dag.test names its run
        return DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=None,
                                      run_after=after)

    ours = datetime.now(UTC)
    other_dag = made("ray_job_adhoc", "r")
    other_demo = made("train_distributed", run_id(ours + timedelta(microseconds=1)))
    mine = made("train_distributed", run_id(ours))
    said: list[str] = []
    console = type("Console", (), {"print": lambda self, text, **kw: said.append(text)})()
    demo_module()._delete_this_runs_clusters(console, ours)
    assert sorted(h.name for h in backend.list_owned()) == sorted([other_dag, other_demo])
    assert said == [f"stopped: deleted {mine}"]
