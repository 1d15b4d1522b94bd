"""Orchestration overhead and idle share of the reference DAG (issue 4).

1. Wall time of train_distributed through Airflow (dag.test(), local backend) against the same
   steps by hand with the engines' CLIs (bench/by_hand.sh). Goal: at most 1.15x.
2. Idle share of each cluster's lifetime in the DAG run (time it existed but ran no job).

Rounds alternate which side goes first. Results also go to bench/results/pipeline.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 2

home = Path(os.environ.setdefault("EPHEMERAL_HOME", tempfile.mkdtemp(prefix="bench-pipeline-")))
os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__XCOM_BACKEND", "ephemeral.airflow.xcom.MetadataOnlyXCom")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def by_hand() -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    t0 = time.perf_counter()
    subprocess.run(["bash", str(ROOT / "bench" / "by_hand.sh"), (home / "byhand").as_uri()],
                   check=True, env=env, capture_output=True, timeout=1200)
    return time.perf_counter() - t0


def through_airflow() -> tuple[float, dict[str, object]]:
    from ephemeral.airflow.report import run_reference_dag, run_report

    t0 = time.perf_counter()
    dag_run = run_reference_dag("train_distributed", {"profile": "ci-cpu"})
    seconds = time.perf_counter() - t0
    report = run_report(dag_run)
    assert report["ok"], report
    return seconds, report


def main() -> None:
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   capture_output=True)
    rounds = []
    for i in range(ROUNDS):
        row: dict[str, object] = {}
        for side in (["hand", "dag"] if i % 2 == 0 else ["dag", "hand"]):
            if side == "hand":
                row["by_hand_s"] = by_hand()
            else:
                row["dag_s"], report = through_airflow()
                row["idle_share"] = {c["spec"]: c["idle_share"] for c in report["clusters"]}
                row["clusters"] = report["clusters"]
        row["ratio"] = float(row["dag_s"]) / float(row["by_hand_s"])  # type: ignore[arg-type]
        rounds.append(row)
        print(f"round {i + 1}: DAG {row['dag_s']:.1f}s, by hand {row['by_hand_s']:.1f}s, "
              f"ratio {row['ratio']:.2f}, idle share {row['idle_share']}", flush=True)
        for c in row["clusters"]:  # type: ignore[attr-defined]
            print(f"    {c['spec']}: lifetime {c['lifetime_s']}s, jobs {c['busy_s']}s, idle "
                  f"starting {c['starting_s']}s, between jobs {c['between_jobs_s']}s, "
                  f"deleting {c['deleting_s']}s", flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(rounds, indent=2, default=str))
    print(f"\nDAG vs by hand: median ratio {statistics.median(r['ratio'] for r in rounds):.2f}x "
          "(goal <= 1.15x)")


if __name__ == "__main__":
    main()
