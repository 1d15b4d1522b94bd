"""Two deployments (staging and production) on one machine and one EPHEMERAL_HOME run the same
DAG with the same run id: each gets its own real cluster, and neither's teardown, `ephemeral
down --all` nor reaper touches the other's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends.base import OwnerSelector
from ephemeral.backends.local import LocalBackend
from ephemeral.reaper import RunInfo, reap
from ephemeral.specs import resolve

EPHEMERAL = shutil.which("ephemeral", path=str(Path(sys.executable).parent)) or "ephemeral"
RUN = "scheduled__2026-01-01T00:00:00+00:00"
SETUP = "create_cluster"

pytestmark = [pytest.mark.local, pytest.mark.slow]


def context() -> dict[str, Any]:
    return {"dag": SimpleNamespace(dag_id="train_distributed"), "run_id": RUN,
            "ti": SimpleNamespace(task_id="delete_cluster", map_index=-1)}


def cli(instance: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ) | {"EPHEMERAL_INSTANCE": instance}
    return subprocess.run([EPHEMERAL, *args], capture_output=True, text=True, timeout=300,
                          env=env, check=False)


def test_two_instances_never_touch_each_others_clusters(
        local_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ephemeral.airflow.context import cluster_identity
    from ephemeral.airflow.operators import DeleteClusterOperator

    spec = resolve("ray/adhoc-cpu", "ci-cpu", {"workers": {"replicas": 1}})
    made = {}
    for instance in ("staging", "prod"):
        monkeypatch.setenv("EPHEMERAL_INSTANCE", instance)
        ident = cluster_identity({**context(), "ti": SimpleNamespace(task_id=SETUP,
                                                                      map_index=-1)},
                                 spec.spec.name)
        made[instance] = local_backend.create(spec, identity=ident)
    staging, prod = made["staging"], made["prod"]
    assert staging.name != prod.name
    assert local_backend.pids(staging.name)
    assert local_backend.pids(prod.name)

    # Production sees only its own cluster.
    listed = json.loads(cli("prod", "ls", "--json").stdout)
    assert [r["handle"]["name"] for r in listed] == [prod.name]
    everyone = json.loads(cli("prod", "ls", "--all-instances", "--json").stdout)
    assert {r["handle"]["name"] for r in everyone} == {staging.name, prod.name}

    # Production's teardown of the same DAG, run and task deletes its own cluster only.
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    op = DeleteClusterOperator(task_id="delete_cluster", setup_task_id=SETUP)
    assert op.execute(context()) == {"deleted": [prod.name]}
    assert local_backend.pids(prod.name) == []
    assert local_backend.pids(staging.name)

    # `down --all`, `down NAME` and the reaper of production leave staging's cluster alone.
    down = cli("prod", "down", "--all", "--json")
    assert down.returncode == 0
    assert json.loads(down.stdout)["deleted"] == []
    named = cli("prod", "down", staging.name, "--json")
    assert named.returncode == 1
    assert "belongs to deployment instance 'staging'" in named.stdout
    ended = RunInfo("failed", datetime.now(UTC) - timedelta(hours=1))
    assert reap(local_backend, lookup=lambda _d, _r: ended, grace=0,
                memory_file=tmp_path / "seen.json") == []
    assert local_backend.pids(staging.name)
    assert [h.name for h in local_backend.list_owned(OwnerSelector.everything())] == [
        staging.name]

    # Staging's own teardown deletes it.
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    assert op.execute(context()) == {"deleted": [staging.name]}
    assert local_backend.pids(staging.name) == []
