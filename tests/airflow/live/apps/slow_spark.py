"""A Spark application that keeps its executors busy for argv[1] seconds (the fault matrix kills
the master meanwhile)."""

import json
import sys
import time

from pyspark.sql import SparkSession


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    spark = SparkSession.builder.appName("fm-slow").getOrCreate()
    print("fm-slow: started", flush=True)

    def busy(x: int) -> int:
        time.sleep(seconds)
        return x

    n = spark.sparkContext.parallelize(range(2), 2).map(busy).count()
    print(json.dumps({"n": n}), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
