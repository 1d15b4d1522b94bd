"""Build the training dataset (Parquet) from raw events, behind a data-quality gate.

    spark-submit etl_features.py --run RUN [--input URI] [--rows N] [--drift SHIFT]

Raw input is a Parquet or CSV dataset with the columns of RAW_SCHEMA; without --input it is
generated deterministically (the same rows whatever the partitioning); --drift SHIFT moves a
segment of the generated rows (30%, chosen by a hash of the id) by SHIFT standard units of each
feature: a new population, which the per-batch standardisation does not hide (the drift check
and its tests use it). The quality gate fails the job, before anything is written, when the
input is empty, has nulls in a required column, or its schema drifted (a column missing or of
another type). The output has the columns x0..x7 (standardised features) and label, and lands
in <artifact root>/<run>/features/, split by a hash of the row id into train/ (80%) and
validation/ (20%).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    default_root,
    emit_result,
    fail,
    join,
    number,
    run_dir,
    to_uri,
    whole,
    write_json,
)

# The engine this job runs on, read (not imported) by ephemeral.adhoc: the Ray form refuses
# a Spark application before creating a cluster it would fail on.
__engine__ = "spark"

FEATURES = [f"f{i}" for i in range(8)]
RAW_SCHEMA = {"id": "bigint", **{f: "double" for f in FEATURES}, "label": "int"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--artifact-root", default=None)
    p.add_argument("--input", default=None, help="raw dataset URI (.csv file/dir or Parquet)")
    p.add_argument("--output", default=None, help="default: <root>/<run>/features")
    # Refused here rather than by Spark once the application runs: no rows (the quality gate
    # would fail on an empty input), no partitions, a nan shift (nan features, no error).
    p.add_argument("--rows", type=whole(1), default=20000)
    p.add_argument("--partitions", type=whole(1), default=8)
    p.add_argument("--drift", type=number(-math.inf), default=0.0,
                   help="generated data only: shift 30%% of the rows by this many units")
    return p.parse_args(argv)


def generate(spark: Any, rows: int, partitions: int, drift: float = 0.0) -> Any:
    from pyspark.sql import functions as F

    df = spark.range(0, rows, numPartitions=partitions)
    shifted = F.abs(F.xxhash64("id", F.lit("drift"))) % 10 < 3
    # Deterministic pseudo-random features from the row id (no rand(): it depends on partitioning).
    for i, f in enumerate(FEATURES):
        value = F.sin(F.col("id") * (0.7 + 0.37 * i)) * (1 + i % 3)
        if drift:
            value = value + F.when(shifted, drift * (1 + i % 3)).otherwise(0.0)
        df = df.withColumn(f, value)
    score = sum(F.col(f) * (i - 3.5) / 4 for i, f in enumerate(FEATURES))
    return df.withColumn("label", (score > 0).cast("int"))


def read_raw(spark: Any, uri: str) -> Any:
    if uri.endswith(".csv") or "/csv" in uri:
        return spark.read.option("header", True).option("inferSchema", True).csv(uri)
    return spark.read.parquet(uri)


def quality_problems(df: Any) -> list[str]:
    """Why the raw data must not be trained on; empty when it is fine."""
    from pyspark.sql import functions as F

    actual = dict(df.dtypes)
    problems = []
    missing = [c for c in RAW_SCHEMA if c not in actual]
    if missing:
        problems.append(f"schema drift: missing columns {missing}")
    wrong = {c: actual[c] for c in RAW_SCHEMA if c in actual and actual[c] != RAW_SCHEMA[c]
             and not (RAW_SCHEMA[c] == "bigint" and actual[c] == "int")}
    if wrong:
        expected = {c: RAW_SCHEMA[c] for c in wrong}
        problems.append(f"schema drift: column types {wrong}, expected {expected}")
    if problems:
        return problems
    counts = df.select(F.count(F.lit(1)).alias("rows"),
                       *[F.sum(F.col(c).isNull().cast("int")).alias(c) for c in RAW_SCHEMA]
                       ).first().asDict()
    if counts["rows"] == 0:
        return ["the input has no rows"]
    nulls = {c: counts[c] for c in RAW_SCHEMA if counts[c]}
    if nulls:
        problems.append(f"null values in required columns: {nulls}")
    return problems


def main(argv: list[str] | None = None) -> None:
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    args = parse_args(argv)
    if args.input and args.drift:
        fail("--drift shifts generated data only; it cannot be given with --input")
    root = to_uri(args.artifact_root) if args.artifact_root else default_root()
    run = run_dir(root, args.run)  # refuses a run that would leave the root
    output = to_uri(args.output) if args.output else join(run, "features")
    spark = SparkSession.builder.appName(f"etl-features-{args.run}").getOrCreate()
    try:
        raw = read_raw(spark, to_uri(args.input)) if args.input else generate(
            spark, args.rows, args.partitions, args.drift)
        problems = quality_problems(raw)
        if problems:
            fail("data quality check failed: " + "; ".join(problems))
        stats = raw.select(*[F.mean(f).alias(f"m_{f}") for f in FEATURES],
                           *[F.stddev(f).alias(f"s_{f}") for f in FEATURES]).first().asDict()
        features = raw.select(
            *[((F.col(f) - stats[f"m_{f}"]) / (stats[f"s_{f}"] or 1.0)).alias(f"x{i}")
              for i, f in enumerate(FEATURES)],
            F.col("label").cast("int").alias("label"),
            (F.abs(F.xxhash64("id")) % 10 < 8).alias("_train"))
        features.cache()
        for split, keep in (("train", True), ("validation", False)):
            (features.where(F.col("_train") == keep).drop("_train").coalesce(2)
             .write.mode("overwrite").parquet(join(output, split)))
        written = spark.read.parquet(join(output, "train"))
        rows = written.count()
        validation_rows = spark.read.parquet(join(output, "validation")).count()
        positives = written.where("label = 1").count()
        report = {"rows": rows, "validation_rows": validation_rows,
                  "positive_share": round(positives / rows, 4),
                  "columns": [c for c, _ in written.dtypes], "input": args.input or "generated",
                  "drift": args.drift}
        metrics_uri = join(output, "_quality.json")
        write_json(metrics_uri, report)
        emit_result({"artifact_uri": join(output, "train"),
                     "validation_uri": join(output, "validation"), "metrics_uri": metrics_uri,
                     "rows": rows, "validation_rows": validation_rows,
                     "positive_share": report["positive_share"]})
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
