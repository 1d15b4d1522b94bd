"""A job is busy from its submission on both engines: a Spark application counts from when
spark-submit started its driver (the master only knows when the driver registered), as a Ray
job counts from its submission in the Jobs API."""

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


def test_a_spark_job_counts_from_when_its_driver_was_started() -> None:
    master = [JobFacts(job_id="app-1", engine="spark", status="FINISHED", start=110.0,
                       end=140.0, source="spark master")]
    result = {"job_id": "app-1", "cluster": "c", "engine": "spark", "seconds": 37.0,
              "submitted_at": 103.0, "result": {"artifact_uri": "file:///a"}}

    (job,) = jobs_of(CONTEXT, "c", master, [("build", -1, result)], [("build", -1)])
    assert job.start == 103.0
    assert job.end == 140.0
    assert job.task == "build"
    summary = summarize(_facts([job]))
    assert summary["busy_s"] == 37.0
    assert summary["between_jobs_s"] == 4.0  # ready at 100, driver started at 103, 140 -> 141


def test_without_a_submission_time_the_engines_start_stays() -> None:
    ray = [JobFacts(job_id="raysubmit-1", engine="ray", status="SUCCEEDED", start=101.0,
                    end=120.0, source="ray jobs api")]
    result = {"job_id": "raysubmit-1", "cluster": "c", "engine": "ray", "seconds": 19.5}

    (job,) = jobs_of(CONTEXT, "c", ray, [("trial", 0, result)], [("trial", 0)])
    assert job.start == 101.0
    assert job.task == "trial[0]"


def test_a_submission_after_the_engines_start_does_not_move_it_later() -> None:
    # Clocks of two hosts: a driver host slightly ahead must not shorten the job.
    master = [JobFacts(job_id="app-2", engine="spark", status="FINISHED", start=110.0,
                       end=140.0, source="spark master")]
    result = {"job_id": "app-2", "cluster": "c", "engine": "spark", "seconds": 30.0,
              "submitted_at": 111.0}

    (job,) = jobs_of(CONTEXT, "c", master, [("build", -1, result)], [("build", -1)])
    assert job.start == 110.0
