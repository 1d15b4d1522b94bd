"""The reference DAG through Airflow's services on PostgreSQL: train_distributed triggered over
REST API v2 runs to success, its setups and Ray jobs wait in the triggerer (deferred, no worker
slot held), every cluster is deleted, and every XCom row in the database is metadata. The run
is also the reference DAG's end-to-end run and the model gate's pass: the candidate is
registered in the real MLflow store, the champion alias moves to it from an earlier one, and
the registration names the features it was trained on (the latency fail is in the drift run of
tests/airflow/test_assets.py). One run carries both: each takes two minutes of Spark and Ray."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ephemeral.devstack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.local]
DAG = "train_distributed"
XCOM_LIMIT = 4096


def deferred_tasks(stack: Stack, run_id: str) -> dict[str, int]:
    """Task id -> how many trigger logs it has: each deferral's trigger writes one, in the
    triggerer, next to the task's log (``attempt=N.log.trigger.<id>.log``)."""
    run_dir = stack.home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}"
    found: dict[str, int] = defaultdict(int)
    for log in run_dir.rglob("*.log.trigger.*"):
        task = next(p for p in log.parts if p.startswith("task_id="))[len("task_id="):]
        found[task] += 1
    return dict(found)


def query(stack: Stack, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of the stack's metadata database (JSON columns decoded)."""
    import psycopg2  # type: ignore[import-untyped]

    assert stack.postgres is not None, "this test runs on the PostgreSQL stack"
    pg = stack.postgres
    conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                            dbname=pg.database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def xcom_sizes(stack: Stack, run_id: str) -> dict[str, int]:
    rows = query(stack, "SELECT task_id, map_index, key, octet_length(value::text) FROM xcom "
                        "WHERE dag_id = %s AND run_id = %s", DAG, run_id)
    return {f"{t}[{m}].{k}": int(n) for t, m, k, n in rows}


def xcom_values(stack: Stack, run_id: str, key: str) -> dict[str, Any]:
    """``task[map index]`` (and ``.key`` but for return values) -> the XCom's value."""
    rows = query(stack, "SELECT task_id, map_index, value FROM xcom "
                        "WHERE dag_id = %s AND run_id = %s AND key = %s", DAG, run_id, key)
    suffix = "" if key == "return_value" else f".{key}"
    return {f"{t}[{m}]{suffix}": json.loads(v) if isinstance(v, str) and key == "return_value"
            else v for t, m, v in rows}


def newest_model_event(stack: Stack) -> dict[str, Any]:
    """The extra of the newest registered_model Asset event."""
    from ephemeral import assets

    rows = query(stack, "SELECT e.extra FROM asset_event e JOIN asset a ON e.asset_id = a.id "
                        "WHERE a.name = %s ORDER BY e.id DESC LIMIT 1", assets.MODEL.name)
    assert rows, "no registered_model event"
    extra = rows[0][0]
    return dict(json.loads(extra) if isinstance(extra, str) else extra)


def moment(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def seed_champion(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> str:
    """An earlier champion in the stack's real MLflow store (its EPHEMERAL_HOME's embedded one);
    this process reads the stack's registry and artifacts from here on."""
    from ephemeral import registry

    assert stack.ephemeral_home is not None
    monkeypatch.setenv("EPHEMERAL_HOME", str(stack.ephemeral_home))
    monkeypatch.setenv("EPHEMERAL_INSTANCE", stack.instance)
    earlier = stack.ephemeral_home / "artifacts" / "earlier" / "model.pt"
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_bytes(b"an earlier model")
    version = registry.register(DAG, model_uri=earlier.as_uri())
    registry.promote(DAG, version)
    return version


def test_train_distributed_through_the_services_on_postgres(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral import registry
    from ephemeral.jobs import artifacts
    from tests.airflow.live.probes import cluster_processes

    assert stack.database_url.startswith("postgresql")
    earlier_version = seed_champion(stack, monkeypatch)
    # With a logical date, as the trigger form sends by default.
    # The smallest data and training the gate still passes (its accuracy and F1 need 0.8: the
    # better trial reaches about 0.95 at 60 steps on 1000 rows).
    run_id = stack.trigger(DAG, {"profile": "ci-cpu", "rows": 1000, "steps": 60},
                           logical_date="now")
    state = stack.wait_finished(DAG, run_id, timeout=1200)
    tis = stack.task_instances(DAG, run_id)
    states = {k: v["state"] for k, v in tis.items()}
    assert state == "success", states
    assert states["etl.delete_spark"] == "success"
    assert states["train.delete_ray"] == "success"
    assert states["train.serve_latency"] == states["deploy.register_model"] == "success"
    assert states["deploy.gate_failed"] == "skipped"

    # The setups and the Ray jobs deferred: their waits ran as triggers in the triggerer.
    deferred = deferred_tasks(stack, run_id)
    ray_jobs = [k for k in tis if k.startswith("train.trial")] + ["train.evaluate"]
    for task in ["etl.create_spark", "train.create_ray", *{k.split("[")[0] for k in ray_jobs}]:
        assert deferred.get(task), f"{task} never deferred: {deferred}"
    run_dir = stack.home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}"
    waited = "".join(p.read_text(errors="replace")
                     for p in run_dir.glob("task_id=train.create_ray/*.log.trigger.*"))
    assert "train.create_ray" in waited, "no trigger of the Ray setup started in the triggerer"
    assert "Trigger fired event" in waited or "trigger completed" in waited, waited[-2000:]

    # Each cluster went the moment its last job succeeded (delete_cluster_on_success): the
    # Ray one from the triggerer, where its job's trigger saw the job end; the teardowns found
    # them gone and reported the releases.
    assert stack.ephemeral_home is not None
    # Under the stack's deployment instance (artifacts.deployment_uri).
    [report_file] = (stack.ephemeral_home / "artifacts").glob(f"*/reports/{DAG}/*/report.json")
    report = json.loads(report_file.read_text())
    assert {c["setup_task"]: c["released_by"] for c in report["clusters"]} == {
        "etl.create_spark": "etl.build_features", "train.create_ray": "train.serve_latency"}
    assert all(c["deletion"] == "complete" for c in report["clusters"]), report["clusters"]
    for c in report["clusters"]:
        # Released before its job's task ended, so before its teardown began; the teardown
        # succeeded.
        ended = moment(tis[c["released_by"]]["end_date"])
        assert c["deleted"] <= ended <= moment(tis[c["teardown_task"]]["start_date"]), c
        assert states[c["teardown_task"]] == "success", c
        # What `make demo` prints: each cluster's lifetime, split into jobs and idle by cause.
        assert c["busy_s"] > 0, c
        parts = c["busy_s"] + c["starting_s"] + c["between_jobs_s"] + c["deleting_s"]
        assert abs(parts - c["lifetime_s"]) < 0.5, c
    released = "".join(p.read_text(errors="replace") for p in
                       run_dir.glob("task_id=train.serve_latency/*.log.trigger.*"))
    assert "its last job succeeded" in released, released[-2000:]

    # The gate passed: the candidate is registered in the real MLflow store (the stack's) and
    # is the champion now, in place of the earlier one.
    latest = Path(artifacts.deployment_uri("registry", DAG, "latest.json")
                  .removeprefix("file://"))
    record = json.loads(latest.read_text())
    assert Path(record["model_uri"].removeprefix("file://")).is_file()  # the registry/ copy
    assert record["accuracy"] >= 0.8
    assert record["previous_champion"] == earlier_version
    assert registry.champion(DAG) == record["version"] != earlier_version
    [mine] = [v for v in registry.describe(DAG)["versions"] if v["version"] == record["version"]]
    assert mine["source"] == record["model_uri"]
    assert mine["run_id"]  # the best trial's tracking run
    for metric in ("accuracy", "f1", "p50_ms", "p95_ms", "p99_ms", "throughput_rps"):
        assert f"metric.{metric}" in mine["tags"], mine["tags"]
    # The extra links' URLs, where the Airflow UI reads them: each setup has its engine's.
    links = xcom_values(stack, run_id, "_link_RayDashboardLink")
    links |= xcom_values(stack, run_id, "_link_SparkMasterLink")
    handles = xcom_values(stack, run_id, "return_value")
    ray, spark = handles["train.create_ray[-1]"], handles["etl.create_spark[-1]"]
    assert links["train.create_ray[-1]._link_RayDashboardLink"] == ray["endpoints"]["dashboard"]
    assert links["etl.create_spark[-1]._link_SparkMasterLink"] == spark["endpoints"]["spark_ui"]
    assert links["etl.create_spark[-1]._link_RayDashboardLink"] == ""
    # What drift_check compares new batches with: this run's ETL output, in the version's tag
    # and in the registered_model event.
    features = handles["etl.build_features[-1]"]["result"]
    assert mine["tags"]["features_uri"] == features["artifact_uri"]
    assert mine["tags"]["validation_uri"] == features["validation_uri"]
    assert newest_model_event(stack)["features_uri"] == features["artifact_uri"]

    # Every cluster of the run is gone, and every process of them; nothing of the stack's
    # instance is left.
    assert stack.delete_clusters() == []
    assert not list((Path(str(stack.ephemeral_home)) / "clusters").glob("*/state.json"))
    assert cluster_processes(stack.ephemeral_home) == {}

    # XCom in the metadata database holds metadata only.
    sizes = xcom_sizes(stack, run_id)
    assert sizes, "no XCom rows found for the run"
    too_big = {k: n for k, n in sizes.items() if n >= XCOM_LIMIT}
    assert not too_big, too_big
