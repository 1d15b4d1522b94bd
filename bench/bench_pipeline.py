"""Orchestration overhead and idle share of the reference DAG (issue 4, issue 10).

1. Wall time of train_distributed through Airflow (dag.test(), local backend) against the same
   jobs by hand with the engines' CLIs (bench/by_hand.sh: the fastest a skilled user would type,
   a floor; its header says how it differs from the DAG). Goal: at most 1.15x.
2. Idle share of each cluster's lifetime in the DAG run (time it existed but ran no job).

Rounds alternate which side goes first. Whatever happens, nothing is left behind: the by-hand
nodes are killed by their marker, clusters a failed DAG run left are deleted, and the Airflow
home this bench made for itself is removed. Results also go to bench/results/pipeline.json.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import baseline  # bench/baseline.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
# One round by default: a round is a whole DAG run and a whole by-hand run (10-20 min on a
# loaded 2-core machine); `bench_pipeline.py N` or BENCH_PIPELINE_ROUNDS=N for more.
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else int(
    os.environ.get("BENCH_PIPELINE_ROUNDS", "1"))

_own_home = "EPHEMERAL_HOME" not in os.environ  # a home of our own is removed at the end
home = Path(os.environ.setdefault("EPHEMERAL_HOME", tempfile.mkdtemp(prefix="bench-pipeline-")))
os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")  # as make demo
os.environ.setdefault("AIRFLOW__CORE__XCOM_BACKEND", "ephemeral.airflow.xcom.MetadataOnlyXCom")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def by_hand() -> float:
    mark = baseline.new_uid("byhand")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "BYHAND_MARK": mark, "BYHAND_PORT": str(baseline.port_block(160))}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(["bash", str(ROOT / "bench" / "by_hand.sh"),
                               (home / "byhand").as_uri()],
                              env=env, capture_output=True, text=True, timeout=1200, check=False)
        if proc.returncode:
            raise RuntimeError(f"by_hand.sh failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
                               f"\n{proc.stderr[-3000:]}")
        print("\n".join(f"    {line}" for line in proc.stdout.splitlines()
                        if line.startswith("by hand:")), flush=True)
        return time.perf_counter() - t0
    finally:  # the script cleans up after itself, unless it was killed (the timeout)
        if left := baseline.kill_marked(mark):
            raise RuntimeError(f"by-hand processes survived SIGKILL: {left}")


def through_airflow() -> tuple[float, dict[str, Any]]:
    from ephemeral.airflow.report import run_reference_dag, run_report

    t0 = time.perf_counter()
    dag_run = run_reference_dag("train_distributed", {"profile": "ci-cpu"})
    seconds = time.perf_counter() - t0
    report = run_report(dag_run)
    if not report["ok"]:
        raise RuntimeError(f"the DAG run did not succeed: {report}")
    return seconds, report


def clean_up() -> None:
    """Delete clusters a failed or interrupted DAG run left (only in a home this bench made, so
    only its own), then the home itself."""
    if not _own_home:
        return
    from ephemeral.backends.base import OwnerSelector
    from ephemeral.backends.local import LocalBackend

    backend = LocalBackend(home)
    try:
        for handle in backend.list_owned(OwnerSelector.everything()):
            print(f"deleting {handle.name}, left by a failed DAG run", flush=True)
            backend.delete(handle, wait=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    baseline.exit_on_sigterm()
    try:
        rounds = measure()
    finally:
        clean_up()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(rounds, indent=2, default=str))
    print(f"\nDAG vs by hand: median ratio {statistics.median(r['ratio'] for r in rounds):.2f}x "
          "(goal <= 1.15x; by hand is a floor, see bench/by_hand.sh)")
    for spec in rounds[0]["idle_share"]:
        shares = [r["idle_share"][spec] for r in rounds]
        print(f"idle share of {spec}: {', '.join(str(x) for x in shares)} (goal <= 0.15)")


ATTEMPTS = 2  # per side and round
PAUSE = 20.0  # seconds between attempts: a load peak on a shared machine passes


def attempt(label: str, run: Callable[[], Any]) -> Any:
    """``run``, tried again after a pause when it fails (Ray's raylets give up after 30 s on an
    overloaded machine, on either side); None when every attempt failed. Each failure is said."""
    for n in range(1, ATTEMPTS + 1):
        try:
            return run()
        except RuntimeError as err:
            print(f"{label} failed (attempt {n} of {ATTEMPTS}): {str(err)[-2000:]}", flush=True)
            if n < ATTEMPTS:
                time.sleep(PAUSE)
    return None


def measure() -> list[dict[str, Any]]:
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   capture_output=True)
    rounds: list[dict[str, Any]] = []
    for i in range(ROUNDS):
        row: dict[str, Any] = {}
        for side in (["hand", "dag"] if i % 2 == 0 else ["dag", "hand"]):
            if side == "hand":
                if (seconds := attempt(f"round {i + 1} by hand", by_hand)) is not None:
                    row["by_hand_s"] = seconds
            elif (out := attempt(f"round {i + 1} DAG", through_airflow)) is not None:
                row["dag_s"], report = out
                row["idle_share"] = {c["spec"]: c.get("idle_share") for c in report["clusters"]}
                row["clusters"] = report["clusters"]
        if "dag_s" not in row or "by_hand_s" not in row:
            print(f"round {i + 1}: lost (a side failed {ATTEMPTS} times)", flush=True)
            continue
        row["ratio"] = float(row["dag_s"]) / float(row["by_hand_s"])
        rounds.append(row)
        print(f"round {i + 1}: DAG {row['dag_s']:.1f}s, by hand {row['by_hand_s']:.1f}s, "
              f"ratio {row['ratio']:.2f}, idle share {row['idle_share']}", flush=True)
        for c in row["clusters"]:
            print("    " + ", ".join(f"{k} {c.get(k)}" for k in (
                "spec", "lifetime_s", "busy_s", "starting_s", "between_jobs_s", "deleting_s")
                if k in c), flush=True)
    if not rounds:
        raise SystemExit("no round completed: the machine is too loaded to measure")
    return rounds


if __name__ == "__main__":
    main()
