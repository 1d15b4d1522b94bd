"""A spark-submit job runs, for the report, from its driver's registration with the master: the
driver's own start on the Airflow worker used no cluster resource and stays idle ("between
jobs"); the job records when it was submitted, so that wait is visible."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ephemeral.airflow.report import jobs_of
from ephemeral.report.model import ClusterFacts, JobFacts, summarize

CONTEXT: Any = {"dag": SimpleNamespace(dag_id="etl"), "run_id": "r1"}


def _facts(jobs: list[JobFacts]) -> ClusterFacts:
    return ClusterFacts(dag_id="etl", run_id="r1", name="c", engine="spark", backend="local",
                        spec_ref="spark/etl@1", spec_hash="h", created=90.0, ready=100.0,
                        teardown_started=141.0, deleted=142.0, jobs=jobs)


def test_a_spark_job_runs_from_its_registration_and_records_its_submission() -> None:
    master = [JobFacts(job_id="app-1", engine="spark", status="FINISHED", start=110.0,
                       end=140.0, source="spark master")]
    result = {"job_id": "app-1", "cluster": "c", "engine": "spark", "seconds": 37.0,
              "submitted_at": 103.0, "result": {"artifact_uri": "file:///a"}}

    (job,) = jobs_of(CONTEXT, "c", master, [("build", -1, result)], [("build", -1)])
    assert (job.start, job.end, job.submitted) == (110.0, 140.0, 103.0)
    assert job.task == "build"
    summary = summarize(_facts([job]))
    assert summary["busy_s"] == 30.0
    # ready at 100, registered at 110 (the driver started at 103), ended 140, teardown 141.
    assert summary["between_jobs_s"] == 11.0
    assert summary["jobs"][0]["submitted"] == 103.0


def test_a_ray_job_keeps_the_jobs_apis_times() -> None:
    ray = [JobFacts(job_id="raysubmit-1", engine="ray", status="SUCCEEDED", start=101.0,
                    end=120.0, source="ray jobs api")]
    result = {"job_id": "raysubmit-1", "cluster": "c", "engine": "ray", "seconds": 19.5}

    (job,) = jobs_of(CONTEXT, "c", ray, [("trial", 0, result)], [("trial", 0)])
    assert (job.start, job.submitted) == (101.0, None)
    assert job.task == "trial[0]"
