"""One live Airflow stack for every module of this package (its start is the expensive part)
and the fault matrix's recorder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.airflow.live import reliability
from tests.airflow.live.probes import cluster_processes
from tests.airflow.live.stack import AirflowStack

DAGS = Path(__file__).parent / "dags"


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    base = tmp_path_factory.mktemp("live-airflow")
    s = AirflowStack(home=base / "airflow", dags=DAGS, ephemeral_home=base / "ephemeral")
    try:
        s.start()
        yield s
    finally:
        s.stop()
        from ephemeral.backends import OwnerSelector
        from ephemeral.backends.local import LocalBackend

        backend = LocalBackend(s.ephemeral_home)
        for h in backend.list_owned(OwnerSelector.everything()):
            backend.delete(h, wait=True)
        # Processes of this stack's clusters only (each carries its cluster folder in its
        # environment): other agents and benchmarks start engines on this machine meanwhile.
        leaked = cluster_processes(s.ephemeral_home)
        if leaked:
            psutil.wait_procs([psutil.Process(p) for pids in leaked.values() for p in pids
                               if psutil.pid_exists(p)], timeout=5)
            leaked = cluster_processes(s.ephemeral_home)
        assert not leaked, f"Ray/Spark processes left behind: {leaked}"


@pytest.fixture(scope="session")
def matrix() -> Iterator[reliability.Results]:
    """Scenario results; merged into the results file and docs/reliability.md at the end."""
    results = reliability.Results()
    yield results
    if results.rows:
        reliability.save(results.rows)
