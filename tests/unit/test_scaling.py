"""ddp_args sizes Ray Train from the cluster: one worker per GPU (train_ddp.py trains each worker
on one device), one worker per node without GPUs."""

from __future__ import annotations

import pytest

from ephemeral.backends.base import ClusterHandle, NodeGroup
from ephemeral.jobs.scaling import ddp_args, given_scaling, scaling_of, with_scaling


def _handle(*groups: tuple[str, int, float, int]) -> ClusterHandle:
    nodes = [NodeGroup(name="head", role="head", replicas=1, cpu=4, memory_bytes=1 << 30)]
    nodes += [NodeGroup(name=name, role="worker", replicas=replicas, cpu=cpu,
                        memory_bytes=1 << 30, gpus=gpus) for name, replicas, cpu, gpus in groups]
    return ClusterHandle(name="c", backend="fake", engine="ray", spec_ref="ray/x@1",
                         spec_hash="h", created_at="2026-01-01T00:00:00Z",
                         expires_at="2026-01-01T06:00:00Z", labels={}, groups=nodes)


def test_a_multi_gpu_node_runs_one_worker_per_gpu() -> None:
    # 2 nodes x 8 GPUs: 16 workers of one GPU each, a node's 32 CPUs shared by its 8 workers.
    assert ddp_args(_handle(("gpu", 2, 32, 8))) == \
        "--num-workers 16 --gpus-per-worker 1 --cpus-per-worker 4"
    assert with_scaling("python jobs/train_ddp.py --run r", _handle(("gpu", 2, 32, 8))) == \
        "python jobs/train_ddp.py --run r --num-workers 16 --gpus-per-worker 1 --cpus-per-worker 4"


def test_single_gpu_nodes_keep_one_worker_per_node() -> None:
    assert ddp_args(_handle(("gpu", 2, 8, 1))) == \
        "--num-workers 2 --gpus-per-worker 1 --cpus-per-worker 8"


def test_gpu_groups_of_different_sizes_share_the_smallest_cpu_share() -> None:
    # 2x8 GPUs with 4 CPUs each and 1x4 GPUs with 2 CPUs each: 20 workers that fit on either.
    s = scaling_of(_handle(("big", 2, 32, 8), ("small", 1, 8, 4), ("cpu", 3, 16, 0)))
    assert (s.num_workers, s.gpus_per_worker, s.cpus_per_worker) == (20, 1, 2.0)


@pytest.mark.parametrize(("cpu", "gpus", "share"), [
    (30, 8, 3.0),     # 3.75 rounded down: 8 x 3 fits in 30
    (7.5, 1, 7.0),    # whole CPUs when at least one
    (4, 8, 0.5),      # fewer CPUs than GPUs: a fraction (Ray takes fractional CPUs)
    (1, 3, 0.33),     # rounded down, so 3 shares never exceed the node
])
def test_a_workers_cpus_never_exceed_its_nodes_share(cpu: float, gpus: int,
                                                     share: float) -> None:
    s = scaling_of(_handle(("gpu", 1, cpu, gpus)))
    assert s.cpus_per_worker == share
    assert s.cpus_per_worker * gpus <= cpu


def test_without_gpus_one_worker_per_node_with_its_cpus() -> None:
    assert ddp_args(_handle(("a", 2, 4, 0), ("b", 1, 2, 0))) == \
        "--num-workers 3 --gpus-per-worker 0 --cpus-per-worker 2"


def test_the_train_gpu_spec_right_sized_to_two_gpus_a_node_trains_on_all_four() -> None:
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.specs import ClusterIdentity, resolve

    spec = resolve("ray/train-gpu@1", None, {"workers": {"gpus": 2}})
    h = InMemoryBackend().create(spec, identity=ClusterIdentity(
        spec_name="train-gpu", dag_id="d", run_id="r", task_id="t"))
    assert ddp_args(h.model_dump(mode="json")) == \
        "--num-workers 4 --gpus-per-worker 1 --cpus-per-worker 4"


@pytest.mark.parametrize("entrypoint", [
    "python evaluate.py --model-uri file:///data/train_ddp.py",
    "python etl_features.py --run r --input /data/train_ddp.py",
    "python -m train_ddp", "python -c 'import train_ddp'", "cat train_ddp.py",
])
def test_only_the_script_word_is_judged(entrypoint: str) -> None:
    assert with_scaling(entrypoint, _handle(("gpu", 2, 8, 1))) == entrypoint


@pytest.mark.parametrize("entrypoint", [
    "python train_ddp.py --run r", "python3 -u jobs/train_ddp.py --run r",
    "/usr/bin/python3.11 -X dev -W ignore train_ddp.py --run r", "./train_ddp.py --run r",
])
def test_the_scaling_script_gets_its_flags_however_it_is_started(entrypoint: str) -> None:
    assert with_scaling(entrypoint, _handle(("gpu", 2, 8, 1))) == \
        f"{entrypoint} --num-workers 2 --gpus-per-worker 1 --cpus-per-worker 8"


@pytest.mark.parametrize(("flags", "added"), [
    # argparse takes an unambiguous prefix: the user's value must not be outvoted by one
    # appended after it (the parser keeps the last).
    ("--num-w 3", "--gpus-per-worker 1 --cpus-per-worker 8"),
    ("--num=3 --gpus 1", "--cpus-per-worker 8"),
    ("--cpus-per 2 --n 3 --g=1", ""),
])
def test_a_flag_given_by_a_prefix_argparse_takes_is_given(flags: str, added: str) -> None:
    entrypoint = f"python train_ddp.py --run r {flags}"
    assert with_scaling(entrypoint, _handle(("gpu", 2, 8, 1))) == \
        f"{entrypoint} {added}".rstrip()


def test_a_prefix_counts_for_the_flag_it_names_and_only_that() -> None:
    assert given_scaling("python train_ddp.py --num-w 3 --gpus=0.5 --cpus-per-worker 2") == \
        {"--num-workers": "3", "--gpus-per-worker": "0.5", "--cpus-per-worker": "2"}
    # Not a prefix of a scaling flag, or of none alone: the script's parser judges it.
    assert given_scaling("python train_ddp.py -- --nu-workers 3 --num-workers-x 2 --steps 5") \
        == {}
    assert given_scaling("python train_ddp.py --num-w 3 --num-workers 4") == \
        {"--num-workers": "4"}
