"""A tiny Spark application: estimate pi on every worker and report where tasks ran."""

import json
import os
import random

from pyspark.sql import SparkSession

# The engine this job runs on, read (not imported) by ephemeral.adhoc: the Ray form refuses
# a Spark application before creating a cluster it would fail on.
__engine__ = "spark"


def main() -> None:
    spark = SparkSession.builder.appName("hello-spark").getOrCreate()
    sc = spark.sparkContext
    n = 200_000

    def inside(_: int) -> int:
        x, y = random.random(), random.random()
        return 1 if x * x + y * y <= 1 else 0

    def where(_: object) -> list[str]:
        return [os.environ.get("SPARK_LOCAL_IP", "?")]

    hits = sc.parallelize(range(n), 8).map(inside).sum()
    ran_on = sorted(set(sc.parallelize(range(16), 8).mapPartitions(where).collect()))
    print(json.dumps({"pi": round(4 * hits / n, 3), "ran_on": ran_on}))
    spark.stop()


if __name__ == "__main__":
    main()
