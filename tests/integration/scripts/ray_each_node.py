"""Run one task pinned to every alive node of a Ray cluster; print the node IPs as JSON, and
the temporary folder each task left behind (as a killed process's would be)."""

import json
import sys
import tempfile

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

gcs, driver_ip = sys.argv[1], sys.argv[2]
ray.init(address=gcs, _node_ip_address=driver_ip, logging_level="ERROR")


@ray.remote(num_cpus=0)
def where() -> tuple[str, str]:
    return ray.util.get_node_ip_address(), tempfile.mkdtemp(prefix="left-by-a-task-")


nodes = [n for n in ray.nodes() if n["Alive"]]
refs = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
        .remote() for n in nodes]
ran = ray.get(refs, timeout=120)
print(json.dumps({"nodes": sorted(n["NodeManagerAddress"] for n in nodes),
                  "ran_on": sorted(ip for ip, _ in ran), "left": [d for _, d in ran]}))
ray.shutdown()
