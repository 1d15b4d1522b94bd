"""How a distributed job sizes itself from the cluster it runs on, not from its DAG.

The handle a setup pushes carries each node group's per-node resources (``NodeGroup``), so the
same DAG trains with NCCL on ``ray/train-gpu`` (one GPU per worker) and with gloo on its
``ci-cpu`` profile (no GPUs), with no edit: the DAG renders ``ddp_args(handle)`` into the
entrypoint (registered as a user-defined macro by the reference DAGs).
"""

from __future__ import annotations

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
    """One training worker per worker node: the GPU groups when the cluster has GPUs (a worker
    per GPU node, as many GPUs as each node has), else every worker group."""
    h = handle if isinstance(handle, ClusterHandle) else ClusterHandle.model_validate(handle)
    workers = [g for g in h.groups if g.role == "worker"]
    if not workers:
        raise ValueError(f"the handle of {h.name} lists no worker groups (made by an older "
                         "version of ephemeral?): pass --num-workers, --gpus-per-worker and "
                         "--cpus-per-worker in the entrypoint yourself")
    gpu = [g for g in workers if g.gpus > 0]
    chosen = gpu or workers
    return Scaling(num_workers=sum(g.replicas for g in chosen),
                   gpus_per_worker=min(g.gpus for g in chosen),
                   cpus_per_worker=float(min(g.cpu for g in chosen)))


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
