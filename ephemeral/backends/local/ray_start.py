"""``python -m ephemeral.backends.local.ray_start start ...``: Ray's own ``ray start`` command,
without the command groups a node start never uses.

Ray's CLI module imports Serve's, the state API's and the Jobs API's command groups when it
loads, for ``ray serve``, ``ray list`` and ``ray job``. Serve alone pulls in pandas and FastAPI:
about 1 s of CPU in each ``ray start``, three per ci-cpu cluster, the head's on the critical
path to its GCS (bench/ray_startup.py, ``ray-cli`` against ``ours``). Ray imports those groups
in ``try`` blocks and goes on without them, as in its minimal install; marking them absent in
``sys.modules`` takes that path. The processes ``ray start`` launches are fresh interpreters
and import whatever they need.
"""

from __future__ import annotations

import os
import socket
import sys
import time

# Imported by ray.scripts.scripts only to add ``ray serve``, ``ray list/get/summary/logs`` and
# ``ray job`` to the CLI.
UNUSED = ("ray.serve", "ray.util.state.state_cli", "ray.dashboard.modules.job.cli")
AFTER_ENV = "EPHEMERAL_RAY_START_AFTER"
"""``host:port`` a worker's ``ray start`` waits for, once imported: the head's dashboard agent.

A worker's ``ray start`` asks the GCS for the head node every 2 s until the head's raylet has
registered, which it does once its dashboard agent listens. Started with the head, a worker
lost 0-2 s to that poll's phase (bench/ray_startup.py); waiting here, after the imports, it
asks once, just after the head registered."""
AFTER_TIMEOUT = 120.0  # then Ray's own retries take over


def _await(address: str) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + AFTER_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)


def main(argv: list[str]) -> None:
    """Runs the command as the ``ray`` executable does, exit code and all."""
    for name in UNUSED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not installed"
    from ray.scripts.scripts import cli

    if after := os.environ.pop(AFTER_ENV, None):  # not for the processes ray start launches
        _await(after)
    cli.main(args=argv, prog_name="ray")


if __name__ == "__main__":
    main(sys.argv[1:])
