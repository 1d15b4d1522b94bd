"""Running work on clusters: Ray jobs through the Jobs API, Spark applications through
spark-submit and Spark Connect, and the artifact store their results point into."""

from ephemeral.jobs.results import JobResult, JobStatus, parse_result_line

__all__ = ["JobResult", "JobStatus", "parse_result_line"]
