"""A Spark application whose result line is broken the way spark-submit's merged output breaks
it: the JVM logs a line between the driver's text and its newline.

    spark_result.py MODE     MODE: appended | cut | channel
- appended: the result object, then a JVM log line, then the newline (one line: object + log).
- cut: half the result object, a JVM log line, the other half (the object spans two lines).
- channel: the result through jobs/_common.emit_result, then a cut line after it.
"""

import json
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "jobs"))
from _common import emit_result

RESULT = {"artifact_uri": "file:///tmp/features/train", "rows": 4}


def jvm_log(spark: SparkSession, message: str) -> None:
    """A log4j line from the driver's JVM (its stderr), after what Python wrote reached it."""
    sys.stdout.flush()
    time.sleep(1.0)  # spark-submit's redirect thread copies the driver's output asynchronously
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    jvm.org.apache.logging.log4j.LogManager.getLogger("spark_result").warn(message)
    time.sleep(0.5)


def main() -> None:
    mode = sys.argv[1]
    spark = SparkSession.builder.appName(f"result-{mode}").getOrCreate()
    line = json.dumps(RESULT)
    try:
        assert spark.range(4).count() == 4
        if mode == "channel":
            emit_result(RESULT)
        head, tail = (line, "") if mode == "appended" else (line[:20], line[20:])
        sys.stdout.write(head)
        jvm_log(spark, "a log line between the driver's writes")
        sys.stdout.write(tail + "\n")
        sys.stdout.flush()
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
