"""How a distributed job sizes itself from the cluster it runs on, not from its DAG.

The handle a setup pushes carries each node group's per-node resources (``NodeGroup``), so the
same DAG trains with NCCL on ``ray/train-gpu`` (one GPU per worker) and with gloo on its
``ci-cpu`` profile (no GPUs), with no edit: the DAG renders ``ddp_args(handle)`` into the
entrypoint (registered as a user-defined macro by the reference DAGs).

With GPUs, a training worker is one GPU (``jobs/train_ddp.py`` trains each worker on one device):
a node with 8 GPUs runs 8 workers, each with an equal share of the node's CPUs. Without GPUs, a
worker is one node, with all its CPUs.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Any

from ephemeral.backends.base import ClusterHandle

# Scripts that take the flags below (jobs/train_ddp.py's ScalingConfig options).
SCALING_SCRIPTS = ("train_ddp.py",)
FLAGS = ("--num-workers", "--gpus-per-worker", "--cpus-per-worker")


@dataclass(frozen=True)
class Scaling:
    num_workers: int
    gpus_per_worker: int
    cpus_per_worker: float

    def args(self) -> str:
        cpus = int(self.cpus_per_worker) if self.cpus_per_worker.is_integer() \
            else self.cpus_per_worker
        return (f"--num-workers {self.num_workers} --gpus-per-worker {self.gpus_per_worker} "
                f"--cpus-per-worker {cpus}")


def scaling_of(handle: ClusterHandle | dict[str, Any]) -> Scaling:
    """One training worker per GPU of the GPU groups when the cluster has GPUs, else one per
    node of every worker group.

    Ray Train gives every worker the same resources, so a worker's CPUs are the smallest per-GPU
    share among the GPU groups (each node's CPUs divided by its GPUs, rounded down): every worker
    then fits on any GPU node, and a node's workers never ask for more CPUs than it has."""
    h = handle if isinstance(handle, ClusterHandle) else ClusterHandle.model_validate(handle)
    workers = [g for g in h.groups if g.role == "worker"]
    if not workers:
        raise ValueError(f"the handle of {h.name} lists no worker groups (made by an older "
                         "version of ephemeral?): pass --num-workers, --gpus-per-worker and "
                         "--cpus-per-worker in the entrypoint yourself")
    gpu = [g for g in workers if g.gpus > 0]
    if gpu:
        return Scaling(num_workers=sum(g.replicas * g.gpus for g in gpu), gpus_per_worker=1,
                       cpus_per_worker=min(_cpu_share(g.cpu, g.gpus) for g in gpu))
    return Scaling(num_workers=sum(g.replicas for g in workers), gpus_per_worker=0,
                   cpus_per_worker=float(min(g.cpu for g in workers)))


def _cpu_share(cpu: float, gpus: int) -> float:
    """``cpu / gpus`` rounded down: to whole CPUs when that leaves at least one, else to
    hundredths (Ray takes fractional CPUs), so ``gpus`` shares never exceed ``cpu``."""
    share = cpu / gpus
    return float(math.floor(share)) if share >= 1 else math.floor(share * 100) / 100


def ddp_args(handle: ClusterHandle | dict[str, Any]) -> str:
    """``--num-workers N --gpus-per-worker G --cpus-per-worker C`` for ``handle``'s cluster."""
    return scaling_of(handle).args()


def with_scaling(entrypoint: str, handle: ClusterHandle | dict[str, Any]) -> str:
    """``entrypoint`` with the scaling flags it does not set itself appended, when it runs a
    script that takes them (``SCALING_SCRIPTS``); any other entrypoint as it is."""
    words = shlex.split(entrypoint)
    if not any(w.rsplit("/", 1)[-1] in SCALING_SCRIPTS for w in words):
        return entrypoint
    given = {w.split("=", 1)[0] for w in words}
    s = scaling_of(handle)
    values = dict(zip(FLAGS, s.args().split()[1::2], strict=True))
    extra = [f"{flag} {value}" for flag, value in values.items() if flag not in given]
    return " ".join([entrypoint, *extra])
