"""A spark-submit job runs, for the report, from its driver's registration with the master: the
driver's own start on the Airflow worker used no cluster resource and stays idle ("between
jobs"); the job records when it was submitted, so that wait is visible."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ephemeral.airflow.report import jobs_of
from ephemeral.report.model import ClusterFacts, JobFacts, summarize

CONTEXT: Any = {"dag": SimpleNamespace(dag_id="etl"), "run_id": "r1"}
LIFE_1, LIFE_2 = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"


def _facts(jobs: list[JobFacts]) -> ClusterFacts:
    return ClusterFacts(dag_id="etl", run_id="r1", name="c", engine="spark", backend="local",
                        spec_ref="spark/etl@1", spec_hash="h", created=90.0, ready=100.0,
                        teardown_started=141.0, deleted=142.0, jobs=jobs)


def test_a_spark_job_runs_from_its_registration_and_records_its_submission() -> None:
    master = [JobFacts(job_id="app-1", engine="spark", status="FINISHED", start=110.0,
                       end=140.0, source="spark master")]
    result = {"job_id": "app-1", "cluster": "c", "engine": "spark", "seconds": 37.0,
              "submitted_at": 103.0, "result": {"artifact_uri": "file:///a"}}

    (job,) = jobs_of(CONTEXT, "c", master, [("build", -1, result)], [("build", -1)],
                     created_at=LIFE_1)
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

    (job,) = jobs_of(CONTEXT, "c", ray, [("trial", 0, result)], [("trial", 0)],
                     created_at=LIFE_1)
    assert (job.start, job.submitted) == (101.0, None)
    assert job.task == "trial[0]"


def test_a_second_life_of_a_cluster_name_counts_only_its_own_jobs() -> None:
    """A cleared setup makes the name anew: life 1's job results (still in XCom) are not life
    2's jobs. A result names its life; one of older code, which names none, counts only where
    the engine lists its job, or where no engine view says otherwise."""
    from ephemeral.jobs.results import JobResult

    assert "cluster_created_at" in JobResult.model_fields
    life1 = {"job_id": "raysubmit-1", "cluster": "c", "engine": "ray", "seconds": 5.0,
             "cluster_created_at": LIFE_1}
    life2 = {"job_id": "raysubmit-2", "cluster": "c", "engine": "ray", "seconds": 7.0,
             "cluster_created_at": LIFE_2}
    old = {"job_id": "raysubmit-0", "cluster": "c", "engine": "ray", "seconds": 3.0}
    results = [("a", -1, life1), ("b", -1, life2), ("o", -1, old)]
    engine = [JobFacts(job_id="raysubmit-2", engine="ray", start=101.0, end=108.0)]
    jobs = jobs_of(CONTEXT, "c", engine, results, [], created_at=LIFE_2)
    assert [j.job_id for j in jobs] == ["raysubmit-2"]
    # No engine view (it could not be asked): the results that name this life, and older ones.
    jobs = jobs_of(CONTEXT, "c", None, results, [], created_at=LIFE_2)
    assert sorted(j.job_id for j in jobs) == ["raysubmit-0", "raysubmit-2"]
    # A result of this life the engine did not list still counts (it says whose it is).
    jobs = jobs_of(CONTEXT, "c", [], results, [], created_at=LIFE_1)
    assert [j.job_id for j in jobs] == ["raysubmit-1"]


def test_ray_results_name_their_cluster_life() -> None:
    from ephemeral.jobs.ray_jobs import RayJobs

    assert RayJobs("http://127.0.0.1:9", cluster="c", created_at=LIFE_1).created_at == LIFE_1
