"""The in-memory backend is a test double: the CLI does not offer it and refuses it, naming the
real backends, and triggers (which run in the triggerer, another process) refuse it too."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.cli.test_cli import EPHEMERAL, cli


def test_the_cli_does_not_offer_it() -> None:
    for args in (["--help"], ["up", "--help"], ["ls", "--help"]):
        assert "fake" not in cli(*args).stdout


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_cli_refuses_it_naming_the_real_backends(how: str) -> None:
    env = dict(os.environ)
    args = [EPHEMERAL, "ls"]
    if how == "flag":
        args += ["--backend", "fake"]
    else:
        env["EPHEMERAL_BACKEND"] = "fake"
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.replace("│", " ").split())
    assert "test double" in said
    assert "local, kubernetes" in said
    assert "Traceback" not in proc.stderr


def test_an_unknown_backend_names_the_real_ones() -> None:
    proc = cli("ls", "--backend", "ray", check=False)
    assert proc.returncode == 2
    assert "use one of: local, kubernetes" in " ".join(proc.stderr.replace("│", " ").split())


@pytest.mark.parametrize("trigger", ["ClusterReadyTrigger", "RayJobTrigger"])
def test_a_dag_cannot_give_it_to_a_trigger(trigger: str) -> None:
    from ephemeral.airflow import triggers
    from ephemeral.errors import BackendUnavailable

    kwargs = {"job_id": "j"} if trigger == "RayJobTrigger" else {"timeout": 5}
    with pytest.raises(BackendUnavailable, match=r"test double.*local, kubernetes"):
        getattr(triggers, trigger)(backend="fake", handle={"name": "c"}, **kwargs)
