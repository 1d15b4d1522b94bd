"""The DAGs under Airflow 3.3: they parse light, they run, and they never leak a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ephemeral.backends.local import LocalBackend
from tests.airflow.conftest import task_states
from tests.conftest import engine_pids, other_clusters_pids

PROJECT_DAGS = Path(__file__).resolve().parents[2] / "dags"


def test_every_dag_imports_without_heavy_engines(airflow_db: str) -> None:
    # With the DAG policy, as an install registers it (its entry point): every reference DAG
    # is wired as it checks, and checking pulls in no engine either.
    code = (
        "import json, os, sys\n"
        "from airflow import settings\n"
        "from ephemeral.airflow import policy\n"
        "manager = settings.get_policy_plugin_manager()\n"
        "manager.is_registered(policy) or manager.register(policy)\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(PROJECT_DAGS)!r})\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "  'dags': sorted(bag.dags), 'heavy': [m for m in ('ray', 'pyspark', 'torch',\n"
        "  'kubernetes') if m in sys.modules]}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert "train_distributed" in result["dags"]
    assert result["heavy"] == []


def test_every_reference_dag_that_makes_clusters_notifies_its_failures(airflow_db: str) -> None:
    """A failed teardown must reach the team whichever reference DAG it is in."""
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "from ephemeral.airflow.operators import CreateClusterOperator\n"
        f"bag = DagBag(dag_folder={str(PROJECT_DAGS)!r})\n"
        "print(json.dumps({d.dag_id: [t.task_id for t in d.tasks if not t.on_failure_callback]\n"
        "  for d in bag.dags.values()\n"
        "  if any(isinstance(t, CreateClusterOperator) for t in d.tasks)}))\n")
    # Any importable callable will do: no notification is sent here.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, EPHEMERAL_NOTIFIER="json:dumps"))
    silent = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(silent) >= 5, silent  # the DAGs that make clusters were found
    assert {dag: tasks for dag, tasks in silent.items() if tasks} == {}


def test_reference_dag_structure(dagbag: Any) -> None:
    dag = dagbag.get_dag("train_distributed")
    teardowns = {t.task_id for t in dag.tasks if t.is_teardown}
    setups = {t.task_id for t in dag.tasks if t.is_setup}
    assert setups == {"etl.create_spark", "train.create_ray"}
    assert teardowns == {"etl.delete_spark", "train.delete_ray"}
    assert dag.dagrun_timeout is None
    assert "train.create_ray" in dag.get_task("etl.build_features").downstream_task_ids


def test_dagrun_timeout_with_a_cluster_warns(airflow_db: str) -> None:
    from airflow.sdk import DAG

    from ephemeral.airflow.operators import CreateClusterOperator, DagrunTimeoutWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with DAG("risky", schedule=None, start_date=datetime(2026, 1, 1),
                 dagrun_timeout=timedelta(hours=1)):
            CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu")
    assert any(issubclass(w.category, DagrunTimeoutWarning) and "teardowns SKIPPED"
               in str(w.message) for w in caught)


def xcom_sizes(dag_id: str, run_id: str) -> dict[str, int]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id,
                                               XComModel.run_id == run_id).all()
        return {f"{r.task_id}[{r.map_index}].{r.key}": len(json.dumps(r.value)) for r in rows}


def xcom_values(dag_id: str, run_id: str, key: str) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id,
                                               XComModel.run_id == run_id,
                                               XComModel.key == key).all()
        suffix = "" if key == "return_value" else f".{key}"
        return {f"{r.task_id}[{r.map_index}]{suffix}":
                json.loads(r.value) if isinstance(r.value, str) and key == "return_value"
                else r.value for r in rows}


def deleted_by(run: Any) -> dict[str, str | None]:
    """Each cluster of the run's report by its setup (and map index): the job task that deleted
    it when its job succeeded (delete_cluster_on_success), None when its teardown did. A
    released cluster was gone before its teardown started, with nothing left."""
    from ephemeral.airflow.context import task_label
    from ephemeral.report import load_report

    report = load_report(run.dag_id, run.run_id)
    assert report is not None
    tis = {task_label(ti.task_id, ti.map_index): ti for ti in run.get_task_instances()}
    out: dict[str, str | None] = {}
    for c in report["clusters"]:
        assert c["deletion"] == "complete", c
        if c["released_by"]:  # gone before its job's task ended, so before the teardown began
            ended = tis[c["released_by"]].end_date.timestamp()
            assert c["deleted"] <= ended <= tis[c["teardown_task"]].start_date.timestamp(), c
        index = c["teardown_task"].partition("[")[2]
        out[c["setup_task"] + (f"[{index}" if index else "")] = c["released_by"]
    return out


def no_cluster_left(home: Path, before: set[int]) -> None:
    assert LocalBackend(home).list_owned() == []
    leaked = engine_pids() - before - other_clusters_pids(home)
    assert not leaked, f"processes left: {sorted(leaked)}"


@pytest.mark.local
def test_a_failed_job_still_tears_the_cluster_down(dagbag: Any, ephemeral_home: Path) -> None:
    before = engine_pids()
    run = dagbag.get_dag("job_fails").test()
    states = task_states(run)
    assert str(run.state) == "failed"
    assert states == {"create": "success", "work": "failed", "delete": "success"}
    # delete_cluster_on_success: a failed job leaves the deletion to the teardown.
    assert deleted_by(run) == {"create": None}
    no_cluster_left(ephemeral_home, before)


@pytest.mark.local
def test_a_retry_after_the_release_returns_the_jobs_result(dagbag: Any,
                                                          ephemeral_home: Path) -> None:
    """The job succeeded and released its cluster, then its task failed (post_execute): the
    retry returns the recorded result instead of reaching for the cluster that is gone."""
    before = engine_pids()
    run = dagbag.get_dag("release_then_retry").test()
    states = task_states(run)
    assert str(run.state) == "success", states
    assert states == {"create": "success", "work": "success", "delete": "success"}
    [work] = [ti for ti in run.get_task_instances() if ti.task_id == "work"]
    assert work.try_number == 2
    result = xcom_values("release_then_retry", run.run_id, "return_value")["work[-1]"]
    assert result["status"] == "SUCCEEDED"
    assert result["job_id"].endswith("-a1")
    assert result["result"] == {"ok": 1}
    assert deleted_by(run) == {"create": "work"}
    no_cluster_left(ephemeral_home, before)


@pytest.mark.local
def test_a_setup_that_fails_after_creating_deletes_its_cluster(dagbag: Any,
                                                                ephemeral_home: Path) -> None:
    before = engine_pids()
    run = dagbag.get_dag("setup_times_out").test()
    states = task_states(run)
    # Airflow never runs the teardown of a failed setup: the setup cleaned up itself.
    assert states == {"create": "failed", "work": "upstream_failed",
                      "delete": "upstream_failed"}
    no_cluster_left(ephemeral_home, before)
    # ... and recorded the cluster it made in the run's report (what the failure notification
    # links): no teardown will.
    from ephemeral.report import load_report

    report = load_report("setup_times_out", run.run_id)
    assert report is not None
    [cluster] = report["clusters"]
    assert cluster["setup_task"] == cluster["teardown_task"] == "create", cluster
    assert cluster["deletion"] == "complete", cluster
    assert cluster["busy_s"] == 0, cluster
    assert cluster["lifetime_s"] > 0, cluster


def test_bad_input_fails_the_setup_and_creates_nothing(dagbag: Any, ephemeral_home: Path) -> None:
    run = dagbag.get_dag("setup_bad_input").test()
    assert task_states(run)["create"] == "failed"
    assert LocalBackend(ephemeral_home).list_owned() == []
    assert not (ephemeral_home / "clusters").exists() or not any(
        (ephemeral_home / "clusters").iterdir())


@pytest.mark.local
def test_a_retried_setup_adopts_the_cluster_of_its_first_try(dagbag: Any,
                                                              ephemeral_home: Path) -> None:
    from ephemeral.airflow.context import cluster_identity
    from ephemeral.specs import resolve

    before = engine_pids()
    dag = dagbag.get_dag("happy_path")
    logical = datetime(2026, 11, 1, tzinfo=__import__("datetime").timezone.utc)
    run_id = f"manual__{logical.isoformat()}"
    spec = resolve("ray/adhoc-cpu@1", "ci-cpu", {"workers": {"replicas": 1}})
    # The first try created the cluster and died before pushing XCom.
    context: dict[str, Any] = {"dag": dag, "run_id": run_id,
                               "ti": type("TI", (), {"task_id": "create", "map_index": -1})()}
    backend = LocalBackend(ephemeral_home)
    first = backend.create(spec, identity=cluster_identity(context, spec.spec.name))
    run = dag.test(run_after=logical, logical_date=logical)
    assert run.run_id == run_id
    assert task_states(run) == {"create": "success", "work": "success", "delete": "success"}
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id="happy_path", run_id=run_id,
                                                 task_id="create", key="return_value").one()
        handle = row.value if isinstance(row.value, dict) else json.loads(row.value)
    assert handle["name"] == first.name
    assert handle["created_at"] == first.created_at  # adopted, not created again
    no_cluster_left(ephemeral_home, before)


def test_an_oversized_xcom_is_refused_with_a_pointer_to_the_artifact_store(
    dagbag: Any, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    run = dagbag.get_dag("xcom_too_big").test()
    states = task_states(run)
    assert states == {"big": "failed", "small": "success"}
    sizes = xcom_sizes("xcom_too_big", run.run_id)
    assert "small[-1].return_value" in sizes
    assert not any(key.startswith("big[") for key in sizes)
    logs = caplog.text + "".join(capfd.readouterr())
    assert "is 100000 bytes, over the 4096-byte limit" in logs
    assert "Write the data to the artifact store" in logs


@pytest.mark.local
def test_the_reaper_dag_deletes_the_cluster_of_a_finished_run(dagbag: Any,
                                                               ephemeral_home: Path) -> None:
    """A cluster left by a run that ended without its teardown (dagrun_timeout, a setup killed
    before its XCom push) is deleted by reap_orphans; one of an unknown run is kept."""
    from ephemeral.specs import ClusterIdentity, resolve

    before = engine_pids()
    finished = dagbag.get_dag("xcom_too_big").test()  # any run that has ended (failed)
    spec = resolve("ray/adhoc-cpu@1", "ci-cpu", {"workers": {"replicas": 1}})
    backend = LocalBackend(ephemeral_home)
    leaked = backend.create(spec, identity=ClusterIdentity(
        spec_name=spec.spec.name, dag_id="xcom_too_big", run_id=finished.run_id,
        task_id="create", map_index=-1))
    stranger = backend.create(spec, identity=ClusterIdentity(
        spec_name=spec.spec.name, dag_id="xcom_too_big", run_id="manual__never-ran",
        task_id="create", map_index=-1))
    run = dagbag.get_dag("reap_orphans").test(run_conf={"grace_seconds": 0})
    assert task_states(run) == {"reap": "success"}
    assert [h.name for h in backend.list_owned()] == [stranger.name]
    assert backend.pids(leaked.name) == []
    backend.delete(stranger, wait=True)
    no_cluster_left(ephemeral_home, before)


def test_the_trigger_form_refuses_values_outside_its_schema(dagbag: Any) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.get_dag("ray_job_adhoc")
    assert dag.params.get_param("cluster_spec").schema["enum"] == ["ray/adhoc-cpu",
                                                                   "ray/train-gpu"]
    for conf, field in [({"workers": 0}, "workers"), ({"gpus_per_worker": 9}, "gpus_per_worker"),
                        ({"cluster_spec": "ray/nope"}, "cluster_spec"),
                        ({"timeout_minutes": 0}, "timeout_minutes")]:
        with pytest.raises(ParamValidationError, match=field):
            dag.test(run_conf=conf)


@pytest.mark.parametrize(("conf", "refused_by", "message"), [
    ({"entrypoint": "python ../../etc/passwd.py"}, "validate_request", "is not a script in jobs/"),
    ({"entrypoint": "bash -c 'rm -rf /'"}, "validate_request",
     "must be `python <script in jobs/> [args]`"),
    ({"pip": ["numpy", "--index-url https://pypi.example/simple"]}, "validate_request",
     "pip[1]: '--index-url https://pypi.example/simple' holds a pip option"),
    ({"workers": 5}, "validate_request",
     "workers: 5 is above the spec's maxReplicas (4) of worker group 'cpu'"),
    ({"gpus_per_worker": 1}, "validate_request",
     "gpus_per_worker: 1 is above the spec's 0 GPU(s) per worker"),
    ({"cluster_spec": "ray/train-gpu", "profile": "ci-cpu", "gpus_per_worker": 1},
     "validate_request", "workerGroups.gpu.gpus: profile ci-cpu runs without GPUs"),
    ({"timeout_minutes": 121}, "validate_request",
     "timeout_minutes: the job timeout 7260 s (2h01m) does not fit in ray/adhoc-cpu@1's "
     "lifetime.ttl 2h (7200 s)"),
    # Only the backend knows this host has no GPU: the setup refuses before creating anything.
    ({"cluster_spec": "ray/train-gpu"}, "create_cluster", "asks for 2 GPU(s) but this host has 0"),
], ids=["outside-jobs", "not-python", "pip-option", "workers-above-max", "gpus-above-spec",
        "ci-cpu-gpus", "timeout-above-ttl", "gpus-here"])
def test_bad_requests_are_refused_by_name_and_nothing_is_created(
    dagbag: Any, ephemeral_home: Path, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, conf: dict[str, Any], refused_by: str, message: str,
) -> None:
    run = dagbag.get_dag("ray_job_adhoc").test(run_conf=conf)
    states = task_states(run)
    assert states[refused_by] == "failed"
    assert states["run_job"] == "upstream_failed"
    assert message in caplog.text + "".join(capfd.readouterr())
    assert LocalBackend(ephemeral_home).list_owned() == []


def adhoc_form(dag: Any) -> dict[str, Any]:
    """The form's fields as the UI receives them: the serialized DAG's params, through JSON."""
    from airflow.serialization.serialized_objects import DagSerialization

    back = DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(dag))))
    return json.loads(json.dumps({k: v.dump() for k, v in back.params.items()}))


def test_the_adhoc_form_reads_well(dagbag: Any) -> None:
    form = adhoc_form(dagbag.get_dag("ray_job_adhoc"))
    # The UI marks a field required when its type does not admit null.
    required = {k for k, f in form.items()
                if "null" not in (t if isinstance(t := f["schema"]["type"], list) else [t])}
    assert required == {"cluster_spec", "workers", "entrypoint", "timeout_minutes"}
    assert form["pip"]["value"] is None
    assert form["gpus_per_worker"]["value"] is None
    # A null profile shows the label of "None" (the UI looks up "null", then "None").
    assert form["profile"]["value"] is None
    assert form["profile"]["schema"]["values_display"]["None"].startswith("none")
    assert all(f["description"] and f["schema"]["title"] for f in form.values()), form
    # Sections open in the order of their first field: the cluster, then the job.
    sections = list(dict.fromkeys(f["schema"]["section"] for f in form.values()))
    assert sections == ["Cluster", "Job"]


def load_adhoc_dag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, specs: Path,
                   jobs: Path | None = None) -> Any:
    """The DAG file copied away from the checkout and parsed with the given folders."""
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path / "deployed_dags"
    folder.mkdir()
    (folder / "ray_job_adhoc.py").write_text((PROJECT_DAGS / "ray_job_adhoc.py").read_text())
    monkeypatch.setenv("EPHEMERAL_SPECS_DIR", str(specs))
    if jobs is not None:
        monkeypatch.setenv("EPHEMERAL_JOBS_DIR", str(jobs))
    return DagBag(dag_folder=str(folder))


def test_the_adhoc_dag_deployed_apart_finds_specs_and_jobs_in_the_configured_folders(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, airflow_db: str) -> None:
    specs, jobs = tmp_path / "specs", tmp_path / "jobs"
    (specs / "ray").mkdir(parents=True)
    jobs.mkdir()
    checkout = PROJECT_DAGS.parent
    (specs / "ray" / "adhoc-cpu.yaml").write_text(
        (checkout / "cluster_specs" / "ray" / "adhoc-cpu.yaml").read_text())
    (jobs / "mine.py").write_text("print('hi')\n")
    bag = load_adhoc_dag(monkeypatch, tmp_path, specs, jobs)
    assert bag.import_errors == {}
    dag = bag.dags["ray_job_adhoc"]
    assert dag.params.get_param("cluster_spec").schema["enum"] == ["ray/adhoc-cpu"]
    check = dag.get_task("validate_request").python_callable
    conf = {k: v.value for k, v in dag.params.items()} | {"entrypoint": "python mine.py --x 1"}
    request = check(params=conf)
    assert (request["working_dir"], request["entrypoint"]) == (str(jobs), "python mine.py --x 1")
    assert request["spec"] == "ray/adhoc-cpu@1"
    from ephemeral.adhoc import RequestError

    with pytest.raises(RequestError, match=r"'hello_ray\.py' is not a script in jobs/"):
        check(params=conf | {"entrypoint": "python hello_ray.py"})


def test_the_adhoc_dag_without_specs_fails_to_import_naming_the_folder_and_setting(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, airflow_db: str) -> None:
    empty = tmp_path / "no_specs"
    empty.mkdir()
    bag = load_adhoc_dag(monkeypatch, tmp_path, empty)
    (error,) = bag.import_errors.values()
    assert f"no Ray cluster spec found in {empty / 'ray'}" in error
    assert "set EPHEMERAL_SPECS_DIR" in error
    assert "ray_job_adhoc" not in bag.dags


@pytest.mark.local
def test_an_adhoc_job_from_the_form_runs_and_its_cluster_goes(dagbag: Any,
                                                               ephemeral_home: Path) -> None:
    before = engine_pids()
    run = dagbag.get_dag("ray_job_adhoc").test(run_conf={
        "profile": "ci-cpu", "workers": 1, "entrypoint": "python hello_ray.py"})
    assert task_states(run) == {"validate_request": "success", "create_cluster": "success",
                                "run_job": "success", "delete_cluster": "success",
                                "job_result": "success"}
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id="ray_job_adhoc", run_id=run.run_id,
                                                 task_id="run_job", key="return_value").one()
    value = row.value if isinstance(row.value, dict) else json.loads(row.value)
    assert value["status"] == "SUCCEEDED"
    assert len(value["result"]["nodes"]) == 2  # head + the one worker the form asked for
    assert deleted_by(run) == {"create_cluster": "run_job"}
    no_cluster_left(ephemeral_home, before)


@pytest.mark.local
def test_a_mapped_task_group_runs_one_cluster_per_dataset(dagbag: Any,
                                                          ephemeral_home: Path) -> None:
    before = engine_pids()
    run = dagbag.get_dag("per_dataset_clusters").test(run_conf={"datasets": ["eu", "us"]})
    states = task_states(run)
    assert str(run.state) == "success", states
    for i in (0, 1):
        assert states[f"per_dataset.create[{i}]"] == "success"
        assert states[f"per_dataset.delete[{i}]"] == "success"
    assert deleted_by(run) == {f"per_dataset.create[{i}]": f"per_dataset.train[{i}]"
                               for i in (0, 1)}
    no_cluster_left(ephemeral_home, before)
