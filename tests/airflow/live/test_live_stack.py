"""Failures only a running Airflow can produce, against real local Ray clusters.

- A setup task process SIGKILLed after it created its cluster and before its XCom push: with a
  retry, the retry adopts the same cluster and the teardown deletes it; without one, Airflow
  never runs the teardown and the reaper (asking the api-server) deletes the cluster.
- A run whose ``dagrun_timeout`` fires: the scheduler skips the teardown, the reaper deletes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from tests.airflow.live.stack import AirflowStack
from tests.conftest import engine_pids, other_clusters_pids

pytestmark = [pytest.mark.local, pytest.mark.slow, pytest.mark.timeout(900)]

DAGS = Path(__file__).parent / "dags"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    base = tmp_path_factory.mktemp("live-airflow")
    before = engine_pids()
    s = AirflowStack(home=base / "airflow", dags=DAGS, ephemeral_home=base / "ephemeral")
    try:
        s.start()
        yield s
    finally:
        s.stop()
        from ephemeral.backends.local import LocalBackend

        backend = LocalBackend(s.ephemeral_home)
        for h in backend.list_owned():
            backend.delete(h, wait=True)
        leaked = engine_pids() - before - other_clusters_pids(s.ephemeral_home)
        if leaked:
            psutil.wait_procs([psutil.Process(p) for p in leaked if psutil.pid_exists(p)],
                              timeout=5)
            leaked = engine_pids() - before - other_clusters_pids(s.ephemeral_home)
        assert not leaked, f"Ray/Spark processes left behind: {sorted(leaked)}"


def owned(stack: AirflowStack, dag_id: str, run_id: str) -> list[str]:
    from ephemeral.backends.local import LocalBackend
    from ephemeral.specs.identity import PREFIX

    return [h.name for h in LocalBackend(stack.ephemeral_home).list_owned()
            if h.annotations.get(PREFIX + "dag-id") == dag_id
            and h.annotations.get(PREFIX + "run-id") == run_id]


def reap(stack: AirflowStack, *args: str) -> list[dict[str, object]]:
    """`ephemeral reap` as an operator runs it, asking this Airflow for run states."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "EPHEMERAL_"))}
    env |= {"EPHEMERAL_HOME": str(stack.ephemeral_home), "EPHEMERAL_AIRFLOW_URL": stack.url,
            "EPHEMERAL_AIRFLOW_USER": "admin", "EPHEMERAL_AIRFLOW_PASSWORD": stack.password}
    exe = str(Path(sys.executable).parent / "ephemeral")
    proc = subprocess.run([exe, "reap", "--grace", "0", "--json", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return list(json.loads(proc.stdout))


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_setup_killed_before_xcom_push_is_adopted_by_its_retry(stack: AirflowStack) -> None:
    dag_id = "killed_setup_retried"
    run_id = stack.trigger(dag_id)
    state = stack.wait_finished(dag_id, run_id)
    tis = stack.task_instances(dag_id, run_id)
    assert state == "success", json.dumps(tis, indent=1)
    tries = stack.tries(dag_id, run_id, "create")
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    # The handle in XCom is the cluster the killed first try made: the retry adopted it
    # instead of starting a second one.
    handle = stack.xcom(dag_id, run_id, "create")
    assert when(handle["created_at"]) < when(tries[1]["start_date"])
    assert f"adopted {handle['name']}" in stack.task_log(dag_id, run_id, "create", 2)
    assert tis["work"]["state"] == "success"
    assert tis["delete"]["state"] == "success"
    assert owned(stack, dag_id, run_id) == []
    # The extra link as the UI gets it.
    assert stack.links(dag_id, run_id, "create")["Ray dashboard"] == \
        handle["endpoints"]["dashboard"]


def test_setup_killed_without_retry_leaves_the_cluster_to_the_reaper(stack: AirflowStack
                                                                     ) -> None:
    dag_id = "killed_setup_no_retry"
    run_id = stack.trigger(dag_id)
    assert stack.wait_finished(dag_id, run_id) == "failed"
    tis = stack.task_instances(dag_id, run_id)
    assert tis["create"]["state"] == "failed"
    # Airflow 3.3 never runs the teardown of a failed setup: the cluster is still there.
    assert tis["delete"]["state"] == "upstream_failed"
    [name] = owned(stack, dag_id, run_id)

    [dry] = [d for d in reap(stack, "--dry-run") if d["cluster"] == name]
    assert dry["delete"]
    assert not dry["deleted"]
    assert f"{dag_id}/{run_id} failed" in str(dry["reason"])
    assert owned(stack, dag_id, run_id) == [name]

    [done] = [d for d in reap(stack) if d["cluster"] == name]
    assert done["deleted"], done
    assert owned(stack, dag_id, run_id) == []


def test_dagrun_timeout_skips_the_teardown_and_the_reaper_deletes(stack: AirflowStack) -> None:
    dag_id = "run_times_out"
    run_id = stack.trigger(dag_id)
    assert stack.wait_finished(dag_id, run_id) == "failed"
    tis = stack.task_instances(dag_id, run_id)
    assert tis["create"]["state"] == "success"
    assert tis["delete"]["state"] == "skipped", json.dumps(tis, indent=1)
    [name] = owned(stack, dag_id, run_id)

    [done] = [d for d in reap(stack) if d["cluster"] == name]
    assert done["deleted"], done
    assert f"{dag_id}/{run_id} failed" in str(done["reason"])
    assert owned(stack, dag_id, run_id) == []


def test_the_triggerer_finds_a_kubernetes_connection_by_id(stack: AirflowStack,
                                                            tmp_path: Path) -> None:
    """The connection lives in Airflow's database, not in the environment: the setup and the
    triggerer (another process) each look it up by id; only the id is serialized."""
    from tests.kubernetes.apiserver import ApiServer, Operator, WebEndpoints
    from tests.kubernetes.manifest_validation import validate_manifest

    server = ApiServer(validate=validate_manifest, namespace="live", token="tok-live-9b2d").start()
    operator = Operator(server.store).start()
    operator.provision_delay = 3.0  # not ready at the first probe: the setup must defer
    web = WebEndpoints(server.store).start()
    try:
        server.kubeconfig(tmp_path / "kubeconfig.yaml")
        status, body = stack.request("POST", "/api/v2/connections", {
            "connection_id": "k8s_live", "conn_type": "kubernetes",
            "extra": json.dumps({"kube_config_path": str(tmp_path / "kubeconfig.yaml"),
                                 "namespace": "live",
                                 "ephemeral_endpoint_mode": "ingress",
                                 "ephemeral_ingress_url_template": web.url_template})})
        assert status == 201, body
        dag_id = "kubernetes_connection_live"
        run_id = stack.trigger(dag_id)
        state = stack.wait_finished(dag_id, run_id, timeout=180)
        tis = stack.task_instances(dag_id, run_id)
        assert state == "success", json.dumps(tis, indent=1)
        assert tis["delete"]["state"] == "success"
        handle = stack.xcom(dag_id, run_id, "create")
        # The readiness wait ran in the triggerer: its probe's line is in the trigger's log.
        trigger_log = stack.task_log(dag_id, run_id, "create", 1, trigger=True)
        assert f"cluster {handle['name']}: ready (2/2 nodes)" in trigger_log
        assert server.store.list("rayclusters", "live") == []
        assert "tok-live-9b2d" not in json.dumps(handle)
    finally:
        web.stop()
        operator.stop()
        server.stop()
