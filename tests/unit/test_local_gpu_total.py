"""The local backend's GPU check counts every node's GPUs together: all nodes share one host."""

from __future__ import annotations

from typing import Any

import pytest

from ephemeral.backends.local import backend as local
from ephemeral.errors import SpecError
from ephemeral.specs.loader import parse_spec
from ephemeral.specs.resolve import ResolvedSpec


def resolved(data: dict[str, Any]) -> ResolvedSpec:
    return ResolvedSpec(spec=parse_spec(data, "gpus.yaml"), ref="ray/gpus@1",
                        source="gpus.yaml", profile=None, hash="0" * 12)


def ray(head_gpus: int, groups: list[tuple[int, int]]) -> dict[str, Any]:
    return {"kind": "RayCluster", "name": "gpus", "version": 1, "rayVersion": "2.60.0",
            "image": "rayproject/ray:2.60.0-py311-gpu", "head": {"gpus": head_gpus},
            "workerGroups": [{"name": f"g{i}", "replicas": r, "gpus": g}
                             for i, (g, r) in enumerate(groups)]}


def gpu_problems(spec: ResolvedSpec) -> list[tuple[str, str]]:
    try:
        local.check_spec(spec)
    except SpecError as err:
        return [p for p in err.problems if "GPU" in p[1]]
    return []


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "host_gpus", lambda: 1)


def test_head_and_two_single_gpu_groups_do_not_fit_one_gpu(one_gpu: None) -> None:
    """Each of the three asks fits alone; together they ask for 3 of the host's 1."""
    [(field, message)] = gpu_problems(resolved(ray(1, [(1, 1), (1, 1)])))
    assert field == "head.gpus, workerGroups[0].gpus, workerGroups[1].gpus"
    assert "asks for 3 GPU(s) but this host has 1" in message
    assert "use --profile ci-cpu or set gpus: 0" in message


def test_replicas_multiply_and_only_asking_fields_are_named(one_gpu: None) -> None:
    [(field, message)] = gpu_problems(resolved(ray(0, [(0, 3), (1, 2)])))
    assert field == "workerGroups[1].gpus"
    assert "asks for 2 GPU(s)" in message
    assert "workerGroups[1].gpus 1 x 2 replicas" in message


def test_a_spec_that_fits_in_all_passes(one_gpu: None) -> None:
    assert gpu_problems(resolved(ray(0, [(1, 1), (0, 2)]))) == []
    assert gpu_problems(resolved(ray(0, [(0, 2)]))) == []
