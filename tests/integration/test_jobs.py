"""Real work on real local clusters: Ray Train DDP across two nodes with checkpoint/resume,
Spark ETL with its data-quality gate, live logs, stop, and retries that attach."""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path

import pytest

from ephemeral.backends.base import ClusterHandle
from ephemeral.backends.http import get_json
from ephemeral.backends.local import LocalBackend
from ephemeral.errors import JobFailed
from ephemeral.jobs import JobStatus
from ephemeral.jobs.ray_jobs import RayJobs, ray_jobs_for
from ephemeral.jobs.results import submission_id
from ephemeral.jobs.spark_jobs import connect_session, spark_auth_for, spark_submit

pytestmark = pytest.mark.local
JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs-home")


@pytest.fixture(scope="module")
def ray_cluster(train_ray: tuple[LocalBackend, ClusterHandle]
                ) -> tuple[LocalBackend, ClusterHandle]:
    """The package's shared ray/train-gpu cluster (tests/integration/conftest.py)."""
    return train_ray


@pytest.fixture(scope="module")
def spark_cluster(etl_spark: tuple[LocalBackend, ClusterHandle]
                  ) -> tuple[LocalBackend, ClusterHandle]:
    """The package's shared spark/etl cluster (tests/integration/conftest.py)."""
    return etl_spark


@pytest.fixture
def root(home: Path) -> str:
    return (home / "artifacts").as_uri()


def ray_jobs(cluster: tuple[LocalBackend, ClusterHandle]) -> RayJobs:
    backend, handle = cluster
    return ray_jobs_for(handle, backend)  # with the cluster's token


def train_env(root: str) -> dict:
    return {"working_dir": str(JOBS), "env_vars": {"EPHEMERAL_ARTIFACT_ROOT": root}}


def test_ddp_training_on_two_nodes(ray_cluster: tuple[LocalBackend, ClusterHandle],
                                   root: str) -> None:
    backend, handle = ray_cluster
    jobs = ray_jobs(ray_cluster)
    lines: list[tuple[float, str]] = []
    jid = jobs.submit("python train_ddp.py --run ddp --steps 300 --checkpoint-every 100",
                      runtime_env=train_env(root))
    result = jobs.follow(jid, sink=lambda line: lines.append((time.time(), line)), timeout=600)
    out = result.result
    assert result.status is JobStatus.SUCCEEDED
    assert out["world_size"] == 2
    assert out["loss"] < out["first_loss"] * 0.5  # it learned
    assert out["accuracy"] > 0.8
    assert out["artifact_uri"] == f"{root}/ddp/model/model.pt"
    assert Path(out["artifact_uri"].removeprefix("file://")).stat().st_size > 1000
    metrics = json.loads(Path(out["metrics_uri"].removeprefix("file://")).read_text())
    workers = sorted(n.ip for n in backend.node_plan(handle.name) if n.role == "worker")
    assert metrics["node_ips"] == workers  # one training worker on each worker node
    assert metrics["backend"] == "gloo"  # chosen by Ray Train: no GPU here
    # Logs arrived while the job ran, not only at the end.
    end = jobs.client.get_job_info(jid).end_time / 1000
    first_ckpt = next(t for t, line in lines if "checkpoint at step 100" in line)
    assert first_ckpt < end - 0.5


def latest_checkpoint_step(run_dir: Path) -> int:
    import torch

    snapshot = json.loads((run_dir / "checkpoints" / "checkpoint_manager_snapshot.json")
                          .read_text())
    latest = json.loads(snapshot) if isinstance(snapshot, str) else snapshot
    name = latest["latest_checkpoint_result"]["checkpoint_dir_name"]
    state = torch.load(run_dir / "checkpoints" / name / "state.pt", map_location="cpu")
    return int(state["step"])


def test_stopped_training_resumes_from_its_checkpoint(
    ray_cluster: tuple[LocalBackend, ClusterHandle], root: str, home: Path
) -> None:
    _, handle = ray_cluster
    jobs = ray_jobs(ray_cluster)
    entry = "python train_ddp.py --run resume --steps 4000 --checkpoint-every 100"
    first = jobs.submit(entry, runtime_env=train_env(root))
    run_dir = home / "artifacts" / "resume"
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "checkpoint_manager_snapshot.json").exists():
        assert jobs.status(first) in (JobStatus.PENDING, JobStatus.RUNNING)
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    assert jobs.stop(first) is JobStatus.STOPPED
    # Stopping really stops: no training worker is left running on the cluster.
    time.sleep(2)
    actors = get_json(f"{handle.endpoints.dashboard}/api/v0/actors?limit=1000", timeout=5,
                      headers=ray_cluster[0].access(handle).headers)
    alive = [a for a in actors["data"]["result"]["result"]
             if a["state"] == "ALIVE" and "RayTrainWorker" in a["class_name"]]
    assert alive == []
    saved = latest_checkpoint_step(run_dir)
    assert 100 <= saved < 4000

    second = jobs.submit(entry.replace("4000", str(saved + 200)), runtime_env=train_env(root))
    result = jobs.follow(second, timeout=600)
    assert result.result["resumed_from_step"] == saved
    assert f"resumed from checkpoint at step {saved}" in jobs.logs(second)


def test_a_retry_attaches_to_the_running_job(ray_cluster: tuple[LocalBackend, ClusterHandle]
                                              ) -> None:
    _, handle = ray_cluster
    jobs = ray_jobs(ray_cluster)
    entry = "python -c \"import time, json; time.sleep(6); print(json.dumps({'done': 1}))\""
    jid, attached = jobs.submit_or_attach(entry, task_key="dag/run/task/-1", attempt=1)
    assert (jid, attached) == (submission_id(handle.name, "dag/run/task/-1", 1), False)
    # The task's worker died; its retry (attempt 2) finds attempt 1's job still running.
    again, attached = jobs.submit_or_attach(entry, task_key="dag/run/task/-1", attempt=2)
    assert (again, attached) == (jid, True)
    assert jobs.follow(again, timeout=120).result == {"done": 1}
    # A retry after success reuses the result instead of running the job again.
    after, attached = jobs.submit_or_attach(entry, task_key="dag/run/task/-1", attempt=3)
    assert (after, attached) == (jid, True)
    assert jobs.status(submission_id(handle.name, "dag/run/task/-1", 3)) is None


def test_a_failing_job_raises_with_its_last_log_lines(
    ray_cluster: tuple[LocalBackend, ClusterHandle]
) -> None:
    jobs = ray_jobs(ray_cluster)
    jid = jobs.submit("python -c \"print('about to fail'); raise SystemExit(4)\"")
    with pytest.raises(JobFailed) as err:
        jobs.follow(jid, timeout=120)
    assert err.value.status == "FAILED"
    assert "about to fail" in err.value.log_tail


def test_etl_builds_the_training_dataset(spark_cluster: tuple[LocalBackend, ClusterHandle],
                                         root: str) -> None:
    import pyarrow.parquet as pq

    backend, handle = spark_cluster
    lines: list[str] = []
    # The cluster's defaults, as ephemeral spark-submit and the operator pass them.
    result = spark_submit(handle.endpoints.spark_master or "", str(JOBS / "etl_features.py"),
                          ["--run", "etl", "--rows", "5000"], cluster=handle.name,
                          conf=handle.spark_conf, auth=spark_auth_for(handle, backend),
                          env={"EPHEMERAL_ARTIFACT_ROOT": root}, sink=lines.append, timeout=600)
    assert result.job_id.startswith("app-")
    # Its executors were the workers' size (workers.memory), not Spark's default of 1 GiB.
    (workers,) = [g for g in handle.groups if g.name == "workers"]
    master = get_json(f"{handle.endpoints.spark_ui}/json/", timeout=10)
    (app,) = [a for a in master["completedapps"] if a["id"] == result.job_id]
    assert app["memoryperexecutor"] == workers.memory_bytes // 2**20 != 1024
    out = result.result
    assert out["rows"] + out["validation_rows"] == 5000
    assert 0.15 < out["validation_rows"] / 5000 < 0.25  # a 80/20 split by row id
    assert out["artifact_uri"] == f"{root}/etl/features/train"
    assert out["validation_uri"] == f"{root}/etl/features/validation"
    table = pq.read_table(out["artifact_uri"].removeprefix("file://"))
    assert table.num_rows == out["rows"]
    assert table.column_names == [f"x{i}" for i in range(8)] + ["label"]
    assert 0.3 < out["positive_share"] < 0.7
    assert any("Submitted application" in line or "app-" in line for line in lines)


def raw_table(rows: int, *, null_in: str | None = None, drop: tuple[str, ...] = ()) -> object:
    """A raw events table as the ETL job expects it, optionally broken."""
    import pyarrow as pa

    cols: dict[str, object] = {"id": pa.array(range(rows), pa.int64())}
    for i in range(8):
        values: list[float | None] = [0.1 * i + r for r in range(rows)]
        if null_in == f"f{i}" and rows:
            values[0] = None
        cols[f"f{i}"] = pa.array(values, pa.float64())
    cols["label"] = pa.array([r % 2 for r in range(rows)], pa.int32())
    return pa.table({k: v for k, v in cols.items() if k not in drop})


@pytest.mark.parametrize(("table", "message"), [
    (raw_table(50, null_in="f3"), "null values in required columns: {'f3': 1}"),
    (raw_table(50, drop=("f6", "f7")), "schema drift: missing columns ['f6', 'f7']"),
    (raw_table(0), "the input has no rows"),
], ids=["nulls", "drift", "empty"])
def test_bad_input_fails_the_quality_gate(spark_cluster: tuple[LocalBackend, ClusterHandle],
                                          root: str, tmp_path: Path, table: object,
                                          message: str) -> None:
    import pyarrow.parquet as pq

    backend, handle = spark_cluster
    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(table, raw / "part-0.parquet")
    with pytest.raises(JobFailed) as err:
        spark_submit(handle.endpoints.spark_master or "", str(JOBS / "etl_features.py"),
                     ["--run", "bad", "--input", str(raw)], cluster=handle.name,
                     auth=spark_auth_for(handle, backend),
                     env={"EPHEMERAL_ARTIFACT_ROOT": root}, timeout=300)
    assert f"data quality check failed: {message}" in err.value.log_tail
    assert not glob.glob(str(Path(root.removeprefix("file://")) / "bad" / "features" / "*"))


def test_spark_connect_session(spark_cluster: tuple[LocalBackend, ClusterHandle]) -> None:
    backend, handle = spark_cluster
    spark = connect_session(handle.endpoints.spark_connect or "",
                            token=spark_auth_for(handle, backend).connect_token)
    try:
        assert spark.range(10).selectExpr("sum(id) AS s").collect()[0]["s"] == 45
    finally:
        spark.stop()


def test_the_spark_connect_decorator_hands_a_session_to_task_code(
    spark_cluster: tuple[LocalBackend, ClusterHandle], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ephemeral.airflow.spark import spark_connect

    backend, handle = spark_cluster
    # Where the task's backend finds the token: the shared cluster's home.
    monkeypatch.setenv("EPHEMERAL_HOME", str(backend.home))

    @spark_connect
    def count_even(spark: object, cluster: dict, upto: int) -> int:  # type: ignore[type-arg]
        return int(spark.range(upto).where("id % 2 = 0").count())  # type: ignore[attr-defined]

    import inspect

    assert "spark" not in inspect.signature(count_even).parameters  # Airflow must not expect it
    assert count_even(cluster=handle.model_dump(mode="json"), upto=100) == 50
