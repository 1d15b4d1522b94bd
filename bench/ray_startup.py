"""Where a local Ray cluster's time to ready goes (issue 10): phases, processes, CPU, measured.

Usage: bench/ray_startup.py [ROUNDS] [VARIANTS]. Each round starts ray/train-gpu (ci-cpu: a head
and two workers, token auth) through the local backend once per variant, alternating, and polls
from outside every 50 ms: the head's GCS port open, the dashboard answering, each node ALIVE,
the Jobs API answering, then the backend's own probe saying ready. Meanwhile it notes when each
Ray process of each node started (gcs_server, dashboard, raylet, agents, ...) and, at ready, the
CPU seconds each kind had burnt. RAY_STARTUP_KEEP_LOGS=DIR keeps each run's Ray session logs.

Variants change the planned nodes before they start (the argv and environment of ``ray start``):
``ours`` is ray_nodes.plan as it is; each other one changes one thing, to see what it is worth.
Results go to bench/results/ray_startup.json.

What it found (Ray 2.60, 2 cores shared with other work, load 5-12; 29 Nov 2026):

- The start is one chain of Python processes, each importing Ray: the head's ``ray start``
  (~2 s CPU, most of it the CLI importing Serve, the state and job CLIs, pandas, numpy) opens
  the GCS; the dashboard (~1.7 s, then 9 subprocess modules ~1.7 s) must publish its URL before
  ``ray start`` starts the head's raylet; the raylet registers only once its dashboard agent
  (~1.2 s) has written its HTTP port file (hard-coded 15 s limit: RAY_agent_register_timeout_ms
  does not extend it); the workers poll for the head's registration every 2 s (loss measured
  0-0.8 s), then start the same agents. CPU to ready: ~18-21 s, for 16-20 s of wall time.
- It is CPU-bound from end to end, so reordering does not help: workers waiting for the head's
  GCS (``wait-gcs``) or dashboard (``wait-dash``) port, or the head not waiting for its dashboard
  (``nowait-dash``, RAY_DASHBOARD_STARTUP_TIMEOUT_S=0, which also logs a false "Failed to start
  the dashboard") were no faster.
- The supported switches save little: ``--no-monitor`` removes the autoscaler monitor (~0.6 s
  CPU) but also ``ray status`` ("No cluster status"), with no gain visible in wall time;
  RAY_enable_metrics_collection=0 changed neither CPU nor wall time. The Ray Client server
  (~1 s CPU) has no off switch once ray[client] is installed (port 0 is refused), and the log
  monitor, runtime-env agent and dashboard agent carry task prints, runtime envs and the Jobs API.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import baseline
import psutil

from ephemeral.backends.http import get_json
from ephemeral.backends.local import LocalBackend, procs, ray_nodes
from ephemeral.backends.local.ray_start import AFTER_ENV
from ephemeral.backends.local.state import PlannedNode, load
from ephemeral.specs import ClusterIdentity, resolve

POLL = 0.05
Plan = list[PlannedNode]
Transform = Callable[[Plan], Plan]


def _with_env(extra: dict[str, str], roles: tuple[str, ...] = ("head", "worker")) -> Transform:
    def apply(plan: Plan) -> Plan:
        return [n.model_copy(update={"env": n.env | extra}) if n.role in roles else n
                for n in plan]
    return apply


def _without_env(name: str) -> Transform:
    def apply(plan: Plan) -> Plan:
        return [n.model_copy(update={"env": {k: v for k, v in n.env.items() if k != name}})
                for n in plan]
    return apply


def _with_args(extra: list[str], roles: tuple[str, ...] = ("head", "worker")) -> Transform:
    def apply(plan: Plan) -> Plan:
        return [n.model_copy(update={"argv": n.argv + extra}) if n.role in roles else n
                for n in plan]
    return apply


def _without_args(drop: list[str]) -> Transform:
    def apply(plan: Plan) -> Plan:
        return [n.model_copy(update={"argv": [a for a in n.argv if a not in drop]})
                for n in plan]
    return apply


def _wait_for(index: int) -> Transform:
    """Workers start only once the head listens on its named port ``index``."""
    def apply(plan: Plan) -> Plan:
        head = plan[0]
        port = next(a.split("=", 1)[1] for a in head.argv
                    if a.startswith({ray_nodes.GCS: "--port=",
                                     ray_nodes.DASHBOARD: "--dashboard-port="}[index]))
        return [head, *(n.model_copy(update={"wait_for": f"{head.ip}:{port}"})
                        for n in plan[1:])]
    return apply


def _profiled(plan: Plan) -> Plan:
    """Each ``ray start`` under cProfile (profiles in $RAY_STARTUP_PROFILE_DIR); argv keeps
    ``start`` second, which the backend reads to accept the CLI's exit."""
    out = Path(os.environ.get("RAY_STARTUP_PROFILE_DIR", "/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    script = out / "ray-profiled"
    script.write_text(f"#!{sys.executable}\n"
                      "import cProfile, os, sys\n"
                      f"out = {str(out)!r} + '/' + os.environ['EPHEMERAL_NODE'] + '.prof'\n"
                      "cProfile.run('from ray.scripts.scripts import main; main()', out)\n")
    script.chmod(0o755)
    return [n.model_copy(update={"argv": [str(script), *_start_args(n.argv)],
                                 "env": n.env | {"EPHEMERAL_NODE": n.name}}) for n in plan]


def _start_args(argv: list[str]) -> list[str]:
    """``start`` and what follows, whichever command runs it."""
    return argv[argv.index("start"):]


def _ray_cli(plan: Plan) -> Plan:
    """The ``ray`` executable, as nodes ran it before ephemeral.backends.local.ray_start."""
    return [n.model_copy(update={"argv": [ray_nodes.ray_bin(), *_start_args(n.argv)]})
            for n in plan]


def _compose(*fs: Transform) -> Transform:
    def apply(plan: Plan) -> Plan:
        for f in fs:
            plan = f(plan)
        return plan
    return apply


VARIANTS: dict[str, Transform] = {
    "ours": lambda plan: plan,
    "ray-cli": _ray_cli,
    "no-after": _without_env(AFTER_ENV),
    "no-monitor": _with_args(["--no-monitor"], ("head",)),
    "no-metrics": _with_env({"RAY_enable_metrics_collection": "0"}),
    "no-mon-metrics": _compose(_with_args(["--no-monitor"], ("head",)),
                               _with_env({"RAY_enable_metrics_collection": "0"})),
    "nowait-dash": _compose(_without_args(["--include-dashboard=true"]),
                            _with_env({"RAY_DASHBOARD_STARTUP_TIMEOUT_S": "0"}, ("head",))),
    "wait-gcs": _wait_for(ray_nodes.GCS),
    "wait-dash": _wait_for(ray_nodes.DASHBOARD),
    "profiled": _profiled,
}


def kind(cmdline: list[str]) -> str:
    """What a Ray process is, from its command line."""
    text = " ".join(cmdline)
    for needle, name in (("gcs_server", "gcs"), ("raylet", "raylet"),
                         ("dashboard/agent.py", "dash_agent"), ("dashboard/dashboard.py", "dashboard"),
                         ("runtime_env/agent/main.py", "runtime_env_agent"),
                         ("log_monitor.py", "log_monitor"), ("ray-dashboard-", "dash_modules"), ("autoscaler/_private/monitor.py", "monitor"),
                         ("autoscaler/v2/monitor.py", "monitor"),
                         ("ray.util.client.server", "client_server"),
                         ("DashboardAgent", "dash_agent"), ("RuntimeEnvAgent", "runtime_env_agent"),
                         ("forkserver", "dash_modules"), ("resource_tracker", "dash_modules"),
                         ("default_worker.py", "worker"), ("ray::", "worker"),
                         ("/bin/sh", "sh"), (" start", "ray_start_cli")):
        if needle in text:
            return name
    return (cmdline[0] if cmdline else "?").rsplit("/", 1)[-1].split(" ")[0]


class Tracer:
    """Processes of each node session: when each started, and CPU seconds used so far."""

    def __init__(self, sessions: dict[int, str], ips: dict[str, str], uid: str,
                 t0_wall: float) -> None:
        self.sessions, self.ips, self.uid, self.t0 = sessions, ips, uid, t0_wall
        self.strangers: set[int] = set()  # pids seen since t0 that are not the cluster's
        self.seen: dict[int, tuple[str, str, float]] = {}  # pid -> node, kind, start offset
        self.cpu: dict[int, float] = {}

    def sample(self) -> None:
        for p in psutil.process_iter(["pid", "create_time"]):
            pid = p.info["pid"]
            try:
                node = self.sessions.get(os.getsid(pid))
                if node is None and pid not in self.seen:
                    # Agents run in sessions of their own: known by the cluster's marker.
                    if pid in self.strangers or p.info["create_time"] < self.t0 - 1:
                        continue
                    if p.environ().get(procs.UID_ENV) != self.uid:
                        self.strangers.add(pid)
                        continue
                    text = " ".join(p.cmdline())
                    node = next((n for ip, n in self.ips.items() if f"={ip} " in f"{text} "
                                 or f"={ip}:" in text), "?")
                # Again each time: a fork shows its parent's command line until it execs.
                node = node or self.seen[pid][0]
                self.seen[pid] = (node, kind(p.cmdline() or [p.name()]),
                                  p.info["create_time"] - self.t0)
                t = p.cpu_times()
                self.cpu[pid] = t.user + t.system  # own only: children are sampled themselves
            except (OSError, psutil.Error):
                continue

    def starts(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for node, k, at in self.seen.values():
            key = f"{node}.{k}"
            out[key] = round(min(out.get(key, at), at), 2)
        return dict(sorted(out.items(), key=lambda kv: kv[1]))

    def cpu_by_kind(self) -> dict[str, float]:
        """Own CPU of each process at its last sample (a ``ray start`` CLI that exits between
        two samples, 0.5 s apart, is undercounted by at most that)."""
        out: dict[str, float] = {}
        for pid, used in self.cpu.items():
            k = self.seen[pid][1]
            out[k] = round(out.get(k, 0.0) + used, 2)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def run(backend: LocalBackend, name: str, transform: Transform,
        timeout: float = 180) -> dict[str, Any]:
    spec = resolve("ray/train-gpu@1", "ci-cpu")
    identity = ClusterIdentity.manual(spec.spec.name, f"bench-ray-startup-{name}")
    original = ray_nodes.plan
    ray_nodes.plan = lambda *a, **kw: transform(original(*a, **kw))
    ph: dict[str, float] = {}
    try:
        t0, t0_wall = time.monotonic(), time.time()
        handle = backend.create(spec, identity=identity)
        ph["create_returned"] = time.monotonic() - t0
        cdir = backend.home / "clusters" / handle.name
        state = load(cdir)
        assert state is not None
        names = {p.ip: p.name for p in state.plan}
        tracer = Tracer({n.sid: n.name for n in state.nodes}, names, state.uid, t0_wall)
        headers = backend.access(handle).headers
        dash, gcs = handle.endpoints.dashboard or "", handle.endpoints.gcs or ""
        last_sample = 0.0
        while "ready" not in ph:
            now = time.monotonic() - t0
            if now > timeout:
                raise TimeoutError(f"{name}: not ready after {timeout}s: {ph}")
            if "gcs_port" not in ph and baseline.port_open(gcs):
                ph["gcs_port"] = now
            if "gcs_port" in ph:
                body = get_json(f"{dash}/api/v0/nodes?limit=1000&detail=false", timeout=1,
                                headers=headers)
                if body is not None:
                    ph.setdefault("dashboard", now)
                    for r in body.get("data", {}).get("result", {}).get("result", []):
                        if r.get("state") == "ALIVE" and r.get("node_ip") in names:
                            ph.setdefault(f"alive.{names[r['node_ip']]}", now)
                if "jobs_api" not in ph and get_json(f"{dash}/api/jobs/", timeout=1,
                                                     headers=headers) is not None:
                    ph["jobs_api"] = now
            alive = sum(k.startswith("alive.") for k in ph)
            if alive == len(names) and "jobs_api" in ph and \
                    backend.probe(handle).phase.value == "ready":
                ph["ready"] = time.monotonic() - t0
            if now - last_sample > 0.5 or "ready" in ph:
                tracer.sample()
                last_sample = now
            time.sleep(POLL)
        load1 = os.getloadavg()[0]
    finally:
        ray_nodes.plan = original
        keep = os.environ.get("RAY_STARTUP_KEEP_LOGS")
        state = load(backend.home / "clusters" / identity.name)
        if keep and state and state.temp_root:
            shutil.copytree(state.temp_root, Path(keep) / f"{name}-{int(time.time())}",
                            ignore=shutil.ignore_patterns("*.sock", "sockets", "*.so"),
                            dirs_exist_ok=True, symlinks=True)
        backend.delete(identity, wait=True)
    return {"phases": {k: round(v, 2) for k, v in sorted(ph.items(), key=lambda kv: kv[1])},
            "starts": tracer.starts(), "cpu_s": tracer.cpu_by_kind(), "load1": load1}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    chosen = sys.argv[2].split(",") if len(sys.argv) > 2 else \
        [k for k in VARIANTS if k != "profiled"]
    backend = LocalBackend()
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in chosen}
    for i in range(rounds):
        for name in chosen:
            r = run(backend, name, VARIANTS[name])
            results[name].append(r)
            print(f"round {i + 1} {name:12s} load {r['load1']:.1f} | "
                  + " ".join(f"{k}={v:.1f}" for k, v in r["phases"].items()), flush=True)
            print(f"   starts {r['starts']}\n   cpu {r['cpu_s']}", flush=True)
            time.sleep(2)
    print()
    for name, rows in results.items():
        ready = [r["phases"]["ready"] for r in rows]
        cpu = [sum(r["cpu_s"].values()) for r in rows]
        print(f"{name:12s} ready median {statistics.median(ready):5.1f}s "
              f"({', '.join(f'{x:.1f}' for x in ready)}), CPU to ready "
              f"{statistics.median(cpu):5.1f}s", flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ray_startup.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
