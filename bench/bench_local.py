"""Local backend figures, as ratios against a baseline run in the same script (issue 2).

1. Ray time to ready, 1 head + 2 workers (ray/train-gpu, ci-cpu) against `ray start --head`
   followed by one `ray start` worker by hand. Goal: at most 1.2x.
2. Spark time to ready, master + 2 workers + Connect (spark/etl, ci-cpu) against a master and one
   worker started by hand until the master lists the worker ALIVE. Goal: at most 1.3x.
3. Teardown until every process is gone. Goal: under 3 s.

Rounds alternate which side goes first; the median of per-round ratios is reported.
Results also go to bench/results/local.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ephemeral.backends.http import get_json
from ephemeral.backends.local import LocalBackend, procs
from ephemeral.backends.local.ray_nodes import ray_bin
from ephemeral.backends.local.slots import runtime_dir
from ephemeral.backends.local.spark_nodes import spark_home
from ephemeral.lifecycle import provision, teardown
from ephemeral.specs import ClusterIdentity, resolve

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
IP = "127.0.200.{}"  # outside the backend's slots (127.0.1-12.x)
PORT = 19000  # below the backend's port blocks (20000+)


def _spawn(name: str, argv: list[str], tmp: Path) -> procs.NodeProcess:
    return procs.spawn(name, argv, log=tmp / f"{name}.log", exit_file=tmp / f"{name}.exit",
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def _wait_exit(node: procs.NodeProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (code := node.exit_code()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(node.log_tail())
        time.sleep(0.05)
    if code != 0:
        raise RuntimeError(node.log_tail())


def baseline_ray(tmp: Path) -> tuple[float, list[procs.NodeProcess]]:
    ray = ray_bin()
    t0 = time.monotonic()
    head = _spawn("head", [ray, "start", "--head", f"--node-ip-address={IP.format(2)}",
                           f"--port={PORT}", f"--dashboard-host={IP.format(2)}",
                           f"--dashboard-port={PORT + 1}", f"--ray-client-server-port={PORT + 2}",
                           "--num-cpus=0", f"--temp-dir={tmp}/h", "--disable-usage-stats",
                           "--min-worker-port=18000", "--max-worker-port=18039"], tmp)
    _wait_exit(head)
    worker = _spawn("worker", [ray, "start", f"--address={IP.format(2)}:{PORT}",
                               f"--node-ip-address={IP.format(3)}", "--num-cpus=1",
                               f"--temp-dir={tmp}/w", "--disable-usage-stats",
                               "--min-worker-port=18040", "--max-worker-port=18079"], tmp)
    _wait_exit(worker)
    return time.monotonic() - t0, [head, worker]


def baseline_spark(tmp: Path) -> tuple[float, list[procs.NodeProcess]]:
    spark_class = str(spark_home() / "bin" / "spark-class")
    master_url = f"spark://{IP.format(2)}:{PORT}"
    t0 = time.monotonic()
    master = _spawn("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host",
                               IP.format(2), "--port", str(PORT), "--webui-port", str(PORT + 1)],
                    tmp)
    worker = _spawn("worker", [spark_class, "org.apache.spark.deploy.worker.Worker", "--host",
                               IP.format(3), "--port", str(PORT + 2), "--webui-port",
                               str(PORT + 3), "--cores", "1", "--memory", "1g",
                               "--work-dir", str(tmp / "work"), master_url], tmp)
    while True:
        body = get_json(f"http://{IP.format(2)}:{PORT + 1}/json/", timeout=2)
        if body and sum(w.get("state") == "ALIVE" for w in body.get("workers", [])) == 1:
            return time.monotonic() - t0, [master, worker]
        if time.monotonic() - t0 > 180:
            raise TimeoutError(master.log_tail() + worker.log_tail())
        time.sleep(0.1)


def ours(backend: LocalBackend, ref: str) -> tuple[float, float]:
    spec = resolve(ref, "ci-cpu")
    result = provision(backend, spec, ClusterIdentity.manual(spec.spec.name, f"bench-{spec.spec.name}"),
                       timeout=300)
    return result.seconds_to_ready, teardown(backend, result.handle)


def compare(name: str, base: Callable[[Path], tuple[float, list[procs.NodeProcess]]],
            ref: str, backend: LocalBackend) -> dict[str, object]:
    rounds = []
    for i in range(ROUNDS):
        tmp = runtime_dir() / f"bench-{name}-{i}"
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        tmp.mkdir(parents=True)
        order = ["base", "ours"] if i % 2 == 0 else ["ours", "base"]
        row: dict[str, float] = {}
        for side in order:
            if side == "base":
                seconds, nodes = base(tmp)
                left = procs.kill_all(nodes, "-")
                assert not left, f"baseline processes left: {procs.describe(left)}"
                row["baseline_s"] = seconds
            else:
                row["ours_s"], row["teardown_s"] = ours(backend, ref)
            time.sleep(1)
        row["ratio"] = row["ours_s"] / row["baseline_s"]
        rounds.append(row)
        print(f"{name} round {i + 1}: ours {row['ours_s']:.2f}s, baseline {row['baseline_s']:.2f}s,"
              f" ratio {row['ratio']:.2f}, teardown {row['teardown_s']:.2f}s", flush=True)
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
    return {
        "rounds": rounds,
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "median_ours_s": statistics.median(r["ours_s"] for r in rounds),
        "median_baseline_s": statistics.median(r["baseline_s"] for r in rounds),
        "max_teardown_s": max(r["teardown_s"] for r in rounds),
    }


def main() -> None:
    backend = LocalBackend()
    results = {
        "ray_ready_vs_head_then_worker": compare("ray", baseline_ray, "ray/train-gpu", backend),
        "spark_ready_vs_master_and_one_worker": compare("spark", baseline_spark, "spark/etl",
                                                        backend),
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "local.json").write_text(json.dumps(results, indent=2))
    ray, spark = results["ray_ready_vs_head_then_worker"], results["spark_ready_vs_master_and_one_worker"]
    print(f"\nRay 1 head + 2 workers ready: median ratio {ray['median_ratio']:.2f}x "
          f"(ours {ray['median_ours_s']:.1f}s vs {ray['median_baseline_s']:.1f}s), goal <= 1.2x")
    print(f"Spark master + 2 workers + Connect ready: median ratio {spark['median_ratio']:.2f}x "
          f"(ours {spark['median_ours_s']:.1f}s vs {spark['median_baseline_s']:.1f}s), goal <= 1.3x")
    print(f"Teardown until no process is left: max {max(ray['max_teardown_s'], spark['max_teardown_s']):.2f}s"
          " over all rounds, goal < 3s")


if __name__ == "__main__":
    main()
