"""`make demo`: bring up a Ray and a Spark cluster side by side, run a small job on each, bring
both down, and show that nothing is left. (The Airflow DAG run replaces this in the Airflow issue.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ephemeral.backends.local import LocalBackend
from ephemeral.backends.local.spark_nodes import spark_home
from ephemeral.lifecycle import Provisioned, provision, teardown
from ephemeral.specs import ClusterIdentity, resolve

ROOT = Path(__file__).resolve().parent.parent
console = Console(soft_wrap=True)


def ray_job(dashboard: str) -> dict[str, object]:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    job = client.submit_job(entrypoint=f"{sys.executable} hello_ray.py",
                            runtime_env={"working_dir": str(ROOT / "jobs")})
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                          JobStatus.STOPPED}:
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"Ray job {job} ended {status}:\n{logs[-2000:]}")
    return {"job": job, **json.loads(logs.strip().splitlines()[-1])}


def spark_job(master: str) -> dict[str, object]:
    proc = subprocess.run(
        [str(spark_home() / "bin" / "spark-submit"), "--master", master,
         "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
         str(ROOT / "jobs" / "hello_spark.py")],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"})
    if proc.returncode:
        raise RuntimeError(f"spark-submit failed:\n{proc.stderr[-3000:]}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def connect_query(target: str) -> int:
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(target).getOrCreate()
    try:
        return int(spark.range(1_000_000).selectExpr("sum(id) AS s").collect()[0]["s"])
    finally:
        spark.stop()


def main() -> int:
    backend = LocalBackend()
    specs = [resolve("ray/train-gpu", "ci-cpu"), resolve("spark/etl", "ci-cpu")]
    made: dict[str, Provisioned] = {}
    teardown_seconds: dict[str, float] = {}
    results: dict[str, object] = {}
    t0 = time.monotonic()
    try:
        console.rule("bringing up clusters")
        with ThreadPoolExecutor(2) as pool:
            futures = {s.ref: pool.submit(provision, backend, s,
                                          ClusterIdentity.manual(s.spec.name, f"demo-{s.spec.name}"),
                                          timeout=300) for s in specs}
            for ref, fut in futures.items():
                made[ref] = fut.result()
                h = made[ref].handle
                console.print(f"[green]ready[/] {h.name} ({ref}, ci-cpu) in "
                              f"{made[ref].seconds_to_ready:.1f}s: {made[ref].status.message}")
        ray_h, spark_h = made[specs[0].ref].handle, made[specs[1].ref].handle
        console.rule("running jobs")
        results["ray"] = ray_job(ray_h.endpoints.dashboard or "")
        console.print(f"Ray job: {results['ray']}")
        results["spark-submit"] = spark_job(spark_h.endpoints.spark_master or "")
        console.print(f"Spark application: {results['spark-submit']}")
        results["spark-connect"] = connect_query(spark_h.endpoints.spark_connect or "")
        console.print(f"Spark Connect sum(0..999999) = {results['spark-connect']}")
    finally:
        console.rule("tearing down")
        for p in made.values():
            teardown_seconds[p.handle.name] = seconds = teardown(backend, p.handle)
            console.print(f"deleted {p.handle.name} in {seconds:.1f}s")
        # Clusters that failed during provision were already deleted by provision itself.
    left = {h.name: backend.pids(h.name) for h in backend.list_owned()}
    table = Table("cluster", "spec", "time to ready", "teardown", "processes left")
    for ref, p in made.items():
        table.add_row(p.handle.name, ref, f"{p.seconds_to_ready:.1f}s",
                      f"{teardown_seconds[p.handle.name]:.1f}s", str(len(left.get(p.handle.name, []))))
    console.print(table)
    ok = not left and len(made) == 2 and len(results) == 3
    console.print(("[green]demo ok[/]" if ok else "[red]demo failed[/]") +
                  f": {len(made)} clusters created, {len(made) - len(left)} deleted, "
                  f"{time.monotonic() - t0:.0f}s in all")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
