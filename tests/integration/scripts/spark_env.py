"""Print the environment of the driver and of an executor as JSON (what a job could log)."""

import json
import os

from pyspark.sql import SparkSession

# One small executor: the ci-cpu workers have too little memory for the 1g default.
spark = (SparkSession.builder.appName("ephemeral-env-probe")
         .config("spark.executor.cores", "1").config("spark.cores.max", "1")
         .config("spark.executor.memory", "512m").getOrCreate())
executor = spark.sparkContext.parallelize([0], 1).map(lambda _: dict(os.environ)).collect()[0]
result = json.dumps({"driver": dict(os.environ), "executor": executor})
# Several KiB on one line: spark-submit's output could interleave a log line into it, so the
# result goes through spark_submit's result file (as jobs/_common.emit_result does).
if os.environ.get("EPHEMERAL_RESULT_FILE"):
    with open(os.environ["EPHEMERAL_RESULT_FILE"], "w") as fh:
        fh.write(result)
print(result)
spark.stop()
