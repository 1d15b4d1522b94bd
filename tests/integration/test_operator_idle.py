"""lifetime.idleTimeout of a Spark cluster in operator mode (a SparkConnect: no master, the Spark
UI is the Connect server's own), read from a real Spark Connect server's REST API.

No Kubernetes runs here, and the API mock plays no Spark: the operator-mode reader
(``activity.operator_activity``) is pointed at the real Connect server of a local cluster, whose
UI answers the same ``/api/v1/applications/<id>/connect/sessions`` and ``/operations`` the
operator's ``<name>-server:4040`` does, through a handle shaped as an operator-mode one (no
``spark_master``; ``spark_ui`` the Connect UI). Before, the idle check asked that UI for a
master's ``/json/`` and never called such a cluster idle."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from ephemeral.activity import cluster_activity
from ephemeral.backends.base import Endpoints
from ephemeral.backends.kubernetes.render.spark_operator import is_operator
from ephemeral.backends.local import LocalBackend
from ephemeral.lifecycle import provision
from ephemeral.reaper import FinishedMemory, judge_idle
from ephemeral.specs import ClusterIdentity, resolve

pytestmark = pytest.mark.local
IDLE = 12

SPEC = f"""\
kind: SparkCluster
name: op-idle
version: 1
sparkVersion: "4.3.0"
image: apache/spark:4.3.0-python3
workers: {{replicas: 1, cores: 1, memory: 1Gi}}
connect: {{enabled: true, memory: 1Gi}}
lifetime: {{ttl: 1h, idleTimeout: {IDLE}s}}
"""


def test_an_operator_mode_cluster_is_idle_by_its_connect_servers_sessions(
        local_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.jobs.spark_jobs import connect_session, spark_auth_for

    path = tmp_path / "op-idle.yaml"
    path.write_text(SPEC)
    handle = provision(local_backend, resolve(str(path)),
                       ClusterIdentity.manual("op-idle", "spark-op-idle"), timeout=300).handle
    ui = local_backend.access(handle).connect_ui
    assert ui is not None
    operator = handle.model_copy(update={"endpoints": Endpoints(
        spark_ui=ui, spark_connect=handle.endpoints.spark_connect)})
    assert is_operator(operator)
    # The backend's own record is what its reads go by (never a handle's endpoints): here, it
    # records the operator-shaped cluster.
    monkeypatch.setattr(local_backend, "endpoints", lambda _h: operator.endpoints)
    memory = FinishedMemory(None)

    first = cluster_activity(local_backend, operator)
    assert first.busy is False, first  # the readiness probe's session is no work
    assert first.nodes_up is not None  # the Connect server's application start
    assert not first.sightings_only
    since_up = judge_idle(operator, first, now=first.nodes_up + timedelta(seconds=IDLE + 1),
                          memory=memory)
    assert since_up.delete, since_up  # unused for longer than idleTimeout since it started

    session = connect_session(handle.endpoints.spark_connect or "",
                              token=spark_auth_for(handle, local_backend).connect_token)
    try:
        assert session.range(1000).count() == 1000
        busy = cluster_activity(local_backend, operator)
        assert busy.busy is True, busy
        assert any(d.startswith("Connect session") for d in busy.details), busy
    finally:
        session.stop()
    deadline = time.monotonic() + 30
    while (after := cluster_activity(local_backend, operator)).busy:
        assert time.monotonic() < deadline, after
        time.sleep(0.5)
    assert after.busy is False, after
    assert after.last_end is not None, after
    kept = judge_idle(operator, after, now=after.last_end + timedelta(seconds=IDLE - 2),
                      memory=memory)
    assert not kept.delete, kept  # the clock restarted at the session's end
    gone = judge_idle(operator, after, now=after.last_end + timedelta(seconds=IDLE + 1),
                      memory=memory)
    assert gone.delete, gone
