"""Airflow's share of trigger -> first job running, on the real services (issue 11).

For ray_job_adhoc and train_distributed on the local stack (``ephemeral.devstack``: api-server,
scheduler with the LocalExecutor, dag-processor, triggerer; PostgreSQL), a run is triggered over
REST API v2 and the time until its first job runs on its cluster is split into:

  airflow   trigger -> setup task starts, setup task starts -> cluster created, cluster ready
            -> job task starts (the triggerer's wait firing, the resume, the next task)
  cluster   created -> ready (the engine starting; the same by hand)
  submit    job task starts -> the engine reports the job running (task process start-up
            included, so this part is not Airflow-free)
  job       the first job's own run time, beside

The same first step by hand (``ephemeral up`` then ``ephemeral submit`` / ``spark-submit``) is
measured beside it. Goal: airflow <= 15% of trigger -> first job. Times come from the
clusters' run report parts (the engines' own job start times), the task instances' start
dates, and the clusters' created/ready moments. Results go to bench/results/airflow.json.

    python bench/bench_airflow.py [ROUNDS]     (default 1; each round runs both DAGs)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 1
GOAL = 0.15
# Per DAG: its first setup and first job task, and its conf.
DAGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ray_job_adhoc": ("create_cluster", "run_job",
                      {"profile": "ci-cpu", "workers": 1, "entrypoint": "python hello_ray.py"}),
    "train_distributed": ("etl.create_spark", "etl.build_features", {"profile": "ci-cpu"}),
}


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def airflow_round(stack: Any, dag_id: str) -> dict[str, float]:
    from ephemeral.report.store import read_parts

    setup, job_task, conf = DAGS[dag_id]
    stack.wait_parsed(dag_id)
    stack.unpause(dag_id)
    t0 = time.time()
    run_id = stack.trigger(dag_id, conf, logical_date="now")  # as the form does
    state = stack.wait_finished(dag_id, run_id, timeout=1800)
    if state != "success":
        raise RuntimeError(f"{dag_id}/{run_id} ended {state}")
    tis = stack.task_instances(dag_id, run_id)
    parts = read_parts(dag_id, run_id, stack.instance)  # the stack's run, not this process's
    cluster = next(p for p in parts if p.setup_task == setup)
    first = min((j for j in cluster.jobs if j.start), key=lambda j: j.start or 0)
    assert first.start is not None
    assert cluster.ready is not None
    setup_start = ts(tis[setup]["start_date"])
    job_start = ts(tis[job_task]["start_date"])
    total = first.start - t0
    result = {
        "total": total,
        "airflow": (setup_start - t0) + (cluster.created - setup_start)
                   + (job_start - cluster.ready),
        "cluster": cluster.ready - cluster.created,
        "submit": first.start - job_start,
        "job": (first.end or first.start) - first.start,
    }
    result["airflow_share"] = result["airflow"] / total
    return {k: round(v, 3) for k, v in result.items()}


def cli(*args: str) -> dict[str, Any]:
    exe = Path(sys.executable).parent / "ephemeral"
    # --json right after the command: after "--" it would be part of the job's command.
    out = subprocess.run([str(exe), args[0], "--json", *args[1:]], capture_output=True,
                         text=True, check=True, cwd=ROOT, timeout=900)
    return dict(json.loads(out.stdout))


def by_hand(dag_id: str) -> dict[str, float]:
    """The same first step by hand: `ephemeral up`, then the job; the engine's start time."""
    from ephemeral.backends.base import ClusterHandle
    from ephemeral.backends.local import LocalBackend
    from ephemeral.report.engines import ray_jobs, spark_apps

    name = f"bench-hand-{os.getpid()}"
    t0 = time.time()
    try:
        if dag_id == "ray_job_adhoc":
            up = cli("up", "ray/adhoc-cpu", "-p", "ci-cpu", "--replicas", "1", "--name", name)
            ready = time.time()
            cli("submit", name, "--working-dir", "jobs", "--", "python", "hello_ray.py")
            handle = ClusterHandle.model_validate(up["handle"])
            access = LocalBackend().access(handle)
            jobs = ray_jobs(str(access.dashboard), dict(access.headers)) or []
        else:
            up = cli("up", "spark/etl@1", "-p", "ci-cpu", "--name", name)
            ready = time.time()
            cli("spark-submit", name, "jobs/etl_features.py", "--", "--run",
                f"bench-hand/{name}", "--rows", "5000")
            handle = ClusterHandle.model_validate(up["handle"])
            access = LocalBackend().access(handle)
            jobs = spark_apps(str(access.spark_ui), dict(access.headers), handle) or []
        first = min((j for j in jobs if j.start), key=lambda j: j.start or 0)
        assert first.start is not None
        return {"total": round(first.start - t0, 3),
                "cluster": round(float(up["seconds_to_ready"]), 3),
                "cli": round(ready - t0 - float(up["seconds_to_ready"]), 3),
                "submit": round(first.start - ready, 3),
                "job": round((first.end or first.start) - first.start, 3)}
    finally:
        subprocess.run([str(Path(sys.executable).parent / "ephemeral"), "down", name],
                       capture_output=True, cwd=ROOT, timeout=300)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from ephemeral.devstack import Stack

    base = Path(tempfile.mkdtemp(prefix="bench-airflow-"))
    # This process reads the run report parts and runs the by-hand steps: same home.
    os.environ["EPHEMERAL_HOME"] = str(base / "ephemeral")
    os.environ.pop("EPHEMERAL_ARTIFACT_ROOT", None)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "PYTEST_")) and k != "EPHEMERAL_INSTANCE"}
    stack = Stack(home=base / "airflow", db=os.environ.get("EPHEMERAL_AIRFLOW_DB", "postgres"),
                  ephemeral_home=base / "ephemeral", port=0, base_env=env)
    rows: dict[str, list[dict[str, Any]]] = {d: [] for d in DAGS}
    t_start = time.monotonic()
    print(f"starting the stack in {base} ...", flush=True)
    try:
        stack.start()
        print(f"stack up after {time.monotonic() - t_start:.0f}s", flush=True)
        for r in range(ROUNDS):
            for dag_id in DAGS:
                row: dict[str, Any] = {"round": r, "airflow": airflow_round(stack, dag_id)}
                print(dag_id, "airflow", json.dumps(row["airflow"]), flush=True)
                row["by_hand"] = by_hand(dag_id)
                rows[dag_id].append(row)
                print(dag_id, json.dumps(row), flush=True)
    finally:
        stack.stop()
    summary = {}
    for dag_id, runs in rows.items():
        if not runs:
            continue
        share = max(x["airflow"]["airflow_share"] for x in runs)
        summary[dag_id] = {"worst_airflow_share": share, "goal": GOAL, "ok": share <= GOAL,
                           "runs": runs}
        a, h = runs[-1]["airflow"], runs[-1]["by_hand"]
        print(f"{dag_id}: trigger->first job {a['total']:.1f}s = airflow {a['airflow']:.1f}s "
              f"({a['airflow_share']:.0%}) + cluster start {a['cluster']:.1f}s + submit "
              f"{a['submit']:.1f}s; job {a['job']:.1f}s | by hand {h['total']:.1f}s = cluster "
              f"{h['cluster']:.1f}s + cli {h['cli']:.1f}s + submit {h['submit']:.1f}s")
    out = ROOT / "bench" / "results" / "airflow.json"
    out.write_text(json.dumps({"db": stack.db, "rounds": ROUNDS, "dags": summary}, indent=1))
    print(f"written {out.relative_to(ROOT)}")
    return 0 if all(s["ok"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
