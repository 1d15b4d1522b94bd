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

import sys

# Imported by ray.scripts.scripts only to add ``ray serve``, ``ray list/get/summary/logs`` and
# ``ray job`` to the CLI.
UNUSED = ("ray.serve", "ray.util.state.state_cli", "ray.dashboard.modules.job.cli")


def main(argv: list[str]) -> None:
    """Runs the command as the ``ray`` executable does, exit code and all."""
    for name in UNUSED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not installed"
    from ray.scripts.scripts import cli

    cli.main(args=argv, prog_name="ray")


if __name__ == "__main__":
    main(sys.argv[1:])
