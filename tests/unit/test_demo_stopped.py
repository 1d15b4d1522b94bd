"""`make demo` leaving dag.test by an exception (Ctrl-C or SIGTERM between tasks; inside a task,
dag.test makes either a task failure and runs the teardowns) deletes the clusters its run made
before it exits: no teardown and no reaper would."""

from __future__ import annotations

import importlib.util
import time
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
    backend = InMemoryBackend()
    monkeypatch.setattr("ephemeral.backends.get_backend", lambda *a, **k: backend)
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    other = backend.create(spec, identity=ClusterIdentity(
        spec_name=spec.spec.name, dag_id="ray_job_adhoc", run_id="r", task_id="create"))
    since = time.time()
    mine = backend.create(spec, identity=ClusterIdentity(
        spec_name=spec.spec.name, dag_id="train_distributed", run_id="r", task_id="create"))
    said: list[str] = []
    console = type("Console", (), {"print": lambda self, text, **kw: said.append(text)})()
    demo_module()._delete_this_runs_clusters(console, since)
    assert [h.name for h in backend.list_owned()] == [other.name]
    assert said == [f"stopped: deleted {mine.name}"]
