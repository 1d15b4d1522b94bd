"""The run report through Airflow: teardowns write it (dag.test, in-memory backend), the trials
size themselves from their cluster, the sweep comes from the parameter files, and a failure
notifies with the report's link."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import BaseNotifier

from ephemeral.backends.base import Endpoints, make_handle
from ephemeral.jobs.artifacts import run_slug
from ephemeral.jobs.runtime_env import command_line
from ephemeral.report import load_report, report_uri, report_url
from ephemeral.settings import get_settings
from ephemeral.specs import ClusterIdentity, resolve
from ephemeral.trials import TrialFileError, load_trials
from tests.airflow.conftest import task_states

RUN_ID = "manual__2026-01-02T03:04:05.123456+00:00"

NOTES = "EPHEMERAL_TEST_NOTES"


class FileNotifier(BaseNotifier):
    """A real Airflow notifier that appends its rendered message to a file."""

    template_fields = ("message",)

    def __init__(self, path: str, message: str = "{{ ephemeral_message }}") -> None:
        super().__init__()
        self.path = path
        self.message = message

    def notify(self, context: Any) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps({"message": self.message,
                                  "url": context["ephemeral_report_url"]}) + "\n")


@pytest.fixture
def notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "notes.jsonl"
    monkeypatch.setenv("EPHEMERAL_NOTIFIER", f"{__name__}.FileNotifier")
    monkeypatch.setenv("EPHEMERAL_NOTIFIER_KWARGS", json.dumps({"path": str(path)}))
    return path


def xcoms(dag_id: str, run_id: str, key: str) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.sdk.serde import deserialize
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id,
                                               XComModel.run_id == run_id,
                                               XComModel.key == key).all()
        return {f"{r.task_id}[{r.map_index}]": deserialize(r.value) for r in rows}


def test_teardowns_write_the_run_report_with_every_cluster(airflow_db: str, notes: Path,
                                                           ephemeral_home: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "report_cases.py"))
    assert bag.import_errors == {}
    run = bag.get_dag("report_two_clusters").test()
    states = task_states(run)
    assert str(run.state) == "success", states
    handles = xcoms("report_two_clusters", run.run_id, "return_value")
    ray, spark = handles["create_ray[-1]"], handles["create_spark[-1]"]

    report = load_report("report_two_clusters", run.run_id)
    assert report is not None
    assert {c["name"]: c["setup_task"] for c in report["clusters"]} == {
        ray["name"]: "create_ray", spark["name"]: "create_spark"}
    by_name = {c["name"]: c for c in report["clusters"]}
    gpu = by_name[ray["name"]]
    assert gpu["spec"] == "ray/train-gpu@1"
    assert gpu["spec_hash"] == ray["spec_hash"]
    assert gpu["deletion"] == "complete"
    # Reserved seconds are reported to 0.1 s and the lifetime to 0.001 s, each rounded from the
    # exact value: they may differ by 0.05 + 2 * 0.0005 (a fake cluster lives under a second).
    assert gpu["gpu_seconds"] == pytest.approx(2 * gpu["lifetime_s"], abs=0.06)
    assert gpu["ready"] is not None
    assert by_name[spark["name"]]["gpu_seconds"] == 0
    for c in report["clusters"]:
        parts = c["starting_s"] + c["busy_s"] + c["between_jobs_s"] + c["deleting_s"]
        assert parts == pytest.approx(c["lifetime_s"], abs=0.01)
    # The trials' results, put down to their tasks, with their URIs.
    jobs = {j["task"]: j for j in report["jobs"]}
    assert set(jobs) == {"trial[0]", "trial[1]"}
    assert jobs["trial[1]"]["uris"] == {"artifact_uri": "file:///models/1.pt"}
    assert {j["cluster"] for j in jobs.values()} == {ray["name"]}
    # The GPU spec's trials train on one GPU per worker, as the cluster has.
    results = xcoms("report_two_clusters", run.run_id, "return_value")
    entry = results["trial[0]"]["result"]["entrypoint"]
    assert entry.endswith("--num-workers 2 --gpus-per-worker 1 --cpus-per-worker 8"), entry
    # Both pages exist, and each teardown links to the report.
    html = Path(report_uri("report_two_clusters", run.run_id).removeprefix("file://"))
    assert html.read_text().count('<rect class="cluster"') == 2
    links = xcoms("report_two_clusters", run.run_id, "_link_RunReportLink")
    assert links == {f"{t}[-1]": report_url("report_two_clusters", run.run_id)
                     for t in ("delete_ray", "delete_spark")}
    assert not notes.exists()  # nothing failed, nobody was told


def test_a_failed_job_notifies_with_the_report_link_and_the_report_is_still_written(
        airflow_db: str, notes: Path, ephemeral_home: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "report_cases.py"))
    run = bag.get_dag("report_job_fails").test()
    states = task_states(run)
    assert states["trial[0]"] == "failed", states
    assert states["delete_ray"] == "success", states
    sent = [json.loads(line) for line in notes.read_text().splitlines()]
    url = report_url("report_job_fails", run.run_id)
    assert [n["url"] for n in sent] == [url]
    assert "task trial[0] failed" in sent[0]["message"]
    assert url in sent[0]["message"]
    report = load_report("report_job_fails", run.run_id)
    assert report is not None
    assert len(report["clusters"]) == 2
    assert report["jobs"] == []  # the failed trial pushed no result; no engine to ask


def gpu_and_cpu_handles() -> dict[str, dict[str, Any]]:
    out = {}
    for profile in (None, "ci-cpu"):
        spec = resolve("ray/train-gpu@1", profile)
        handle = make_handle(spec, ClusterIdentity(spec_name="train-gpu", dag_id="d",
                                                   run_id="r", task_id="t"),
                             backend="kubernetes", endpoints=Endpoints())
        out[profile or "gpu"] = handle.model_dump(mode="json")
    return out


class _TI:
    """What the templates call on ``ti``: the upstream XComs of the run."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def xcom_pull(self, task_ids: str, **_: Any) -> Any:
        return self.values[task_ids]


def test_the_reference_trials_render_gpus_per_worker_from_their_cluster(dagbag: Any) -> None:
    dag = dagbag.get_dag("train_distributed")
    trial = dag.get_task("train.trial")
    assert trial.partial_kwargs["pool"] == "ephemeral_gpu_trials"
    entrypoints = trial.expand_input.value["entrypoint"]
    assert len(entrypoints) == len(load_trials("train_distributed"))
    env = dag.get_template_env()
    rendered = {}
    for name, handle in gpu_and_cpu_handles().items():
        features = {"artifact_uri": "file:///f", "validation_uri": "file:///v"}
        ti = _TI({"train.create_ray": handle, "etl.build_features": {"result": features}})
        # argv entrypoints: each word rendered, then quoted into the command Ray runs.
        rendered[name] = [command_line([env.from_string(w).render(ti=ti, dag=dag, run_id=RUN_ID,
                                                                  params={"steps": 10})
                                        for w in e])
                          for e in entrypoints]
    assert all("--num-workers 2 --gpus-per-worker 1 --cpus-per-worker 8" in e
               for e in rendered["gpu"]), rendered["gpu"]
    assert all("--num-workers 2 --gpus-per-worker 0 --cpus-per-worker 1" in e
               for e in rendered["ci-cpu"]), rendered["ci-cpu"]
    # The run's own folder under this deployment's: the run id is the same in another Airflow
    # sharing the artifact root, and two runs can start within one second.
    folder = f"{get_settings().instance}/train_distributed/{run_slug(RUN_ID)}"
    assert run_slug(RUN_ID).startswith("manual__2026-01-02T03_04_05.123456_00_00-")
    assert f"--run {folder}/trial-lr-0.02 " in rendered["gpu"][0]
    assert "--lr 0.02" in rendered["gpu"][0]


def test_the_adhoc_job_gets_the_clusters_scaling_unless_it_sets_it(dagbag: Any) -> None:
    dag = dagbag.get_dag("ray_job_adhoc")
    template = dag.get_task("run_job").entrypoint
    env = dag.get_template_env()
    handles = gpu_and_cpu_handles()
    for entry, handle, expected in [
            ("python train_ddp.py --run a", handles["gpu"],
             "python train_ddp.py --run a --num-workers 2 --gpus-per-worker 1 "
             "--cpus-per-worker 8"),
            ("python train_ddp.py --run a --num-workers 1", handles["ci-cpu"],
             "python train_ddp.py --run a --num-workers 1 --gpus-per-worker 0 "
             "--cpus-per-worker 1"),
            ("python hello_ray.py", handles["gpu"], "python hello_ray.py")]:
        ti = _TI({"validate_request": {"entrypoint": entry}, "create_cluster": handle})
        assert env.from_string(template).render(ti=ti) == expected


def test_a_trial_file_with_an_unknown_option_is_refused_by_name(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "a.json").write_text('{"lr": 0.1, "learning_rate": 2}')
    with pytest.raises(TrialFileError, match=r"a\.json: unknown option 'learning_rate'"):
        load_trials("s", tmp_path)
    (sweep / "a.json").write_text('{"hidden": 6.5}')
    with pytest.raises(TrialFileError, match="hidden must be an integer"):
        load_trials("s", tmp_path)
    with pytest.raises(TrialFileError, match="no trial files"):
        load_trials("none", tmp_path)
