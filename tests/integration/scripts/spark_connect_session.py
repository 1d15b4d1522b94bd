"""Open a Spark Connect session and run a real query through it."""

import json
import sys

from pyspark.sql import SparkSession

spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
df = spark.range(0, 1000).selectExpr("id % 10 AS k", "id").groupBy("k").count()
rows = sorted((r["k"], r["count"]) for r in df.collect())
print(json.dumps({"groups": len(rows), "total": sum(c for _, c in rows),
                  "version": spark.version}))
spark.stop()
