"""The local backend counts every node's GPUs and memory together: all nodes share one host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ephemeral.backends.local import backend as local
from ephemeral.backends.local import gpus
from ephemeral.errors import BackendUnavailable, SpecError
from ephemeral.specs.loader import parse_spec
from ephemeral.specs.models import RaySpec, SparkSpec
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
    monkeypatch.setattr(gpus, "visible", lambda: ["0"])


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


# -- which GPUs each node gets --------------------------------------------------------------

@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpus, "host_gpus", lambda: 4)
    monkeypatch.setenv("EPHEMERAL_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path


def test_each_ray_node_gets_gpus_of_its_own(four_gpus: Path) -> None:
    """Without its own CUDA_VISIBLE_DEVICES every node numbered the host's GPUs from 0: both
    ranks of a two-worker DDP trial ran on GPU 0 (NCCL refuses that), GPUs 1-3 idle."""
    from ephemeral.backends.local import ray_nodes

    spec = resolved(ray(0, [(1, 2), (2, 1)]))
    counts = local.node_gpus(spec)
    assert counts == [0, 1, 1, 2]
    devices = gpus.per_node(gpus.claim(four_gpus / "c1", 0, sum(counts)), counts)
    assert isinstance(spec.spec, RaySpec)
    nodes = ray_nodes.plan(spec.spec, 0, four_gpus / "t", four_gpus / "token", devices)
    assert [n.env.get("CUDA_VISIBLE_DEVICES") for n in nodes] == ["", "0", "1", "2,3"]
    assert [a for n in nodes for a in n.argv if a.startswith("--num-gpus")] == [
        "--num-gpus=0", "--num-gpus=1", "--num-gpus=1", "--num-gpus=2"]


def test_clusters_side_by_side_never_share_a_gpu_and_claims_lapse(four_gpus: Path) -> None:
    first, second = four_gpus / "c1", four_gpus / "c2"
    first.mkdir()
    second.mkdir()
    assert gpus.claim(first, 0, 3) == ["0", "1", "2"]
    assert gpus.claim(second, 1, 1) == ["3"]
    with pytest.raises(BackendUnavailable, match=r"needs 1 GPU\(s\) and 0 of this host's 4 are "
                                                 r"free \(held by local clusters: c1, c2\)"):
        gpus.claim(four_gpus / "c3", 2, 1)
    gpus.release(first, 0)
    (four_gpus / "c3").mkdir()
    assert gpus.claim(four_gpus / "c3", 2, 2) == ["0", "1"]
    second.rmdir()  # a cluster whose state folder is gone holds nothing
    assert gpus.claim(four_gpus / "c4", 3, 2) == ["2", "3"]


def test_a_worker_limited_to_some_gpus_gives_out_only_those(
        four_gpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa,GPU-bb")
    assert gpus.visible() == ["GPU-aa", "GPU-bb"]
    assert gpus.claim(four_gpus / "c1", 0, 2) == ["GPU-aa", "GPU-bb"]
    assert gpus.node_env([[], ["GPU-bb"]], 1) == {"CUDA_VISIBLE_DEVICES": "GPU-bb"}
    assert gpus.node_env([[], ["GPU-bb"]], 0) == {"CUDA_VISIBLE_DEVICES": ""}
    assert gpus.node_env(None, 0) == {}  # a plan without claims changes nothing
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus.visible() == []


def test_each_spark_worker_reads_its_own_gpus_from_a_resources_file(four_gpus: Path) -> None:
    """Spark's discovery script lists every GPU of the host, so each worker claimed the same
    addresses."""
    import json

    from ephemeral.backends.local import spark_nodes
    from ephemeral.specs import resolve

    spec = resolve("spark/etl-gpu", None)
    counts = local.node_gpus(spec)
    assert counts == [0, 1, 1, 0]  # master, two workers, Connect
    devices = gpus.per_node(gpus.claim(four_gpus / "c1", 0, sum(counts)), counts)
    work = four_gpus / "spark"
    assert isinstance(spec.spec, SparkSpec)
    nodes = spark_nodes.plan(spec.spec, 0, work, auth_props=work / "a", connect_props=work / "c",
                             devices=devices)
    # Executors inherit their worker's CUDA_VISIBLE_DEVICES, so the addresses they are given
    # count from 0 within it, whatever the host's ids (UUIDs, MIG) are.
    assert [n.env["CUDA_VISIBLE_DEVICES"] for n in nodes] == ["", "0", "1", ""]
    workers = [n for n in nodes if n.role == "worker"]
    files = spark_nodes.resource_files(work, devices)
    for i, node in enumerate(workers):
        opts = node.env["SPARK_WORKER_OPTS"]
        assert "discoveryScript" not in opts
        path = work / f"worker-{i}" / "gpus.json"
        assert f"-Dspark.worker.resourcesFile={path}" in opts
        assert json.loads(files[path]) == [{"id": {"componentName": "spark.worker",
                                                   "resourceName": "gpu"},
                                            "addresses": ["0"]}]


def test_ray_object_stores_are_counted_across_every_node_against_the_hosts_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """All nodes run on this host: a cluster whose object stores (shared memory, held) need
    more than the host has started its nodes, then failed. Spark's worker memory is a ceiling,
    held by nobody: not counted."""
    import psutil

    from ephemeral.specs import resolve

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"total": 8 * 2**30})())
    data = ray(0, [(0, 2)])
    data["head"]["memory"] = "2Gi"
    data["workerGroups"][0]["memory"] = "16Gi"
    with pytest.raises(SpecError) as err:
        local.check_spec(resolved(data))
    [(field, message)] = [p for p in err.value.problems if "memory" in p[1]]
    assert field == "head.memory, workerGroups[0].memory"
    assert "need 8.5 GiB of shared memory but this host has 8.0 GiB" in message
    assert "workerGroups[0].memory 16Gi x 2 replicas" in message
    assert "use --profile ci-cpu" in message
    monkeypatch.setattr(gpus, "visible", lambda: [])
    data["workerGroups"][0]["memory"] = "12Gi"  # 6.5 GiB of stores: asked, not held, beyond
    local.check_spec(resolved(data))
    local.check_spec(resolve("spark/etl"))  # 16 GiB of worker memory: a ceiling
