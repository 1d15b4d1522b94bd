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
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ephemeral.backends.base import ClusterHandle, NodeGroup

if TYPE_CHECKING:
    from ephemeral.specs.models import RaySpec

# Scripts that take the flags below (jobs/train_ddp.py's ScalingConfig options).
SCALING_SCRIPTS = ("train_ddp.py",)
FLAGS = ("--num-workers", "--gpus-per-worker", "--cpus-per-worker")


@dataclass(frozen=True)
class Scaling:
    num_workers: int
    gpus_per_worker: int
    cpus_per_worker: float

    def args(self) -> str:
        return shlex.join(self.argv())

    def argv(self) -> list[str]:
        cpus = int(self.cpus_per_worker) if self.cpus_per_worker.is_integer() \
            else self.cpus_per_worker
        return ["--num-workers", str(self.num_workers), "--gpus-per-worker",
                str(self.gpus_per_worker), "--cpus-per-worker", str(cpus)]


def scaling_of(handle: ClusterHandle | dict[str, Any]) -> Scaling:
    """One training worker per GPU of the GPU groups when the cluster has GPUs, else one per
    node of every worker group.

    Ray Train gives every worker the same resources, so a worker's CPUs are the smallest per-GPU
    share among the GPU groups (each node's CPUs divided by its GPUs, rounded down): every worker
    then fits on any GPU node, and a node's workers never ask for more CPUs than it has."""
    h = handle if isinstance(handle, ClusterHandle) else ClusterHandle.model_validate(handle)
    if not any(g.role == "worker" for g in h.groups):
        raise ValueError(f"the handle of {h.name} lists no worker groups (made by an older "
                         "version of ephemeral?): pass --num-workers, --gpus-per-worker and "
                         "--cpus-per-worker in the entrypoint yourself")
    return _scaling(h.groups)


def _scaling(groups: Sequence[NodeGroup]) -> Scaling:
    workers = [g for g in groups if g.role == "worker"]
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


def ddp_value(handle: ClusterHandle | dict[str, Any], flag: str) -> str:
    """The value of one of ``FLAGS`` for ``handle``'s cluster: one word of an argv entrypoint
    (``RayJobOperator``), where ``ddp_args``' several words would be quoted as one."""
    argv = scaling_of(handle).argv()
    return dict(zip(argv[::2], argv[1::2], strict=True))[flag]


def with_scaling(entrypoint: str, handle: ClusterHandle | dict[str, Any]) -> str:
    """``entrypoint`` with the scaling flags it does not set itself appended, when it runs a
    script that takes them (``SCALING_SCRIPTS``); any other entrypoint as it is."""
    if not _runs_scaling_script(entrypoint):
        return entrypoint
    given = given_scaling(entrypoint)
    s = scaling_of(handle)
    values = dict(zip(FLAGS, s.args().split()[1::2], strict=True))
    extra = [f"{flag} {value}" for flag, value in values.items() if flag not in given]
    return " ".join([entrypoint, *extra])


_PYTHON = re.compile(r"python(?:[0-9]+(?:\.[0-9]+)?)?")
_PYTHON_VALUE_OPTIONS = ("-X", "-W")  # python's options that take the next word


def script_word(argv: Sequence[str]) -> str | None:
    """The script an entrypoint runs: the first word after ``python`` (``python3.11``) and its
    options, or the command itself (``./train_ddp.py``); None for ``python -m``/``-c``. Only it
    is the script: an argument (``--model-uri file:///data/train_ddp.py``) is not."""
    if not argv:
        return None
    if not _PYTHON.fullmatch(argv[0].rsplit("/", 1)[-1]):
        return argv[0]
    words = iter(argv[1:])
    for word in words:
        if word[:2] in ("-m", "-c"):  # a module or a command, no script file
            return None
        if word in _PYTHON_VALUE_OPTIONS:
            next(words, None)
        elif not word.startswith("-") or word == "-":
            return word
    return None


def _runs_scaling_script(entrypoint: str) -> bool:
    script = script_word(shlex.split(entrypoint))
    return script is not None and script.rsplit("/", 1)[-1] in SCALING_SCRIPTS


def _scaling_flag(name: str) -> str | None:
    """The flag of ``FLAGS`` that ``name`` (a word before any ``=``) stands for, or None.
    argparse takes an unambiguous prefix of a long option (``--num-w 3`` is ``--num-workers
    3``), so a prefix of one flag counts: missed, the cluster's value would be appended after
    the user's and win (the parser keeps the last). A prefix the script's parser finds
    ambiguous (``--c``: --cpus-per-worker or --checkpoint-every) fails in its parser, which
    the form runs before creating a cluster (``adhoc.check_arguments``)."""
    if not name.startswith("--") or len(name) < 3:
        return None
    flags = [flag for flag in FLAGS if flag.startswith(name)]
    return flags[0] if len(flags) == 1 else None


def given_scaling(entrypoint: str) -> dict[str, str]:
    """The scaling flags ``entrypoint`` sets itself (``--flag value``, ``--flag=value``, or a
    prefix argparse takes for the flag), with the value its parser keeps: the last one."""
    words = shlex.split(entrypoint)
    given: dict[str, str] = {}
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        if (flag := _scaling_flag(name)) is not None:
            given[flag] = value if eq else (words[i + 1] if i + 1 < len(words) else "")
    return given


def placement_problem(entrypoint: str, spec: RaySpec) -> str | None:
    """Why the training workers ``entrypoint`` asks for cannot all be placed on ``spec``'s
    nodes, or None. Ray Train waits for every worker's resources until the job's limit, holding
    the cluster meanwhile, so a request no node layout can meet is refused before it is made.
    Generous on purpose, so a placement that can succeed is never refused: each group counts
    with its maxReplicas (KubeRay's autoscaler adds workers a pending job asks for), each node
    with its CPUs rounded up (as both backends start it), the head with its CPUs only when it
    runs tasks. Flags the entrypoint leaves out come from the cluster (``with_scaling``)."""
    if not _runs_scaling_script(entrypoint):
        return None
    given = given_scaling(entrypoint)
    workers = [NodeGroup(name=g.name, role="worker", replicas=g.replicas, cpu=g.cpu,
                         memory_bytes=0, gpus=g.gpus) for g in spec.worker_groups]
    default = dict(zip(FLAGS, _scaling(workers).args().split()[1::2], strict=True))
    try:
        n, gpus, cpus = (float(given.get(flag, default[flag])) for flag in FLAGS)
    except ValueError:
        return None  # the job's own parser refuses it (adhoc.check_arguments)
    if not all(map(math.isfinite, (n, gpus, cpus))):
        return None  # so is nan or inf: its rule is the parser's alone
    if cpus <= 0 and gpus <= 0:
        return None  # asks for nothing a node runs out of
    nodes = [(math.ceil(spec.head.cpu) if spec.head.run_tasks else 0, spec.head.gpus, 1)]
    nodes += [(math.ceil(g.cpu), g.gpus, g.max) for g in spec.worker_groups]
    fit = sum(count * _fits(node_cpus, node_gpus, cpus, gpus)
              for node_cpus, node_gpus, count in nodes)
    if n <= fit:
        return None
    return (f"it asks for {n:g} training worker(s) of {cpus:g} CPU(s) and {gpus:g} GPU(s) each; "
            f"this cluster's nodes can hold at most {fit}, so the job would wait for the rest "
            "until its limit: leave out --num-workers, --gpus-per-worker and --cpus-per-worker "
            "to size it from the cluster, or ask for more workers (the form's workers)")


def _fits(node_cpus: float, node_gpus: float, cpus: float, gpus: float) -> int:
    """How many workers of ``cpus``/``gpus`` one node holds (a tiny margin for float sums)."""
    by_cpu = math.floor(node_cpus / cpus + 1e-9) if cpus > 0 else None
    by_gpu = math.floor(node_gpus / gpus + 1e-9) if gpus > 0 else None
    return min(n for n in (by_cpu, by_gpu) if n is not None)
