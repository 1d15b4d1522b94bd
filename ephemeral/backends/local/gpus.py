"""This host's GPUs, divided among the nodes of local clusters.

Each node gets devices of its own: ``CUDA_VISIBLE_DEVICES`` for a Ray node (Ray numbers a
node's GPUs from that list), a resources file for a Spark worker (which otherwise runs a
discovery script that lists every GPU of the host). Without it every node numbered the host's
GPUs from 0: both ranks of a two-worker DDP trial ran on one GPU, which NCCL refuses, while
the others sat idle; and two clusters side by side shared them too. Claims sit beside the slot
claims, under their lock, and lapse as they do: with the cluster's state folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from ephemeral.backends.local import slots
from ephemeral.errors import BackendUnavailable


def host_gpus() -> int:
    """GPUs this host has, as nvidia-smi lists them (0 without a driver)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def visible() -> list[str]:
    """The devices this process may give out: its own ``CUDA_VISIBLE_DEVICES`` when set (an
    Airflow worker limited to some GPUs), else every GPU of the host."""
    limited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if limited is not None:
        return [d.strip() for d in limited.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(host_gpus())]


def _claims() -> Path:
    return slots.runtime_dir() / "gpus"


def claim(state_dir: Path, slot: int, wanted: int) -> list[str]:
    """``wanted`` devices no other live local cluster holds, for the cluster whose state lives
    in ``state_dir`` (in slot ``slot``); BackendUnavailable when too few are free."""
    if wanted == 0:
        return []
    with slots.locked(slots.runtime_dir() / "slots.lock"):
        root = _claims()
        root.mkdir(exist_ok=True)
        held: dict[str, str] = {}
        for f in root.glob("*.json"):
            try:
                c = json.loads(f.read_text())
                owner, devices = str(c["owner"]), [str(d) for d in c["devices"]]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if owner != str(state_dir) and slots.held(owner):
                held |= dict.fromkeys(devices, Path(owner).name)
        devices = visible()
        free = [d for d in devices if d not in held]
        if len(free) < wanted:
            users = ", ".join(sorted(set(held.values()))) or "none"
            raise BackendUnavailable(
                f"the cluster needs {wanted} GPU(s) and {len(free)} of this host's "
                f"{len(devices)} are free (held by local clusters: {users}); delete one "
                "(ephemeral down) or wait for it")
        mine = free[:wanted]
        (root / f"{slot}.json").write_text(json.dumps({"owner": str(state_dir),
                                                        "devices": mine}))
        return mine


def release(state_dir: Path, slot: int) -> None:
    f = _claims() / f"{slot}.json"
    with slots.locked(slots.runtime_dir() / "slots.lock"):
        try:
            if json.loads(f.read_text()).get("owner") == str(state_dir):
                f.unlink()
        except (OSError, ValueError, AttributeError):
            pass


def per_node(devices: Sequence[str], counts: Sequence[int]) -> list[list[str]]:
    """``devices`` split in order among nodes that want ``counts`` GPUs each."""
    it: Iterator[str] = iter(devices)
    return [[next(it) for _ in range(n)] for n in counts]


def node_env(devices: list[list[str]] | None, node: int) -> dict[str, str]:
    """A node's ``CUDA_VISIBLE_DEVICES``: its own devices, none for a node without GPUs (not
    the Airflow worker's, which its environment would pass on). Nothing without a claim."""
    if devices is None:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(devices[node] if node < len(devices) else [])}


def resources_file(count: int) -> str:
    """A Spark worker's ``spark.worker.resourcesFile``: ``count`` GPUs, so it runs no
    discovery. Addresses as its executors see them, which inherit the worker's
    ``CUDA_VISIBLE_DEVICES`` (``node_env``): 0 to count - 1, whatever the host's ids."""
    return json.dumps([{"id": {"componentName": "spark.worker", "resourceName": "gpu"},
                        "addresses": [str(i) for i in range(count)]}])
