"""Where a Spark cluster's time to ready goes (issue 10): phases and CPU per node, measured.

Usage: bench/spark_startup.py [ROUNDS]. Each round runs, one after the other:

- ``ours``: spark/etl (ci-cpu) through the local backend, polled every 50 ms from outside
  (the backend's own readiness loop backs off up to 1 s): master port open, master UI up, each
  worker ALIVE, Connect accepting a session; and the CPU seconds each node had burnt by then.
- ``hand-1w``: the bench_local baseline, a master and one worker with plain ``spark-class``.
- ``hand-2w``: the same with two workers, to see what the second worker costs.
- ``hand-connect``: master, two workers and a plain Connect server by hand (spark/etl's shape).
- ``connect-fast``: the same with the backend's fast-start JVM flags on the Connect driver too.
- ``connect-noui``: the same as ``hand-connect`` without the Connect driver's web UI.

On a 2-core machine shared with other work, wall time follows CPU: the per-node CPU seconds
say which JVM to make cheaper. Results go to bench/results/spark_startup.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import baseline
import psutil

from ephemeral.backends.http import get_json
from ephemeral.backends.local import LocalBackend, procs
from ephemeral.backends.local.slots import runtime_dir
from ephemeral.backends.local.spark_nodes import (
    CONNECT_CLASS,
    FAST_START_JVM,
    connect_accepts_session,
    spark_home,
)
from ephemeral.backends.local.state import load
from ephemeral.lifecycle import teardown
from ephemeral.specs import ClusterIdentity, resolve

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
IP = "127.0.200.{}"
POLL = 0.05
Phases = dict[str, float]


def _cpu(nodes: list[procs.NodeProcess]) -> dict[str, float]:
    """CPU seconds of each node's session so far, with its exited, reaped children (the
    spark-class launcher JVM)."""
    out = {}
    for node in nodes:
        total = 0.0
        for p in procs.find([node], None):
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        out[node.name] = round(total, 2)
    return out


def watch(t0: float, master: str, ui: str, workers: int, connect: str | None,
          token: str | None = None, timeout: float = 240) -> Phases:
    """Poll until every phase happened; return seconds from ``t0`` to each."""
    ph: Phases = {}
    while time.monotonic() - t0 < timeout:
        now = time.monotonic() - t0
        if "master_port" not in ph and baseline.port_open(master):
            ph["master_port"] = now
        if "master_port" in ph:
            body = get_json(f"{ui}/json/", timeout=1)
            if body is not None:
                ph.setdefault("master_ui", now)
                alive = sum(w.get("state") == "ALIVE" for w in body.get("workers", []))
                for k in range(1, alive + 1):
                    ph.setdefault(f"worker_{k}_alive", now)
                if connect and "connect_session" not in ph and any(
                        a.get("name") for a in body.get("activeapps", [])):
                    ph.setdefault("connect_app_registered", now)
        if connect and "connect_session" not in ph and baseline.port_open(connect):
            ph.setdefault("connect_port", now)
            if connect_accepts_session(connect, timeout=2, token=token):
                ph["connect_session"] = now
        if f"worker_{workers}_alive" in ph and (not connect or "connect_session" in ph):
            ph["ready"] = max(ph.values())
            return ph
        time.sleep(POLL)
    raise TimeoutError(f"not ready after {timeout}s: {ph}")


def ours(backend: LocalBackend) -> tuple[Phases, dict[str, float]]:
    spec = resolve("spark/etl", "ci-cpu")
    identity = ClusterIdentity.manual("etl", "bench-spark-startup")
    try:
        t0 = time.monotonic()
        handle = backend.create(spec, identity=identity)
        created = time.monotonic() - t0
        ep = handle.endpoints
        cdir = backend.home / "clusters" / handle.name
        token = (cdir / "connect-token").read_text().strip() \
            if (cdir / "connect-token").exists() else None
        ph = watch(t0, (ep.spark_master or "").removeprefix("spark://"), ep.spark_ui or "",
                   2, (ep.spark_connect or "").removeprefix("sc://"), token)
        ph["create_returned"] = created
        state = load(cdir)
        cpu = _cpu(state.nodes) if state else {}
        teardown(backend, handle)
        return ph, cpu
    finally:
        backend.delete(identity, wait=True)


def by_hand(workers: int, connect: str | None) -> Callable[[baseline.Nodes], tuple[Phases,
                                                                                   dict[str, float]]]:
    """``connect``: None (no Connect server), "plain", "fast" or "noui"."""
    def run(n: baseline.Nodes) -> tuple[Phases, dict[str, float]]:
        home = spark_home()
        spark_class = str(home / "bin" / "spark-class")
        ip = IP.format(2)
        p = baseline.port_block(4 + 2 * workers + 4)
        env = {"SPARK_NO_DAEMONIZE": "1", "SPARK_LOG_DIR": str(n.tmp / "logs")}
        master = f"{ip}:{p}"
        t0 = time.monotonic()
        n.spawn("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", ip,
                           "--port", str(p), "--webui-port", str(p + 1)],
                env=env | {"SPARK_LOCAL_IP": ip})
        for i in range(workers):
            wip, wp = IP.format(3 + i), p + 2 + 2 * i
            n.spawn(f"worker-{i}", [spark_class, "org.apache.spark.deploy.worker.Worker",
                                    "--host", wip, "--port", str(wp), "--webui-port", str(wp + 1),
                                    "--cores", "1", "--memory", "1g",
                                    "--work-dir", str(n.tmp / f"w{i}"), f"spark://{master}"],
                    env=env | {"SPARK_LOCAL_IP": wip}, wait_for=master)
        target = None
        if connect:
            cip, cp = IP.format(3 + workers), p + 2 + 2 * workers
            target = f"{cip}:{cp}"
            conf = {"spark.connect.grpc.binding.address": cip,
                    "spark.connect.grpc.binding.port": str(cp), "spark.driver.host": cip,
                    "spark.driver.bindAddress": cip, "spark.driver.port": str(cp + 1),
                    "spark.blockManager.port": str(cp + 2), "spark.ui.port": str(cp + 3),
                    "spark.executor.cores": "1", "spark.executor.memory": "1g"}
            if connect == "fast":
                conf["spark.driver.extraJavaOptions"] = FAST_START_JVM
            if connect == "noui":
                conf["spark.ui.enabled"] = "false"
            argv = [str(home / "bin" / "spark-submit"), "--class", CONNECT_CLASS,
                    "--master", f"spark://{master}", "--driver-memory", "1g"]
            for key, value in conf.items():
                argv += ["--conf", f"{key}={value}"]
            n.spawn("connect", [*argv, "spark-internal"], env=env | {"SPARK_LOCAL_IP": cip},
                    wait_for=master)
        ph = watch(t0, master, f"http://{ip}:{p + 1}", workers, target)
        return ph, _cpu(n.started)
    return run


def main() -> None:
    baseline.exit_on_sigterm()
    baseline.sweep_orphans(runtime_dir())
    backend = LocalBackend()
    sides: dict[str, Callable[[baseline.Nodes], tuple[Phases, dict[str, float]]] | None] = {
        "ours": None, "hand-1w": by_hand(1, None), "hand-2w": by_hand(2, None),
        "hand-connect": by_hand(2, "plain"), "connect-fast": by_hand(2, "fast"),
        "connect-noui": by_hand(2, "noui")}
    only = set(sys.argv[2].split(",")) if len(sys.argv) > 2 else set(sides)
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in sides if k in only}
    for i in range(ROUNDS):
        for name, run in sides.items():
            if name not in only:
                continue
            if run is None:
                ph, cpu = ours(backend)
            else:
                with baseline.nodes(runtime_dir() / f"bench-sparkst-{os.getpid()}",
                                    "sparkst") as n:
                    ph, cpu = run(n)
            results[name].append({"phases": ph, "cpu_s": cpu})
            print(f"round {i + 1} {name:13s} " + " ".join(
                f"{k}={v:.1f}" for k, v in sorted(ph.items(), key=lambda kv: kv[1]))
                + f" | cpu {cpu}", flush=True)
            time.sleep(1)
    print()
    for name, rows in results.items():
        ready = statistics.median(r["phases"]["ready"] for r in rows)
        cpu = statistics.median(sum(r["cpu_s"].values()) for r in rows)
        print(f"{name:13s} median ready {ready:5.1f}s, CPU to ready {cpu:5.1f}s")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "spark_startup.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
