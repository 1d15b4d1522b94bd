"""A Spark application that needs both workers: two 1-core executors, tasks on each."""

import json
import os
import tempfile

from pyspark.sql import SparkSession

spark = (SparkSession.builder.appName("ephemeral-both-workers")
         .config("spark.executor.cores", "1")
         .config("spark.cores.max", "2")
         .config("spark.executor.memory", "512m")
         .config("spark.scheduler.minRegisteredResourcesRatio", "1.0")
         .config("spark.scheduler.maxRegisteredResourcesWaitingTime", "120s")
         .getOrCreate())
sc = spark.sparkContext
hosts = sorted({e.host() for e in sc._jsc.sc().statusTracker().getExecutorInfos()})


def where(_: object) -> list[tuple[str, str]]:
    return [(os.environ.get("SPARK_LOCAL_IP", "?"), tempfile.gettempdir())]


seen = sc.parallelize(range(64), 16).mapPartitions(where).collect()
ran_on = sorted({ip for ip, _ in seen})
total = sc.parallelize(range(1, 1001), 8).sum()
print(json.dumps({"executor_hosts": hosts, "ran_on": ran_on, "sum": total,
                  "task_tmp": sorted({tmp for _, tmp in seen})}))
spark.stop()
