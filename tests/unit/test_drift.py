"""PSI drift on real Parquet: the feature ETL's own generator (its --drift flag) through local
Spark, and small datasets written with pyarrow for the edge cases; the configuration's errors
name their field."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from ephemeral.drift import (
    DriftConfig,
    DriftConfigError,
    DriftInputError,
    batch_splits,
    compare,
    decide,
    load_config,
    newest_batch,
    psi,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(ROOT / "gates" / "drift_check.yaml")


def write_features(folder: Path, rows: int, shift: float = 0.0, start: int = 0) -> str:
    """Parquet in the ETL's output schema (x0..x7 standardised, label); ``shift`` moves 30% of
    the rows before standardising, as etl_features.py --drift does."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.arange(start, start + rows)
    x = np.stack([np.sin(ids * (0.7 + 0.37 * i)) * (1 + i % 3) for i in range(8)], axis=1)
    x[(ids * 2654435761) % 10 < 3] += shift * np.array([1 + i % 3 for i in range(8)])
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    table = pa.table({**{f"x{i}": x[:, i] for i in range(8)},
                      "label": (x.sum(axis=1) > 0).astype("int32")})
    folder.mkdir(parents=True)
    for n, part in enumerate((table.slice(0, rows // 2), table.slice(rows // 2))):
        pq.write_table(part, folder / f"part-{n}.parquet")
    (folder / "_SUCCESS").write_text("")  # Spark's marker: must be ignored
    return folder.as_uri()


def test_psi_of_identical_histograms_is_zero_and_grows_with_the_shift() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == 0
    small, large = psi([100] * 4, [110, 90, 100, 100]), psi([100] * 4, [300, 50, 25, 25])
    assert 0 < small < 0.01 < large
    assert psi([100, 0], [50, 50]) < 10  # an empty bin is floored, not infinite
    with pytest.raises(DriftInputError, match="empty"):
        psi([0, 0], [1, 1])


def test_same_distribution_is_not_drift_and_a_shifted_batch_is(tmp_path: Path) -> None:
    reference = write_features(tmp_path / "ref", 4000)
    same = write_features(tmp_path / "same", 3000, start=100_000)
    shifted = write_features(tmp_path / "shifted", 3000, shift=1.0, start=100_000)
    calm = compare(reference, same, CONFIG)
    assert calm["drift"] is False
    assert calm["judged"]
    assert calm["max_psi"] < 0.05
    assert calm["reference_rows"] == 4000
    assert calm["batch_rows"] == 3000
    drifted = compare(reference, shifted, CONFIG)
    assert drifted["drift"] is True
    assert drifted["drifted"] == [f"x{i}" for i in range(8)]
    assert drifted["max_psi"] > 0.3
    feature = drifted["features"]["x0"]
    assert sum(feature["expected"]) == 4000
    assert sum(feature["actual"]) == 3000
    assert len(feature["edges"]) == CONFIG.bins - 1


def test_a_small_batch_is_not_judged(tmp_path: Path) -> None:
    reference = write_features(tmp_path / "ref", 2000)
    tiny = write_features(tmp_path / "tiny", 100, shift=3.0)
    report = compare(reference, tiny, CONFIG)
    assert report["judged"] is False
    assert report["drift"] is False
    assert "below min_rows 500" in report["reason"]


def test_a_feature_with_no_values_is_named(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    reference = write_features(tmp_path / "ref", 2000)
    folder = tmp_path / "nulls"
    write_features(folder, 1000)
    for part in folder.glob("*.parquet"):  # the pipeline broke: x3 lost every value
        table = pq.read_table(part)
        nulls = pa.nulls(table.num_rows, type=pa.float64())
        pq.write_table(table.set_column(table.schema.get_field_index("x3"), "x3", nulls), part)
    with pytest.raises(DriftInputError, match="feature 'x3' has no values in the batch"):
        compare(reference, folder.as_uri(), CONFIG)


def test_missing_columns_and_datasets_are_named(tmp_path: Path) -> None:
    reference = write_features(tmp_path / "ref", 1000)
    with pytest.raises(DriftInputError, match=r"batch .*nowhere does not exist"):
        compare(reference, (tmp_path / "nowhere").as_uri(), CONFIG)
    config = CONFIG.model_copy(update={"features": ["x0", "age"]})
    with pytest.raises(DriftInputError, match=r"reference \['age'\], batch \['age'\]"):
        compare(reference, reference, config)


def test_a_check_too_large_for_the_task_is_refused_naming_the_field(tmp_path: Path) -> None:
    reference = write_features(tmp_path / "ref", 1000)
    config = DriftConfig.model_validate(CONFIG.model_dump() | {"in_task_max_bytes": "1Ki"})
    with pytest.raises(DriftInputError, match="above in_task_max_bytes"):
        compare(reference, reference, config)


@pytest.mark.parametrize(("text", "field", "message"), [
    ("version: 1\npsi_threshold: 0\n", "psi_threshold", "greater than 0"),
    ("version: 1\npsi_threshold: 0.2\nbins: 1\n", "bins", "greater than or equal to 2"),
    ("version: 1\npsi_threshold: 0.2\nthreshold: 3\n", "threshold", "unknown field"),
    ("psi_threshold: 0.2\n", "version", "Field required"),
    ("version: 1\npsi_threshold: 0.2\nfeatures: []\n", "features", "distinct column names"),
    ("version: 1\npsi_threshold: 0.2\nin_task_max_bytes: lots\n", "in_task_max_bytes",
     "Kubernetes quantity"),
    ("- 1\n", "<root>", "must be a mapping"),
])
def test_a_bad_configuration_names_its_field(tmp_path: Path, text: str, field: str,
                                             message: str) -> None:
    path = tmp_path / "drift_check.yaml"
    path.write_text(text)
    with pytest.raises(DriftConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert f"  {field}: " in str(caught.value)
    assert message in str(caught.value)


def test_the_shipped_configuration_is_valid() -> None:
    assert CONFIG.version >= 1
    assert 0 < CONFIG.psi_threshold < 1
    assert CONFIG.features == [f"x{i}" for i in range(8)]


def test_the_newest_batch_in_the_etl_layout_is_found(tmp_path: Path) -> None:
    root = tmp_path / "batches"
    assert newest_batch(root.as_uri()) is None
    for name in ("20261101T000000", "20261102T000000"):
        write_features(root / name / "features" / "train", 600)
        write_features(root / name / "features" / "validation", 200)
    (root / "20261103T000000").mkdir()  # not landed yet: no train/ split
    newest = batch_splits(None, root=root.as_uri())
    assert newest == {"train": f"{root.as_uri()}/20261102T000000/features/train",
                      "validation": f"{root.as_uri()}/20261102T000000/features/validation"}
    assert batch_splits(newest["train"]) == newest
    with pytest.raises(DriftInputError, match="expected the feature ETL's layout"):
        batch_splits((root / "20261103T000000").as_uri())


class Event:
    def __init__(self, extra: dict[str, Any]) -> None:
        from datetime import datetime

        self.extra, self.timestamp = extra, datetime(2026, 11, 1, tzinfo=UTC)
        self.source_dag_id, self.source_run_id = "drift_check", "scheduled__x"


def test_one_signal_per_drifted_batch() -> None:
    report = {"judged": True, "drift": True, "drifted": ["x1"], "threshold": 0.2,
              "max_psi": 0.4, "max_feature": "x1", "features": {"x1": {"psi": 0.4}}}
    batch = {"train": "file:///b/train", "validation": "file:///b/validation"}
    assert decide(report, "file:///ref/train", batch, [])["signal"] is True
    again = decide(report, "file:///ref/train", batch, [Event({"features_uri": "file:///b/train"})])
    assert again["signal"] is False
    assert "already signalled" in again["why"]
    trained = decide(report, "file:///b/train", batch, [])
    assert trained["signal"] is False
    assert "trained on this batch" in trained["why"]
    calm = decide(report | {"drift": False, "drifted": []}, "file:///ref/train", batch, [])
    assert calm["signal"] is False
    assert "within 0.2" in calm["why"]


@pytest.mark.local
def test_the_etl_generator_drift_flag_makes_a_batch_the_check_flags(tmp_path: Path) -> None:
    """The real job (local Spark, one JVM): its own rows vs a later batch and a --drift one."""
    code = (
        "import sys; sys.path.insert(0, 'jobs'); import etl_features as e\n"
        f"root = {str(tmp_path)!r}\n"
        "e.main(['--run', 'ref', '--rows', '4000', '--partitions', '2', '--artifact-root', root])\n"
        "e.main(['--run', 'drifted', '--rows', '3000', '--partitions', '2', '--drift', '1.0',"
        " '--artifact-root', root])\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                   timeout=900)
    reference = (tmp_path / "ref" / "features" / "train").as_uri()
    validation = (tmp_path / "ref" / "features" / "validation").as_uri()
    calm = compare(reference, validation, CONFIG)  # other rows, same population
    assert calm["drift"] is False, calm["max_psi"]
    drifted = compare(reference, (tmp_path / "drifted" / "features" / "train").as_uri(), CONFIG)
    assert drifted["drift"] is True
    assert drifted["max_psi"] > 0.3


def _with_column(folder: Path, rows: int, column: str, values: Any) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    pq.write_table(pa.table({column: values(rows)}), folder / "part-0.parquet")
    return folder.as_uri()


def test_a_null_rate_change_is_drift_and_few_values_judge_the_null_rate_only(
        tmp_path: Path) -> None:
    """95% of a feature going null (an upstream join broke) was invisible: nulls were dropped
    before binning, and 3 values of 5000 rows were judged as a distribution."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(1)
    config = DriftConfig(version=1, psi_threshold=0.2, bins=10, features=["x0"], min_rows=500)
    reference = _with_column(tmp_path / "ref", 5000, "x0", lambda n: rng.normal(size=n))

    def mostly_null(kept: int) -> Any:
        def values(n: int) -> Any:
            x = rng.normal(size=n).tolist()
            return pa.array([v if i < kept else None for i, v in enumerate(x)], pa.float64())
        return values

    nulls = compare(reference, _with_column(tmp_path / "nulls", 5000, "x0", mostly_null(250)),
                    config)
    assert nulls["drifted"] == ["x0"]
    feature = nulls["features"]["x0"]
    assert feature["actual"][-1] == 4750  # the null bin
    assert sum(feature["actual"]) == 5000
    assert feature["values_judged"] is False  # 250 values < min_rows: the null rate only
    calm = compare(reference, _with_column(tmp_path / "calm", 5000, "x0",
                                           lambda n: rng.normal(size=n)), config)
    assert calm["drift"] is False
    assert calm["features"]["x0"]["values_judged"] is True


def test_infinities_do_not_make_nan_edges(tmp_path: Path) -> None:
    import json

    import numpy as np

    rng = np.random.default_rng(3)

    def with_inf(n: int) -> Any:
        x = rng.normal(size=n)
        x[: n // 2] = np.inf
        x[n // 2: n // 2 + n // 4] = -np.inf
        return x

    config = DriftConfig(version=1, psi_threshold=0.2, features=["x0"])
    report = compare(_with_column(tmp_path / "ref", 5000, "x0", with_inf),
                     _with_column(tmp_path / "batch", 5000, "x0",
                                  lambda n: rng.normal(size=n) + 3), config)
    json.dumps(report, allow_nan=False)  # report.json is strict JSON
    assert report["drifted"] == ["x0"]


def test_non_numeric_datasets_are_a_drift_input_error(tmp_path: Path) -> None:
    no_numbers = _with_column(tmp_path / "s", 1000, "s", lambda n: ["a"] * n)
    with pytest.raises(DriftInputError, match="no numeric column"):
        compare(no_numbers, no_numbers, DriftConfig(version=1, psi_threshold=0.2, min_rows=10))
    reference = write_features(tmp_path / "ref", 2000)
    strings = _with_column(tmp_path / "str", 1000, "x0", lambda n: ["1.5"] * n)
    with pytest.raises(DriftInputError, match=r"not numeric: batch x0 \(string\)"):
        compare(reference, strings, DriftConfig(version=1, psi_threshold=0.2, features=["x0"]))
