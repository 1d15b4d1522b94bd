"""Open a Spark Connect session (with the server's token from $CONNECT_TOKEN) and run a real
query through it."""

import json
import os
import sys

from ephemeral.jobs.spark_jobs import connect_session

spark = connect_session(sys.argv[1], token=os.environ.get("CONNECT_TOKEN"))
df = spark.range(0, 1000).selectExpr("id % 10 AS k", "id").groupBy("k").count()
rows = sorted((r["k"], r["count"]) for r in df.collect())
print(json.dumps({"groups": len(rows), "total": sum(c for _, c in rows),
                  "version": spark.version}))
spark.stop()
