"""Ray on the local backend: the ``ray start`` command of every node, endpoints, readiness.

All nodes start at once, through ``ray_start`` (Ray's ``ray start`` without the CLI groups a
node never uses): workers import while the head starts, then wait for the head's dashboard
agent and join it, so a cluster is ready in about the time of its slowest node instead of head
time plus worker time. Each node has its own ``--temp-dir`` (two nodes sharing one hang at
start) and its own 127.0.x.y address.

What the start costs (bench/ray_startup.py): one chain of Python processes that each import Ray
(head ``ray start``, GCS, dashboard, head raylet once the dashboard is up, its dashboard agent,
then the workers' agents), CPU-bound from end to end on 2 cores. The ``ray`` executable's own
imports were a second of CPU per node (``ray_start`` drops them), and Ray 2.60 has no supported
switch that removes a process without removing a capability: the
autoscaler monitor (``--no-monitor``) is what ``ray status`` reads, the Ray Client server has no
off switch once ray[client] is installed, and the agents and log monitor carry the Jobs API,
runtime envs and task prints.

Every node runs with Ray's token authentication (``RAY_AUTH_MODE=token``): the dashboard, the
Jobs API, GCS and the agents refuse any call without the cluster's token. Nodes read the token
from its 0600 file (``RAY_AUTH_TOKEN_PATH``), so it is in no argv and no environment listing.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ephemeral.backends.base import ClusterStatus, Endpoints, Phase
from ephemeral.backends.http import get_json
from ephemeral.backends.local import gpus, slots
from ephemeral.backends.local.ray_start import AFTER_ENV
from ephemeral.backends.local.state import PlannedNode
from ephemeral.specs.models import RaySpec
from ephemeral.specs.quantities import memory_bytes

# Named ports of a node, by index into its slot block.
GCS, DASHBOARD, CLIENT, NODE_MANAGER, OBJECT_MANAGER, AGENT_GRPC, AGENT_HTTP, METRICS, RUNTIME_ENV = (
    range(9)
)
MIN_OBJECT_STORE = 100 * 2**20


def auth_env(token_file: Path) -> dict[str, str]:
    """What a Ray process (node, or a driver calling ``ray.init``) needs to join the cluster."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def auth_headers(token: str) -> dict[str, str]:
    """What an HTTP client of the dashboard and Jobs API sends."""
    return {"Authorization": f"Bearer {token}"}


def ray_bin() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


# ``ray start`` as the nodes run it: the ``ray`` command's own ``start``, without importing the
# CLI groups a node start never uses (ephemeral.backends.local.ray_start says what it saves).
RAY_START = [sys.executable, "-m", "ephemeral.backends.local.ray_start", "start"]


def runs_ray_start(argv: list[str]) -> bool:
    """Whether a node's command is ``ray start``, which exits 0 once its node runs (clusters
    made by earlier versions ran the ``ray`` executable)."""
    return argv[1:2] == ["start"] or argv[1:4] == RAY_START[1:]


def endpoints(slot: int) -> Endpoints:
    ip = slots.node_ip(slot, 0)
    return Endpoints(
        dashboard=f"http://{ip}:{slots.named_port(slot, 0, DASHBOARD)}",
        ray_client=f"ray://{ip}:{slots.named_port(slot, 0, CLIENT)}",
        gcs=f"{ip}:{slots.named_port(slot, 0, GCS)}",
    )


def object_store(memory: str) -> int:
    """Bytes of a node's object store, a quarter of its ``memory``: shared memory, held."""
    return max(MIN_OBJECT_STORE, memory_bytes(memory) // 4)


def _node_args(slot: int, node: int, cpus: int, gpus: int, memory: str, temp: str) -> list[str]:
    lo, hi = slots.worker_port_range(slot, node)
    mem = memory_bytes(memory)

    def port(index: int) -> str:
        return str(slots.named_port(slot, node, index))

    return [
        f"--node-ip-address={slots.node_ip(slot, node)}",
        f"--node-manager-port={port(NODE_MANAGER)}",
        f"--object-manager-port={port(OBJECT_MANAGER)}",
        f"--dashboard-agent-grpc-port={port(AGENT_GRPC)}",
        f"--dashboard-agent-listen-port={port(AGENT_HTTP)}",
        f"--metrics-export-port={port(METRICS)}",
        f"--runtime-env-agent-port={port(RUNTIME_ENV)}",
        f"--min-worker-port={lo}",
        f"--max-worker-port={hi}",
        f"--num-cpus={cpus}",
        f"--num-gpus={gpus}",
        f"--memory={mem}",
        f"--object-store-memory={object_store(memory)}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
        "--log-style=record",
        "--log-color=false",
    ]


def plan(spec: RaySpec, slot: int, temp_root: Path, token_file: Path,
         devices: list[list[str]] | None = None) -> list[PlannedNode]:
    """``devices``: the GPUs of each node, in plan order (head first): Ray numbers a node's
    GPUs from its ``CUDA_VISIBLE_DEVICES``, so two nodes never both take the host's GPU 0."""
    env = auth_env(token_file)
    head_ip = slots.node_ip(slot, 0)
    head_cpus = math.ceil(spec.head.cpu) if spec.head.run_tasks else 0
    head = PlannedNode(
        name="head",
        role="head",
        ip=head_ip,
        argv=[
            *RAY_START, "--head",
            f"--port={slots.named_port(slot, 0, GCS)}",
            f"--dashboard-host={head_ip}",
            f"--dashboard-port={slots.named_port(slot, 0, DASHBOARD)}",
            f"--ray-client-server-port={slots.named_port(slot, 0, CLIENT)}",
            "--include-dashboard=true",
            *_node_args(slot, 0, head_cpus, spec.head.gpus, spec.head.memory,
                        str(temp_root / "n0")),
        ],
        env=env | gpus.node_env(devices, 0),
    )
    nodes = [head]
    address = f"--address={head_ip}:{slots.named_port(slot, 0, GCS)}"
    # Workers start with the head, import, then wait for its dashboard agent to listen
    # (ray_start.AFTER_ENV): a worker asks the GCS for the head's raylet every 2 s (fixed in
    # Ray), and asked from the start it lost 0-2 s to that poll's phase. Ray's default of 20
    # tries (~20-40 s) gives up on a busy 2-core machine ("No node info found for head node
    # in GCS").
    worker_env = env | {"RAY_NUM_REDIS_GET_RETRIES": "60",
                        AFTER_ENV: f"{head_ip}:{slots.named_port(slot, 0, AGENT_HTTP)}"}
    for group in spec.worker_groups:
        for i in range(group.replicas):
            n = len(nodes)
            nodes.append(PlannedNode(
                name=f"{group.name}-{i}",
                role="worker",
                ip=slots.node_ip(slot, n),
                argv=[*RAY_START, address,
                      *_node_args(slot, n, max(1, math.ceil(group.cpu)), group.gpus, group.memory,
                                  str(temp_root / f"n{n}"))],
                env=worker_env | gpus.node_env(devices, n),
            ))
    return nodes


def probe(dashboard: str, planned: list[PlannedNode],
          headers: Mapping[str, str] | None = None) -> ClusterStatus:
    """Ready when every planned node is ALIVE at its own address and the Jobs API answers
    (both asked with the cluster's token in ``headers``)."""
    expected = {n.ip for n in planned}
    body: Any = get_json(f"{dashboard}/api/v0/nodes?limit=1000&detail=false", timeout=3,
                         headers=headers)
    if body is None:
        return ClusterStatus(phase=Phase.STARTING, nodes_expected=len(expected),
                             message="the dashboard does not answer yet")
    rows = body.get("data", {}).get("result", {}).get("result", [])
    alive = {r.get("node_ip") for r in rows if r.get("state") == "ALIVE"} & expected
    if len(alive) < len(expected):
        missing = ", ".join(n.name for n in planned if n.ip not in alive)
        return ClusterStatus(phase=Phase.STARTING, nodes_ready=len(alive),
                             nodes_expected=len(expected), message=f"waiting for {missing}")
    if get_json(f"{dashboard}/api/jobs/", timeout=3, headers=headers) is None:
        return ClusterStatus(phase=Phase.STARTING, nodes_ready=len(alive),
                             nodes_expected=len(expected), message="the Jobs API does not answer")
    return ClusterStatus(phase=Phase.READY, nodes_ready=len(alive), nodes_expected=len(expected),
                         message=f"{len(alive)} nodes alive")
