"""The local backend refuses a spec whose ``runtimeEnv.env`` reference has no source in the
creating environment, before anything starts: the job would otherwise run without it."""

from __future__ import annotations

from typing import Any

import pytest

from ephemeral.backends.local import backend as local
from ephemeral.errors import SpecError
from ephemeral.specs.loader import parse_spec
from ephemeral.specs.resolve import ResolvedSpec

SOURCE = "H36_SHOP_DB_URL"
SECRET = "H36_HF_TOKEN"


def resolved(env: list[dict[str, Any]]) -> ResolvedSpec:
    data = {"kind": "RayCluster", "name": "envs", "version": 1, "rayVersion": "2.60.0",
            "image": "rayproject/ray:2.60.0-py311-cpu",
            "workerGroups": [{"name": "w", "replicas": 1}], "runtimeEnv": {"env": env}}
    return ResolvedSpec(spec=parse_spec(data, "envs.yaml"), ref="ray/envs@1",
                        source="envs.yaml", profile=None, hash="0" * 12)


ENV: list[dict[str, Any]] = [{"name": "NCCL_DEBUG", "value": "WARN"},
                             {"name": "DB_URL", "fromEnv": SOURCE},
                             {"name": SECRET, "secretKeyRef": {"name": "hf", "key": "token"}}]


def env_problems(spec: ResolvedSpec) -> list[tuple[str, str]]:
    try:
        local.check_spec(spec)
    except SpecError as err:
        return [p for p in err.problems if p[0].startswith("runtimeEnv")]
    return []


def test_unset_sources_are_refused_naming_entry_and_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SOURCE, raising=False)
    monkeypatch.delenv(SECRET, raising=False)
    problems = env_problems(resolved(ENV))
    assert [f for f, _ in problems] == ["runtimeEnv.env[1].fromEnv",
                                        "runtimeEnv.env[2].secretKeyRef"]
    assert f"DB_URL: the local backend reads it from the variable {SOURCE}" in problems[0][1]
    assert f"set {SOURCE}" in problems[0][1]
    assert f"{SECRET} is not set there" in problems[1][1]


def test_set_sources_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOURCE, "postgresql://shop")
    monkeypatch.setenv(SECRET, "")  # set, if empty: the job gets what the environment has
    assert env_problems(resolved(ENV)) == []
