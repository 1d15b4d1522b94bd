"""Failures only a running Airflow can produce, against real local Ray clusters.

- A setup task process SIGKILLed after it created its cluster and before its XCom push: with a
  retry, the retry adopts the same cluster and the teardown deletes it; without one, Airflow
  never runs the teardown and the run-end listener deletes the cluster when the run fails.
- A run whose ``dagrun_timeout`` fires: the scheduler skips the teardown, the run-end listener
  deletes the cluster; the reaper (asking the api-server) finds nothing left to do.

These are rows 8a-8c of the fault matrix (docs/reliability.md), timed from the fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ephemeral.devstack import Stack
from tests.airflow.live.probes import monotonic_at, seconds_until_gone, when
from tests.airflow.live.reliability import Results

pytestmark = [pytest.mark.local, pytest.mark.slow, pytest.mark.timeout(900)]

GONE_BOUND = 60.0  # issue 9: every cluster of a finished run gone within 60 s


def reap(stack: Stack, *args: str) -> list[dict[str, object]]:
    """`ephemeral reap` as an operator runs it, asking this Airflow for run states."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "EPHEMERAL_"))}
    env |= {"EPHEMERAL_HOME": str(stack.ephemeral_home), "EPHEMERAL_INSTANCE": stack.instance,
            "EPHEMERAL_AIRFLOW_URL": stack.url,
            "EPHEMERAL_AIRFLOW_USER": "admin", "EPHEMERAL_AIRFLOW_PASSWORD": stack.password}
    exe = str(Path(sys.executable).parent / "ephemeral")
    proc = subprocess.run([exe, "reap", "--grace", "0", "--json", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return list(json.loads(proc.stdout))


def created_names(stack: Stack, dag_id: str, run_id: str, attempt: int = 1) -> set[str]:
    """The clusters a setup try made, as its log names them."""
    return set(re.findall(r"creating (eph-[a-z0-9-]+)",
                          stack.task_log(dag_id, run_id, "create", attempt)))


def test_setup_killed_before_xcom_push_is_adopted_by_its_retry(stack: Stack,
                                                                matrix: Results) -> None:
    with matrix.case("8a", "ray", "setup SIGKILLed after create, retried", 300) as row:
        _setup_killed_retried(stack, row)


def _setup_killed_retried(stack: Stack, row: dict[str, object]) -> None:
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
    # Timed from the kill to the end of the run's last process: the whole retried run.
    row["seconds"] = seconds_until_gone(stack, dag_id, run_id, {handle["name"]},
                                        monotonic_at(when(tries[0]["end_date"])), 300)
    row["outcome"] = "run success, retry adopted the cluster, teardown deleted it"
    # The extra link as the UI gets it.
    assert stack.links(dag_id, run_id, "create")["Ray dashboard"] == \
        handle["endpoints"]["dashboard"]


def test_setup_killed_without_retry_the_run_end_deletes(stack: Stack,
                                                         matrix: Results) -> None:
    with matrix.case("8b", "ray", "setup SIGKILLed after create, no retry", GONE_BOUND) as row:
        dag_id = "killed_setup_no_retry"
        run_id = stack.trigger(dag_id)
        assert stack.wait_finished(dag_id, run_id) == "failed"
        tis = stack.task_instances(dag_id, run_id)
        assert tis["create"]["state"] == "failed"
        # Airflow 3.3 never runs the teardown of a failed setup: the run-end listener deletes.
        assert tis["delete"]["state"] == "upstream_failed"
        names = created_names(stack, dag_id, run_id)
        assert names
        row["seconds"] = seconds_until_gone(stack, dag_id, run_id, names,
                                            monotonic_at(when(tis["create"]["end_date"])),
                                            GONE_BOUND)
        row["outcome"] = "run failed, teardown upstream_failed, run-end listener deleted"
        # The reaper, asking the api-server, has nothing left of this run to delete.
        assert not [d for d in reap(stack, "--dry-run") if d["cluster"] in names]


def test_dagrun_timeout_skips_the_teardown_and_the_run_end_deletes(stack: Stack,
                                                                  matrix: Results) -> None:
    with matrix.case("8c", "ray", "dagrun_timeout while the job runs", GONE_BOUND) as row:
        dag_id = "run_times_out"
        run_id = stack.trigger(dag_id)
        assert stack.wait_finished(dag_id, run_id) == "failed"
        tis = stack.task_instances(dag_id, run_id)
        # Usually the job runs when the timeout fires; on a busy host the setup may still be
        # waiting for its cluster: skipped too, with the cluster made.
        assert tis["create"]["state"] in ("success", "skipped"), json.dumps(tis, indent=1)
        assert tis["delete"]["state"] == "skipped", json.dumps(tis, indent=1)
        status, run = stack.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        assert status == 200, run
        names = created_names(stack, dag_id, run_id)
        assert names
        row["seconds"] = seconds_until_gone(stack, dag_id, run_id, names,
                                            monotonic_at(when(run["end_date"])), GONE_BOUND)
        row["outcome"] = (f"run failed, setup {tis['create']['state']}, teardown skipped, "
                          "run-end listener deleted")


@contextlib.contextmanager
def _trigger_moved_away(stack: Stack, dag_id: str, run_id: str, task_id: str) -> Iterator[None]:
    """Once the task's trigger runs in the triggerer, hand it to another triggerer that
    heartbeats (a row of its own in the job table), as Airflow does when the first one's
    heartbeat lapsed: the live one cancels it. On leaving, that other triggerer is gone and the
    live one takes the trigger back as an orphan."""
    import sqlalchemy as sa

    engine = sa.create_engine(stack.env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    query = sa.text("SELECT t.id, t.triggerer_id FROM trigger t JOIN task_instance ti "
                    "ON ti.trigger_id = t.id WHERE ti.dag_id = :d AND ti.run_id = :r "
                    "AND ti.task_id = :t")
    deadline = time.monotonic() + 60
    other = None
    try:
        while True:
            with engine.begin() as db:
                row = db.execute(query, {"d": dag_id, "r": run_id, "t": task_id}).first()
                if row is not None and row.triggerer_id is not None:
                    other = db.execute(sa.text(
                        "INSERT INTO job (job_type, state, start_date, latest_heartbeat, "
                        "hostname) VALUES ('TriggererJob', 'running', :now, :now, 'elsewhere') "
                        "RETURNING id"), {"now": datetime.now(UTC)}).scalar_one()
                    db.execute(sa.text("UPDATE trigger SET triggerer_id = :o WHERE id = :i"),
                               {"o": other, "i": row.id})
                    break
            assert time.monotonic() < deadline, f"no triggerer took the trigger: {row}"
            time.sleep(0.2)
        yield
    finally:
        if other is not None:
            with engine.begin() as db:
                db.execute(sa.text("UPDATE trigger SET triggerer_id = NULL "
                                   "WHERE triggerer_id = :o"), {"o": other})
                db.execute(sa.text("DELETE FROM job WHERE id = :o"), {"o": other})
        engine.dispose()


def test_the_triggerer_finds_a_kubernetes_connection_by_id(stack: Stack,
                                                            tmp_path: Path) -> None:
    """The connection lives in Airflow's database, not in the environment: the setup and the
    triggerer (another process) each look it up by id; only the id is serialized.

    On the way the wait is moved to another triggerer, as Airflow does when a triggerer's
    heartbeat lapses: it cancels the trigger with a user's cancel, so its on_kill runs
    (apache/airflow#73454). The cluster must stay, and the wait go on where it lands."""
    from tests.kubernetes.apiserver import ApiServer, Operator, WebEndpoints
    from tests.kubernetes.manifest_validation import validate_manifest

    server = ApiServer(validate=validate_manifest, namespace="live", token="tok-live-9b2d").start()
    operator = Operator(server.store).start()
    operator.paused = True  # not ready at the first probe, however slow: the setup must defer
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
        deadline = time.monotonic() + 120
        while (stack.task_instances(dag_id, run_id).get("create", {}).get("state") not in
               {"deferred", "failed", "upstream_failed"} and time.monotonic() < deadline):
            time.sleep(0.5)
        with _trigger_moved_away(stack, dag_id, run_id, "create"):
            moved = "moved to another triggerer: it goes on there, nothing is deleted"
            while moved not in stack.task_log(dag_id, run_id, "create", 1, trigger=True):
                assert time.monotonic() < deadline, stack.logs("triggerer")
                time.sleep(0.5)
        assert len(server.store.list("rayclusters", "live")) == 1  # on_kill stood down
        operator.paused = False
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


def test_the_api_server_says_which_deployment_it_is(stack: Stack) -> None:
    """The plugin's ``GET /ephemeral/deployment`` in a real api-server: a reaper of this
    instance believes it, one of another instance (staging's reaper given this URL) is refused
    before it asks for any run."""
    from ephemeral.errors import EphemeralError
    from ephemeral.reaper import AirflowApiLookup

    def lookup(instance: str) -> AirflowApiLookup:
        return AirflowApiLookup(stack.url, username="admin", password=stack.password,
                                instance=instance)

    lookup(stack.instance).check_deployment()
    with pytest.raises(EphemeralError, match=f"deployment instance '{stack.instance}'"):
        lookup("other-deployment")("any_dag", "any_run")


def test_the_reaper_reads_a_deleted_run_only_from_airflows_own_not_found(stack: Stack) -> None:
    """The real api-server: a run it has not is None (the run-end rule may delete its
    cluster); a run id it cannot route (with '/', allowed by a custom allowed_run_id_pattern)
    meets its "API route not found", which is no answer about the run: an error, so kept."""
    from ephemeral.errors import EphemeralError
    from ephemeral.reaper import AirflowApiLookup

    asking = AirflowApiLookup(stack.url, username="admin", password=stack.password,
                              instance=stack.instance)
    assert asking("train_distributed", "manual__never-ran") is None
    assert asking.dag("no_such_dag") is None
    assert asking.dag("train_distributed") is not None
    with pytest.raises(EphemeralError, match=r"HTTP 404 .*API route not found"):
        asking("train_distributed", "team/exp-1")
    # The states a halted run's tasks are counted in are Airflow's (a 422 would say not):
    # the run is looked up, and has not been.
    with pytest.raises(EphemeralError, match=r"HTTP 404 .*manual__never-ran"):
        asking.tasks_under_way("train_distributed", "manual__never-ran")
