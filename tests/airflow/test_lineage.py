"""OpenLineage: the job operators' inputs (URIs in their arguments) and outputs (URIs in their
result line) as datasets, named by one rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ephemeral.airflow.lineage import dataset_of, job_datasets, uris_in_arguments
from ephemeral.jobs.results import JobResult, JobStatus, parse_result_line

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("uri", "dataset"), [
    ("file:///data/raw/x.csv", ("file", "/data/raw/x.csv")),
    ("file:///data/features/", ("file", "/data/features")),
    ("file://localhost/data/x", ("file", "/data/x")),
    ("s3://bucket/runs/r1/model.pt", ("s3://bucket", "runs/r1/model.pt")),
    ("s3a://bucket/features", ("s3://bucket", "features")),
    ("gs://bucket/a/b/", ("gs://bucket", "a/b")),
    ("s3://AKIAIOSFODNN7EXAMPLE:secret@bucket/m", ("s3://bucket", "m")),  # no user-info
    ("file://otherhost/x", None),  # not this host's file
    ("s3://bucket", None),  # a bucket is not a dataset
    ("https://example.com/x", None),
    ("/plain/path", None),
    ("generated", None),
])
def test_one_rule_names_a_dataset_after_its_uri(uri: str, dataset: tuple[str, str] | None
                                               ) -> None:
    assert dataset_of(uri) == dataset


def test_uris_in_arguments_are_inputs_unless_given_to_an_output_flag() -> None:
    args = ["python", "evaluate.py", "--model-uri", "s3://b/m.pt", "--data-uri=gs://g/val",
            "--rows", "10", "--input", "file:///raw.csv", "--output", "s3://b/metrics.json",
            "--output-uri=s3://b/more", "positional-not-a-uri", "file:///bare"]
    assert uris_in_arguments(args) == (
        ["s3://b/m.pt", "gs://g/val", "file:///raw.csv", "file:///bare"],
        ["s3://b/metrics.json", "s3://b/more"])


def test_facets_from_a_real_job_result(tmp_path: Path) -> None:
    """The result line as the jobs print it (jobs/_common.emit_result, run as a process), read
    back the way the operators read it."""
    root = f"file://{tmp_path}/artifacts"
    code = ("import sys; sys.path.insert(0, 'jobs'); from _common import emit_result\n"
            f"emit_result({{'artifact_uri': '{root}/r/features/train',\n"
            f"  'validation_uri': '{root}/r/features/validation',\n"
            f"  'metrics_uri': '{root}/r/features/metrics.json',\n"
            f"  'model_uri': 's3://models/m.pt', 'data_uri': 'generated', 'rows': 3}})\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    result = JobResult(job_id="j", cluster="c", engine="spark", status=JobStatus.SUCCEEDED,
                       seconds=1.0, result=parse_result_line(out))
    # evaluate-like arguments: the model is read, so it stays an input though the job echoes it
    inputs, outputs = job_datasets(["--model-uri", "s3://models/m.pt",
                                    "--input", f"{root}/raw/"], result.result)
    assert inputs == [("s3://models", "m.pt"), ("file", f"{tmp_path}/artifacts/raw")]
    assert sorted(outputs) == [("file", f"{tmp_path}/artifacts/r/features/metrics.json"),
                       ("file", f"{tmp_path}/artifacts/r/features/train"),
                       ("file", f"{tmp_path}/artifacts/r/features/validation")]


def test_an_operator_reports_what_its_execute_returned() -> None:
    pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra")
    from airflow.sdk import BaseOperator

    from ephemeral.airflow.lineage import JobLineageMixin

    class Job(JobLineageMixin, BaseOperator):
        def __init__(self, *, application_args: list[str], **kwargs: object) -> None:
            super().__init__(**kwargs)  # type: ignore[arg-type]
            self.application_args = application_args

        def execute(self, context: object) -> dict[str, object]:
            return JobResult(job_id="j", cluster="c", engine="spark", seconds=1.0,
                             status=JobStatus.SUCCEEDED,
                             result={"artifact_uri": "s3://b/out/part", "rows": 3}
                             ).model_dump(mode="json")

    op = Job(task_id="j", application_args=["--input", "gs://b/raw"])
    before = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in before.inputs] == [("gs://b", "raw")]
    assert before.outputs == []
    op.execute({})
    after = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in after.outputs] == [("s3://b", "out/part")]


def test_the_job_operators_carry_the_lineage_method() -> None:
    from ephemeral.airflow.lineage import JobLineageMixin
    from ephemeral.airflow.operators import RayJobOperator
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    for cls in (RayJobOperator, EphemeralSparkSubmitOperator):
        assert issubclass(cls, JobLineageMixin)
    ray = RayJobOperator(task_id="t", cluster={}, entrypoint="python x.py --data-uri 'gs://b/d'")
    assert ray.lineage_arguments() == ["python", "x.py", "--data-uri", "gs://b/d"]


@pytest.mark.local
@pytest.mark.slow
def test_a_ray_job_reports_its_datasets_through_the_openlineage_listener(
        airflow_db: str, ephemeral_home: Path, tmp_path: Path) -> None:
    """dag.test() of tests/airflow/dags/lineage_ray_job.py on a real Ray cluster, with the
    OpenLineage provider's file transport capturing the events (in a process of its own:
    OpenLineage decides whether it is enabled once, when its plugin loads)."""
    pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra")
    events = tmp_path / "events.jsonl"
    data = tmp_path / "in.csv"
    data.write_text("a\nb\nc\n")
    env = dict(os.environ) | {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "ephemeral-test",
        # the listener emits from a forked child it waits for this long (10 s by default)
        "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "120"}
    code = ("import json, os, sys\n"
            "from airflow.dag_processing.dagbag import DagBag\n"
            "bag = DagBag(dag_folder=os.environ['AIRFLOW__CORE__DAGS_FOLDER'])\n"
            "run = bag.get_dag('lineage_ray_job').test(run_conf={'data_uri': sys.argv[1]})\n"
            "states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}\n"
            "print('RESULT', json.dumps({'state': str(run.state), 'tasks': states}))\n")
    out = subprocess.run([sys.executable, "-c", code, data.as_uri()], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(li for li in out.stdout.splitlines() if li.startswith("RESULT "))
    run = json.loads(line.removeprefix("RESULT "))
    assert run["state"] == "success", (run, out.stdout[-3000:], out.stderr[-3000:])

    def complete() -> dict | None:  # type: ignore[type-arg]
        lines = events.read_text().splitlines() if events.exists() else []
        done = [json.loads(line) for line in lines if line.strip()]
        return next((e for e in done if e["eventType"] == "COMPLETE"
                     and e["job"]["name"] == "lineage_ray_job.copy"), None)

    deadline = time.monotonic() + 60  # the listener may emit from a process of its own
    while (event := complete()) is None and time.monotonic() < deadline:
        time.sleep(1)
    assert event is not None, events.read_text() if events.exists() else "no events file"
    inputs = [(d["namespace"], d["name"]) for d in event["inputs"]]
    outputs = sorted((d["namespace"], d["name"]) for d in event["outputs"])
    assert inputs == [("file", str(data))]
    written = ephemeral_home / "artifacts" / "lineage"
    assert len(outputs) == 2
    assert [Path(name).name for _, name in outputs] == ["metrics.json", "rows.txt"]
    for namespace, name in outputs:
        assert namespace == "file"
        assert Path(name).is_relative_to(written)
        assert Path(name).is_file()
