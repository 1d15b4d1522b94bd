"""`ephemeral ls` prints names and endpoints whole: piped (CI logs, grep) it was cut to 80
columns, and the name it printed could not be passed to `down`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ephemeral.backends.fake import InMemoryBackend
from ephemeral.cli import main as cli_main
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import NAME_MAX
from tests.conftest import small

RAY = small("ray/adhoc-cpu", replicas=1)


@pytest.mark.parametrize("all_instances", [False, True])
def test_ls_piped_prints_whole_names_and_endpoints(monkeypatch: pytest.MonkeyPatch,
                                                   all_instances: bool) -> None:
    backend = InMemoryBackend(ready_after_probes=1)
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)
    long_name = ("a-rather-long-cluster-name-for-team-x-" * 2)[:NAME_MAX].rstrip("-")
    handles = [backend.create(RAY, identity=ClusterIdentity.manual(RAY.spec.name, n))
               for n in (None, long_name)]
    result = CliRunner().invoke(cli_main.app, ["ls", *(["--all-instances"] * all_instances)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for h in handles:
        [row] = [line for line in lines if h.name in line.split()]  # whole, on one line
        endpoint = h.endpoints.dashboard or h.endpoints.spark_master
        assert endpoint
        assert endpoint in row.split()
    assert "…" not in result.stdout
