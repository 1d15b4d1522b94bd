"""Job figures on a warm local cluster, as ratios in one run (issue 3).

1. Job overhead: `ephemeral submit` of a trivial Ray job against `ray job submit` of the same
   job, alternating, wall time of each command until it exits. Goal: at most 1.05x.
2. Training throughput: jobs/train_ddp.py with 2 Ray Train workers (one per worker node) against
   the same loop under `torchrun --nproc_per_node 2` on this machine. Reported as a ratio.

Results also go to bench/results/jobs.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import baseline  # bench/baseline.py, beside this script

from ephemeral.backends.base import ClusterHandle
from ephemeral.backends.local import LocalBackend, procs, secrets
from ephemeral.errors import ClusterFailed
from ephemeral.jobs.ray_jobs import ray_jobs_for
from ephemeral.lifecycle import provision, teardown
from ephemeral.specs import ClusterIdentity, resolve

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BIN = Path(sys.executable).parent
JOBS = Path(__file__).resolve().parent.parent / "jobs"
TRIVIAL = ["python", "-c", "print('hello')"]
TRAIN_ARGS = ["--steps", "600", "--batch-size", "256", "--checkpoint-every", "100000"]


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          check=False, timeout=600)
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{argv[:3]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def job_overhead(name: str, dashboard: str, token_file: Path) -> dict[str, Any]:
    ours_cmd = [str(BIN / "ephemeral"), "submit", name, "--", *TRIVIAL]
    ray_cmd = [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--", *TRIVIAL]
    # The cluster takes only authenticated calls: Ray's CLI reads the token as a user's would.
    ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    timed(ours_cmd)  # warm-up both: first runs pay for Python's bytecode cache
    timed(ray_cmd, ray_env)
    rounds = []
    for i in range(ROUNDS):
        pair = {}
        for side in (["ours", "ray"] if i % 2 == 0 else ["ray", "ours"]):
            pair[side] = timed(ours_cmd) if side == "ours" else timed(ray_cmd, ray_env)
        pair["ratio"] = pair["ours"] / pair["ray"]
        rounds.append(pair)
        print(f"submit round {i + 1}: ephemeral {pair['ours']:.2f}s, ray job submit "
              f"{pair['ray']:.2f}s, ratio {pair['ratio']:.3f}", flush=True)
    return {"rounds": rounds, "median_ratio": statistics.median(r["ratio"] for r in rounds)}


def throughput(backend: LocalBackend, handle: ClusterHandle) -> dict[str, Any]:
    jobs = ray_jobs_for(handle, backend)  # with the cluster's token
    ray_runs, torchrun_runs = [], []
    for i in range(3):
        jid = jobs.submit(f"python train_ddp.py --run bench-tp-{i}-{time.time_ns()} "
                          + " ".join(TRAIN_ARGS),
                          working_dir=str(JOBS))
        ray_runs.append(jobs.follow(jid, timeout=900).result["throughput_samples_per_s"])
        mark = baseline.new_uid("torchrun")
        try:
            proc = subprocess.run(
                [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
                 str(JOBS / "train_ddp.py"), "--launcher", "torchrun",
                 *TRAIN_ARGS], capture_output=True, text=True, check=True, timeout=900,
                env={**os.environ, "OMP_NUM_THREADS": "1", procs.UID_ENV: mark})
        finally:  # torchrun's workers, should a timeout have killed torchrun alone
            baseline.kill_marked(mark)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("METRICS "))
        torchrun_runs.append(json.loads(line.removeprefix("METRICS "))["throughput_samples_per_s"])
        print(f"throughput round {i + 1}: Ray Train {ray_runs[-1]:.0f} samples/s, torchrun "
              f"{torchrun_runs[-1]:.0f} samples/s", flush=True)
    ray_tp, torch_tp = statistics.median(ray_runs), statistics.median(torchrun_runs)
    return {"ray_train": ray_runs, "torchrun": torchrun_runs, "ratio": ray_tp / torch_tp}


def main() -> None:
    baseline.exit_on_sigterm()  # so the cluster's teardown below runs when the bench is stopped
    backend = LocalBackend()
    spec = resolve("ray/train-gpu", "ci-cpu")
    identity = ClusterIdentity.manual(spec.spec.name, "bench-jobs")
    # What this bench measures starts on a warm cluster; a start that failed (Ray gives a
    # raylet 30 s to register, which an overloaded machine can miss) is said and retried, after
    # a pause for the load peak to pass (provision deleted the failed cluster).
    for attempt in (1, 2, 3):
        try:
            made = provision(backend, spec, identity, timeout=300)
            break
        except ClusterFailed as err:
            print(f"the cluster failed to start (attempt {attempt} of 3): "
                  f"{str(err).splitlines()[0]}", flush=True)
            if attempt == 3:
                raise
            time.sleep(20)
    try:
        dashboard = made.handle.endpoints.dashboard or ""
        token_file = secrets.path(backend.home / "clusters" / made.handle.name, secrets.RAY_TOKEN)
        results = {"job_overhead": job_overhead(made.handle.name, dashboard, token_file),
                   "training_throughput": throughput(backend, made.handle)}
    finally:
        teardown(backend, made.handle)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "jobs.json").write_text(json.dumps(results, indent=2))
    print(f"\nephemeral submit vs ray job submit: median ratio "
          f"{results['job_overhead']['median_ratio']:.3f}x (goal <= 1.05x)")
    tp = results["training_throughput"]
    print(f"train_ddp.py, 2 Ray Train workers vs torchrun --nproc_per_node 2: throughput ratio "
          f"{tp['ratio']:.2f} (median {statistics.median(tp['ray_train']):.0f} vs "
          f"{statistics.median(tp['torchrun']):.0f} samples/s)")


if __name__ == "__main__":
    main()
