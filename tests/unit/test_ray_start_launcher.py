"""Local Ray nodes start through ``ephemeral.backends.local.ray_start``: Ray's own ``ray start``
command without the Serve, state and Jobs CLI groups (about 1 s of CPU per node, the head's on
the path to its GCS). The command must stay Ray's, with its exit codes, and the backend must
still accept a node whose ``ray start`` exited 0, whichever way it was started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ephemeral.backends.local import ray_nodes
from ephemeral.specs import resolve


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "importtime", "-m",
                           "ephemeral.backends.local.ray_start", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_launcher_runs_ray_start_without_serve_or_pandas() -> None:
    done = _run("start", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("Usage: ray start"), done.stdout[:200]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "ray.scripts.scripts" in imported  # Ray's own command, not a copy
    # ``ray.serve.scripts`` shows as a failed attempt (microseconds); its package never loads.
    assert not imported & {"ray.serve", "pandas", "fastapi"}
    assert not [m for m in imported if m.startswith(("ray.serve.", "pandas.", "fastapi."))
                and m != "ray.serve.scripts"]


def test_the_launcher_keeps_ray_start_exit_codes() -> None:
    done = _run("start", "--no-such-option")
    assert done.returncode == 2
    assert "No such option" in done.stderr


def test_every_node_of_a_plan_runs_ray_start_through_the_launcher(tmp_path: Path) -> None:
    spec = resolve("ray/train-gpu@1", "ci-cpu").spec
    nodes = ray_nodes.plan(spec, 0, tmp_path, tmp_path / "token")  # type: ignore[arg-type]
    assert len(nodes) == 3
    for node in nodes:
        assert node.argv[:4] == ray_nodes.RAY_START
        assert ray_nodes.runs_ray_start(node.argv)
    assert nodes[0].argv[4] == "--head"


def test_a_node_started_by_an_earlier_version_still_counts_as_ray_start() -> None:
    assert ray_nodes.runs_ray_start(["/venv/bin/ray", "start", "--head"])
    assert ray_nodes.runs_ray_start(["/other/python", "-m",
                                     "ephemeral.backends.local.ray_start", "start"])
    # A Spark daemon never exits while healthy: an exit is a failure.
    assert not ray_nodes.runs_ray_start(["/usr/bin/java", "-cp", "x",
                                         "org.apache.spark.deploy.worker.Worker"])


def test_workers_wait_for_the_heads_agent_after_importing(tmp_path: Path) -> None:
    """A worker asks the GCS for the head's raylet every 2 s once it starts asking: it waits,
    imports done, for the head's dashboard agent to listen, then asks once."""
    import os
    import socket
    import threading
    import time

    from ephemeral.backends.local import slots
    from ephemeral.backends.local.ray_start import AFTER_ENV

    spec = resolve("ray/train-gpu@1", "ci-cpu").spec
    head, *workers = ray_nodes.plan(spec, 3, tmp_path, tmp_path / "token")  # type: ignore[arg-type]
    assert AFTER_ENV not in head.env
    agent = f"{head.ip}:{slots.named_port(3, 0, ray_nodes.AGENT_HTTP)}"
    assert {w.env[AFTER_ENV] for w in workers} == {agent}

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = socket.socket()

    def listen_later() -> None:
        time.sleep(2.0)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    threading.Thread(target=listen_later, daemon=True).start()
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "ephemeral.backends.local.ray_start",
                               "start", "--help"], capture_output=True, text=True, timeout=120,
                              env=os.environ | {AFTER_ENV: f"127.0.0.1:{port}"})
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - started >= 2.0
