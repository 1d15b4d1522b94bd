"""A tiny Ray job: one task on every node of the cluster, then a small parallel sum.

Run as a Ray job (the Jobs API sets RAY_ADDRESS); prints a one-line JSON result.
"""

import json

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# The engine this job runs on, read (not imported) by ephemeral.adhoc: the Ray form refuses
# a Spark application before creating a cluster it would fail on.
__engine__ = "ray"


@ray.remote(num_cpus=0)
def where() -> str:
    return ray.util.get_node_ip_address()


@ray.remote
def square(x: int) -> int:
    return x * x


def main() -> None:
    ray.init()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    ips = ray.get([
        where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
        .remote() for n in nodes])
    total = sum(ray.get([square.remote(i) for i in range(100)]))
    print(json.dumps({"nodes": sorted(ips), "sum_of_squares": total}))


if __name__ == "__main__":
    main()
