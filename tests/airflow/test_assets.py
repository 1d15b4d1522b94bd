"""Data-aware retraining through Airflow's own Asset machinery (real Airflow, tmp AIRFLOW_HOME):
drift_check emits `feature_drift` only on drift, once per batch; the event queues
train_distributed, whose run the scheduler's own code creates, and that run trains on the
batch without an ETL or a Spark cluster; no DAG can trigger itself. That run also carries the
model gate's latency fail (impossible latency thresholds in its conf): the champion stays, the
run fails with an alert. The gate's pass is the reference run of
tests/airflow/browser/test_services_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ephemeral import assets
from tests.airflow.conftest import task_states
from tests.unit.test_drift import write_features

PROJECT_DAGS = Path(__file__).resolve().parents[2] / "dags"


def bag_dags() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_DAGS))
    assert bag.import_errors == {}
    return dict(bag.dags)


@pytest.mark.usefixtures("airflow_db")
def test_no_dag_can_start_itself_through_an_asset() -> None:
    """The graph DAG -> emitted Asset -> DAG scheduled on it has no cycle."""
    dags = bag_dags()
    emits = {d: assets.emitted_by(dag) for d, dag in dags.items()}
    waits = {d: assets.scheduled_on(dag) for d, dag in dags.items()}
    assert waits["train_distributed"] == {"training_features", "feature_drift"}
    assert "training_features" in emits["feature_etl"]
    assert "feature_drift" in emits["drift_check"]
    assert emits["train_distributed"] == {"train_distributed_run_features", "model_candidate",
                                          "registered_model"}
    # Nothing schedules on what only lineage needs.
    for lineage_only in ("train_distributed_run_features", "model_candidate",
                         "registered_model", "raw_events"):
        assert not any(lineage_only in w for w in waits.values())

    def starts(dag_id: str) -> set[str]:
        return {d for d, w in waits.items() if w & emits[dag_id]}

    for dag_id in dags:
        seen, todo = set(), list(starts(dag_id))
        while todo:
            nxt = todo.pop()
            assert nxt != dag_id, f"{dag_id} starts itself through its Assets"
            if nxt not in seen:
                seen.add(nxt)
                todo += starts(nxt)


@pytest.mark.usefixtures("airflow_db")
def test_lineage_raw_data_to_features_to_model() -> None:
    dags = bag_dags()
    etl = dags["feature_etl"].get_task("build_features")
    assert [a.name for a in etl.inlets] == ["raw_events"]
    assert [a.name for a in etl.outlets] == ["training_features"]
    train = dags["train_distributed"]
    assert {a.name for a in train.get_task("etl.build_features").outlets} == {
        "train_distributed_run_features"}
    trial = train.get_task("train.trial")
    assert {a.name for a in trial.inlets} == {"train_distributed_run_features",
                                              "training_features", "feature_drift"}
    assert [a.name for a in trial.outlets] == ["model_candidate"]
    assert [a.name for a in train.get_task("deploy.register_model").outlets] == [
        "registered_model"]
    assert {a.name for a in dags["drift_check"].get_task("measure").inlets} == {
        "registered_model", "feature_drift"}


# --- Through the metadata database ----------------------------------------------------------

@pytest.fixture
def synced(airflow_db: str) -> Iterator[None]:
    """The DAG folder written to the metadata DB as the DAG processor does (Asset rows, schedule
    references), with train_distributed unpaused: a paused DAG gets no queued Asset events."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():
        bundle.initialize()
        sync_bag_to_db(BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path,
                                    bundle_name=bundle.name), bundle.name, bundle.version)
    with create_session() as session:
        session.get(DagModel, "train_distributed").is_paused = False
    yield
    with create_session() as session:
        session.get(DagModel, "train_distributed").is_paused = True


def plant_model(features_uri: str) -> None:
    """A registered_model event, as POST /api/v2/assets/events would record one (Airflow's own
    AssetManager): the current model was trained on ``features_uri``."""
    from airflow.assets.manager import AssetManager
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        model = session.scalar(select(AssetModel).where(AssetModel.name == assets.MODEL.name))
        AssetManager.register_asset_change(asset=model, extra={"features_uri": features_uri},
                                           session=session)


def drift_events() -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(AssetEvent)
                               .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                               .where(AssetModel.name == assets.DRIFT.name)
                               .order_by(AssetEvent.id)).all()
        return [dict(e.extra) for e in rows]


def clear_queue() -> None:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(AssetDagRunQueue))


def queued_for(dag_id: str) -> int:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return int(session.scalar(select(func.count()).select_from(AssetDagRunQueue)
                                  .where(AssetDagRunQueue.target_dag_id == dag_id)) or 0)


def batch(root: Path, name: str, shift: float) -> str:
    folder = root / "batches" / name / "features"
    write_features(folder / "train", 3000, shift=shift, start=100_000)
    write_features(folder / "validation", 800, shift=shift, start=200_000)
    return folder.as_uri()


def report_of(run: Any) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id="drift_check", run_id=run.run_id,
                                                 task_id="measure", key="return_value").one()
    summary = row.value if isinstance(row.value, dict) else json.loads(row.value)
    uri = summary["report_uri"]
    return dict(json.loads(Path(uri.removeprefix("file://")).read_text()))


@pytest.mark.usefixtures("synced")
def test_drift_check_without_a_model_says_so_and_ends(dagbag: Any, ephemeral_home: Path,
                                                      caplog: pytest.LogCaptureFixture,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:  # a fresh metadata DB has no registered model
        session.query(AssetEvent).delete()
    run = dagbag.get_dag("drift_check").test()
    assert str(run.state) == "success"
    assert task_states(run) == {"measure": "skipped", "drifted": "skipped",
                                "signal_retraining": "skipped"}
    assert "no model has been registered yet" in caplog.text + "".join(capfd.readouterr())
    assert drift_events() == []


@pytest.mark.usefixtures("synced")
def test_drift_check_signals_only_drift_and_once_per_batch(dagbag: Any,
                                                           ephemeral_home: Path) -> None:
    clear_queue()
    root = ephemeral_home / "artifacts"
    reference = write_features(root / "model" / "features" / "train", 4000)
    plant_model(reference)
    before = len(drift_events())
    calm = batch(root, "20261101T000000", shift=0.0)
    run = dagbag.get_dag("drift_check").test()  # the newest batch: the calm one
    assert task_states(run) == {"measure": "success", "drifted": "success",
                                "signal_retraining": "skipped"}
    report = report_of(run)
    assert report["batch_uri"] == f"{calm}/train"
    assert report["reference_uri"] == reference
    assert report["drift"] is False
    assert report["decision"]["signal"] is False
    assert report["config_version"] == 1
    assert len(drift_events()) == before
    assert queued_for("train_distributed") == 0

    shifted = batch(root, "20261102T000000", shift=1.0)
    run = dagbag.get_dag("drift_check").test()
    assert task_states(run) == {"measure": "success", "drifted": "success",
                                "signal_retraining": "success"}
    report = report_of(run)
    assert report["drift"] is True
    assert report["max_psi"] > report["threshold"]
    (event,) = drift_events()[before:]
    assert event["features_uri"] == f"{shifted}/train"
    assert event["validation_uri"] == f"{shifted}/validation"
    assert event["report_uri"].endswith("/report.json")
    assert queued_for("train_distributed") == 1  # the retraining is queued

    run = dagbag.get_dag("drift_check").test()  # the same batch an hour later
    assert task_states(run)["signal_retraining"] == "skipped"
    assert "already signalled" in report_of(run)["decision"]["why"]
    assert len(drift_events()) == before + 1
    clear_queue()


@pytest.mark.usefixtures("synced")
def test_drift_check_follows_the_champion_through_a_rollback(dagbag: Any,
                                                             ephemeral_home: Path) -> None:
    """The reference is the champion's features (a version tag), so rolling back moves it too;
    the newest registered_model event names the rolled-back-from model's."""
    from ephemeral import registry

    clear_queue()
    root = ephemeral_home / "artifacts"
    old = write_features(root / "old" / "features" / "train", 3000)
    new = write_features(root / "new" / "features" / "train", 3000, shift=1.0)
    for features in (old, new):
        version = registry.register("train_distributed", model_uri=f"{features}/model.pt",
                                    tags={"features_uri": features})
        registry.promote("train_distributed", version)
    plant_model(new)
    batch(root, "20261103T000000", shift=0.0)
    assert report_of(dagbag.get_dag("drift_check").test())["reference_uri"] == new
    registry.rollback("train_distributed")
    assert report_of(dagbag.get_dag("drift_check").test())["reference_uri"] == old
    clear_queue()


def test_a_bad_drift_configuration_fails_the_check_naming_the_field(
        dagbag: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "drift_check.yaml"
    bad.write_text("version: 1\npsi_threshold: -1\n")
    run = dagbag.get_dag("drift_check").test(run_conf={"config": str(bad)})
    assert task_states(run)["measure"] == "failed"
    logs = caplog.text + "".join(capfd.readouterr())
    assert "psi_threshold: Input should be greater than 0" in logs


# --- End to end: the event starts a training run --------------------------------------------

def create_asset_triggered_runs() -> list[Any]:
    """What the scheduler's loop does with queued Asset events: its own method, on this DB."""
    from airflow.executors.local_executor import LocalExecutor
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit
    from airflow.utils.types import DagRunType

    runner = SchedulerJobRunner(job=Job(), executors=[LocalExecutor()])
    with create_session() as session:
        with prohibit_commit(session) as guard:
            runner._create_dagruns_for_dags(guard, session)
    with create_session() as session:
        runs = session.query(DagRun).filter_by(dag_id="train_distributed",
                                               run_type=DagRunType.ASSET_TRIGGERED).all()
        for r in runs:
            session.expunge(r)
        return runs


def run_to_end(dag: Any, run_id: str, conf: dict[str, Any] | None = None,
               timeout: float = 1800) -> Any:
    """Run a DagRun the scheduler created, in this process, the way dag.test() runs its own:
    its tasks see the run's real context (triggering_asset_events from the consumed events),
    with ``conf`` as the run's conf when given."""
    import time

    from airflow.models.dagrun import DagRun
    from airflow.sdk import timezone
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    deadline = time.monotonic() + timeout
    with create_session() as session:
        dr = session.query(DagRun).filter_by(dag_id=dag.dag_id, run_id=run_id).one()
        dr.state, dr.start_date = DagRunState.RUNNING, timezone.utcnow()  # as the scheduler
        if conf is not None:
            dr.conf = conf
        session.commit()
        dr.dag = scheduler_dag
        while dr.state == DagRunState.RUNNING:
            assert time.monotonic() < deadline, "the asset-triggered run did not end"
            session.expire_all()
            schedulable, _ = dr.update_state(session=session)
            for ti in schedulable:
                if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                    ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            for ti in [t for t in dr.get_task_instances(session=session)
                       if t.state == TaskInstanceState.SCHEDULED]:
                _run_task(ti=ti, task=dag.task_dict[ti.task_id], run_triggerer=True)
    with create_session() as session:
        dr = session.query(DagRun).filter_by(dag_id=dag.dag_id, run_id=run_id).one()
        session.expunge(dr)
    return dr


# Thresholds no served model meets: the run's gate fails on latency whatever this machine's load.
LATENCY_FAIL = {"max_p50_ms": 0.001, "max_p95_ms": 0.001, "max_p99_ms": 0.001}
# The run's conf: the latency fail, and the fewest training steps (the DAG's default is 300):
# the gate fails on latency whatever the model's accuracy, so more steps would prove nothing.
RUN_CONF = {**LATENCY_FAIL, "steps": 60}


def seed_champion(home: Path, features_uri: str) -> str:
    """An earlier champion in the real MLflow store, trained on ``features_uri``: the run's
    failed gate must leave it where it is."""
    from ephemeral import registry

    earlier = home / "artifacts" / "earlier" / "model.pt"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier model")
    version = registry.register("train_distributed", model_uri=earlier.as_uri(),
                                tags={"features_uri": features_uri})
    registry.promote("train_distributed", version)
    return version


@pytest.mark.local
@pytest.mark.usefixtures("synced")
def test_a_drift_event_starts_a_training_run_on_the_drifted_batch(
        dagbag: Any, ephemeral_home: Path) -> None:
    """One whole training run (Ray, trials, evaluation, Ray Serve) proves two things: the drift
    event's run trains on the drifted batch without Spark, and the model gate's latency fail
    keeps the champion and fails the run with an alert."""
    from ephemeral import registry
    from ephemeral.backends.local import LocalBackend

    clear_queue()
    root = ephemeral_home / "artifacts"
    reference = write_features(root / "model" / "features" / "train", 4000)
    plant_model(reference)
    earlier = seed_champion(ephemeral_home, reference)
    shifted = batch(root, datetime.now(UTC).strftime("%Y%m%dT%H%M%S"), shift=1.0)
    check = dagbag.get_dag("drift_check").test()
    assert task_states(check)["signal_retraining"] == "success"
    assert queued_for("train_distributed") == 1

    runs = create_asset_triggered_runs()
    (run,) = [r for r in runs if r.state == "queued"]
    assert queued_for("train_distributed") == 0  # the event was consumed by that run
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        consumed = session.query(DagRun).filter_by(run_id=run.run_id).one().consumed_asset_events
        # A run consumes every event queued since the last one (other tests' too, in a shared
        # database); choose_features trains on the newest: this one.
        newest = max(consumed, key=lambda e: (e.timestamp, e.id))
        assert newest.extra["features_uri"] == f"{shifted}/train"

    done = run_to_end(dagbag.get_dag("train_distributed"), run.run_id, conf=RUN_CONF)
    states = task_states(done)
    assert states["choose_features"] == "success"
    for task_id in ("etl.create_spark", "etl.build_features", "etl.delete_spark"):
        assert states[task_id] == "skipped", states
    assert states["train.create_ray"] == "success", states
    assert states["train.trial[0]"] == states["train.trial[1]"] == "success", states
    assert states["train.delete_ray"] == "success", states
    from airflow.models.renderedtifields import RenderedTaskInstanceFields

    with create_session() as session:
        rendered = session.query(RenderedTaskInstanceFields).filter_by(
            dag_id="train_distributed", run_id=run.run_id, task_id="train.trial").all()
        assert rendered
        for r in rendered:
            words = r.rendered_fields["entrypoint"]  # an argv list, quoted at submission
            assert words[words.index("--data-uri") + 1] == f"{shifted}/train"
            assert words[words.index("--steps") + 1] == "60"  # the run's conf reached it
    # No Spark cluster was made: the run's report (its teardowns' record) has the Ray one only.
    from ephemeral.airflow.report import run_report

    report = run_report(done)
    assert {c["setup_task"] for c in report["clusters"]} == {"train.create_ray"}, report
    # Released in this process (no triggerer) the moment its last job succeeded, as in make demo.
    assert {c["setup_task"]: c["released_by"] for c in report["clusters"]} == {
        "train.create_ray": "train.serve_latency"}, report["clusters"]
    assert LocalBackend(ephemeral_home).list_owned() == []
    # The tracking store says what the trials trained on: the event's features, not the rows
    # param of an ETL that did not run.
    trials = registry._client().search_runs(
        [registry._client().get_experiment_by_name("train_distributed").experiment_id],
        f"tags.dag_run_id = '{run.run_id}'")
    assert len(trials) == 2
    for trial in trials:
        assert trial.data.params["features_uri"] == f"{shifted}/train"
        assert "rows" not in trial.data.params
    # The gate's latency fail: measured, refused, the champion kept, the run failed with an
    # alert (the registered_model event of a pass is checked by test_services_e2e's run).
    assert str(done.state) == "failed", states
    assert states["train.serve_latency"] == "success", states
    assert states["deploy.gate_failed"] == "failed", states
    assert states["deploy.register_model"] == "skipped", states
    assert registry.champion("train_distributed") == earlier
    assert [v["version"] for v in registry.describe("train_distributed")["versions"]] == [earlier]
    [alert] = root.glob("*/alerts/train_distributed/*.json")  # under the deployment instance
    reason = json.loads(alert.read_text())
    assert "(max_p50_ms): FAIL" in reason["reason"]
    assert reason["report_url"]
    # Every process of this home's clusters is gone (found by the marker the local backend puts
    # in their environment: other agents start engines on this machine meanwhile).
    from tests.airflow.live.probes import cluster_processes

    assert cluster_processes(ephemeral_home) == {}


@pytest.mark.usefixtures("synced")
@pytest.mark.parametrize("conf", [
    {"input": "file:///raw.parquet", "drift": 1.0},
    {"input": "file:///raw.parquet", "rows": 20000},  # the job would ignore it
    {"input": "s3://raw/events.parquet?X-Amz-Signature=abc123&X-Amz-Credential=k"},
], ids=["drift", "rows", "signed-url"])
def test_feature_etl_refuses_what_the_etl_would_ignore_or_leak_before_any_cluster(
        dagbag: Any, ephemeral_home: Path, conf: dict[str, Any]) -> None:
    from ephemeral.backends.local import LocalBackend

    run = dagbag.get_dag("feature_etl").test(run_conf=conf)
    states = task_states(run)
    assert str(run.state) == "failed"
    assert states["check_params"] == "failed"
    assert states["create_spark"] == "upstream_failed"
    assert LocalBackend(ephemeral_home).list_owned() == []
