"""Feature drift: the population stability index (PSI) of each feature of a new batch against
the features the current model was trained on, and its versioned configuration.

PSI over k bins: ``sum((a_i - e_i) * ln(a_i / e_i))``, where ``e_i`` is the share of the
reference (training) rows in bin i and ``a_i`` that of the batch. The bins are the reference's
quantiles (of its finite values), so each holds ~1/k of the training rows, plus one last bin
for the values that are null, NaN or infinite: a column whose null rate changes (an upstream
join broke) drifts like one whose values moved. A share of zero is floored at ``EPSILON`` so
an empty bin counts as a large, finite shift. A feature with fewer than ``min_rows`` finite
values in the batch is judged on its null rate only (its value bins merged): a distribution of
3 values is noise. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate,
> 0.25 a real shift.

It runs in the Airflow task, streaming the Parquet files with pyarrow (bounded memory: one
record batch and the bin counts at a time). That is the platform's call for batches up to
``in_task_max_bytes`` (8 GiB on disk by default): PSI is one pass over 8 float columns, a few
hundred MB/s on one core, so up to a few GiB it ends before an ephemeral Spark cluster would be
ready (~30 s here, minutes on Kubernetes) and costs no cluster at all. Above the limit the
check refuses, naming the field: such a batch is the job of a Spark application on an ephemeral
cluster (approxQuantile on the reference, Bucketizer counts on the batch), not built here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ephemeral.errors import EphemeralError
from ephemeral.specs.loader import format_loc
from ephemeral.specs.quantities import Memory, memory_bytes
from ephemeral.yaml_files import load_yaml

EPSILON = 1e-4
LABEL = "label"


class DriftConfigError(EphemeralError):
    """gates/drift_check.yaml (or the file given) is invalid; nothing was computed."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: invalid drift check configuration"]
        lines += [f"  {path or '<root>'}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class DriftInputError(EphemeralError):
    """The reference or the batch cannot be compared (missing, empty, a column missing, too
    large to read in the task)."""


class DriftConfig(BaseModel):
    """The drift check's thresholds; versioned in the repository like the cluster specs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[int, Field(ge=1)]
    psi_threshold: Annotated[float, Field(gt=0, le=10)]
    """A batch drifted when any feature's PSI is above this."""
    bins: Annotated[int, Field(ge=2, le=100)] = 10
    features: list[str] | None = None
    """Columns compared; null: every numeric column of the reference but the label."""
    min_rows: Annotated[int, Field(ge=1)] = 500
    """A smaller batch is not judged (its PSI would be noise): no event, said in the report."""
    reference_sample_rows: Annotated[int, Field(ge=100)] = 200_000
    """Rows of the reference sampled (seeded, uniform) to place the bin edges."""
    in_task_max_bytes: Memory = "8Gi"

    @field_validator("features")
    @classmethod
    def _features(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("must be null (every numeric column) or distinct column names")
        return value

    @property
    def max_bytes(self) -> int:
        return memory_bytes(self.in_task_max_bytes)


def default_config_path() -> Path:
    from ephemeral.gate import gates_dir  # one rule for where versioned gate files live

    return gates_dir() / "drift_check.yaml"


def load_config(path: Path | str | None = None) -> DriftConfig:
    """The configuration, validated; every problem names its field."""
    source = Path(path) if path else default_config_path()
    if not source.is_file():
        raise DriftConfigError(str(source), [("", "no such file (the drift check's thresholds "
                                                  "live in gates/drift_check.yaml)")])
    try:
        raw = load_yaml(source.read_text())
    except yaml.YAMLError as exc:
        raise DriftConfigError(str(source), [("", f"not valid YAML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise DriftConfigError(str(source), [("", "must be a mapping of fields")])
    try:
        return DriftConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [(format_loc(tuple(e["loc"])),
                     "unknown field (allowed: " + ", ".join(DriftConfig.model_fields) + ")"
                     if e["type"] == "extra_forbidden" else e["msg"]) for e in exc.errors()]
        raise DriftConfigError(str(source), problems) from None


def psi(expected: list[int], actual: list[int]) -> float:
    """PSI of two histograms over the same bins."""
    e_total, a_total = sum(expected), sum(actual)
    if not e_total or not a_total:
        raise DriftInputError("PSI of an empty histogram")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = max(e / e_total, EPSILON), max(a / a_total, EPSILON)
        total += (pa - pe) * math.log(pa / pe)
    return total


def _dataset(uri: str, what: str) -> Any:
    import pyarrow.dataset as ds
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
    except (OSError, ValueError) as exc:  # pyarrow: unknown scheme, unreachable store
        raise DriftInputError(f"{what} {uri}: {exc}") from None
    if info.type == fs.FileType.NotFound:
        raise DriftInputError(f"{what} {uri} does not exist")
    return ds.dataset(path, filesystem=filesystem, format="parquet")


def dataset_bytes(dataset: Any) -> int:
    from pyarrow import fs

    infos = dataset.filesystem.get_file_info(list(dataset.files))
    return sum(i.size or 0 for i in infos if i.type == fs.FileType.File)


def _columns(reference: Any, batch: Any, config: DriftConfig) -> list[str]:
    import pyarrow.types as pat

    def is_numeric(field: Any) -> bool:
        return bool(pat.is_floating(field.type) or pat.is_integer(field.type))

    numeric = [f.name for f in reference.schema if is_numeric(f) and f.name != LABEL]
    columns = config.features or numeric
    if not columns:
        raise DriftInputError(
            f"the reference has no numeric column but {LABEL!r} (its columns: "
            f"{reference.schema.names}): PSI compares numeric features; name them in the "
            "drift configuration's features: field")
    missing_ref = [c for c in columns if c not in reference.schema.names]
    missing_batch = [c for c in columns if c not in batch.schema.names]
    if missing_ref or missing_batch:
        raise DriftInputError(
            f"columns to compare are missing: reference {missing_ref}, batch {missing_batch} "
            "(the drift configuration's features: field names the compared columns)")
    not_numeric = [f"{side} {c} ({data.schema.field(c).type})" for side, data in
                   (("reference", reference), ("batch", batch)) for c in columns
                   if not is_numeric(data.schema.field(c))]
    if not_numeric:
        raise DriftInputError(f"columns to compare are not numeric: {', '.join(not_numeric)}; "
                              "PSI compares numbers (the feature ETL writes floats)")
    return columns


def _edges(reference: Any, columns: list[str], rows: int, config: DriftConfig) -> dict[str, Any]:
    """Each column's inner bin edges: the quantiles of a seeded uniform sample of the
    reference (duplicates dropped, so a constant column has one bin)."""
    import numpy as np

    take = min(rows, config.reference_sample_rows)
    indices = np.sort(np.random.default_rng(0).choice(rows, size=take, replace=False))
    sample = reference.take(indices, columns=columns)
    inner = np.linspace(0, 1, config.bins + 1)[1:-1]
    edges = {}
    for c in columns:
        values = sample.column(c).to_numpy(zero_copy_only=False).astype("float64")
        values = values[np.isfinite(values)]  # an infinity would make NaN edges
        edges[c] = np.unique(np.quantile(values, inner)) if values.size else np.array([])
    return edges


def _histograms(dataset: Any, edges: dict[str, Any]) -> tuple[dict[str, list[int]], int]:
    """Bin counts of every column, one record batch at a time; the last bin counts the values
    that are null, NaN or infinite."""
    import numpy as np

    counts = {c: np.zeros(len(e) + 2, dtype="int64") for c, e in edges.items()}
    rows = 0
    for record_batch in dataset.to_batches(columns=list(edges)):
        rows += record_batch.num_rows
        for c, e in edges.items():
            values = record_batch.column(c).to_numpy(zero_copy_only=False).astype("float64")
            finite = np.isfinite(values)  # a null is NaN here
            counts[c][:-1] += np.bincount(np.searchsorted(e, values[finite], side="right"),
                                          minlength=len(e) + 1)
            counts[c][-1] += int(values.size - finite.sum())
    return {c: [int(n) for n in v] for c, v in counts.items()}, rows


def compare(reference_uri: str, batch_uri: str, config: DriftConfig) -> dict[str, Any]:
    """The drift report of a batch against the reference (both Parquet datasets)."""
    reference, batch = _dataset(reference_uri, "reference"), _dataset(batch_uri, "batch")
    size = dataset_bytes(reference) + dataset_bytes(batch)
    if size > config.max_bytes:
        raise DriftInputError(
            f"reference and batch hold {size} bytes, above in_task_max_bytes "
            f"({config.in_task_max_bytes}) of the drift configuration: a check that large "
            "belongs on an ephemeral Spark cluster; raise the field only if the Airflow worker "
            "can read that much in one task")
    columns = _columns(reference, batch, config)
    reference_rows = reference.count_rows()
    if not reference_rows:
        raise DriftInputError(f"reference {reference_uri} has no rows")
    edges = _edges(reference, columns, reference_rows, config)
    expected, _ = _histograms(reference, edges)
    actual, batch_rows = _histograms(batch, edges)
    report: dict[str, Any] = {
        "reference_uri": reference_uri, "batch_uri": batch_uri,
        "reference_rows": reference_rows, "batch_rows": batch_rows, "bytes_read": size,
        "config_version": config.version, "threshold": config.psi_threshold,
        "bins": config.bins, "judged": batch_rows >= config.min_rows, "features": {}}
    if not report["judged"]:
        report |= {"drift": False, "max_psi": None, "max_feature": None, "drifted": [],
                   "reason": f"{batch_rows} rows, below min_rows {config.min_rows}"}
        return report
    for c in columns:
        for side, counts in (("reference", expected[c]), ("batch", actual[c])):
            if not sum(counts[:-1]):  # every value null (or NaN): a broken pipeline
                raise DriftInputError(f"feature {c!r} has no values in the {side}: a column "
                                      "that is all null cannot be checked for drift")
        # Too few values to judge their distribution: the null rate alone.
        values_judged = sum(actual[c][:-1]) >= config.min_rows
        e_bins, a_bins = ((expected[c], actual[c]) if values_judged else
                          ([sum(expected[c][:-1]), expected[c][-1]],
                           [sum(actual[c][:-1]), actual[c][-1]]))
        report["features"][c] = {"psi": round(psi(e_bins, a_bins), 6),
                                 "edges": [round(float(x), 6) for x in edges[c]],
                                 "expected": expected[c], "actual": actual[c],
                                 "last_bin": "null, NaN or infinite",
                                 "values_judged": values_judged}
    by_psi = {c: f["psi"] for c, f in report["features"].items()}
    worst = max(by_psi, key=lambda c: by_psi[c])
    drifted = sorted(c for c, v in by_psi.items() if v > config.psi_threshold)
    report |= {"drift": bool(drifted), "max_psi": by_psi[worst], "max_feature": worst,
               "drifted": drifted}
    return report


def newest_batch(root: str) -> str | None:
    """The newest batch under ``root`` (``<root>/<id>/features``, newest ``<id>`` by name: batch
    ids are timestamps), or None when no batch has landed."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(root)
    if filesystem.get_file_info(path).type != fs.FileType.Directory:
        return None
    folders = sorted((i.path for i in filesystem.get_file_info(fs.FileSelector(path))
                      if i.type == fs.FileType.Directory), reverse=True)
    for folder in folders:
        if filesystem.get_file_info(f"{folder}/features/train").type == fs.FileType.Directory:
            return f"{root.rstrip('/')}/{folder.rsplit('/', 1)[-1]}/features"
    return None


def batch_splits(uri: str | None, root: str | None = None) -> dict[str, str] | None:
    """A batch's train and validation splits (the feature ETL's layout): ``uri`` may name the
    folder holding ``train/`` and ``validation/``, or the ``train/`` split itself. None: the
    newest batch under ``root`` (default ``<artifact root>/batches``); None if there is none."""
    from ephemeral.jobs import artifacts

    if uri is None:
        uri = newest_batch(root or artifacts.run_uri("batches"))
        if uri is None:
            return None
    uri = uri.rstrip("/")
    if artifacts.exists(artifacts.join(uri, "train")):
        base = uri
    elif uri.endswith("/train") and artifacts.exists(uri):
        base = uri.removesuffix("/train")
    else:
        raise DriftInputError(f"batch_uri {uri}: expected the feature ETL's layout, a folder "
                              "with train/ and validation/ (or its train/ split)")
    validation = artifacts.join(base, "validation")
    if not artifacts.exists(validation):
        raise DriftInputError(f"batch_uri {uri}: no validation/ split beside train/; a "
                              "retraining run evaluates on it")
    return {"train": artifacts.join(base, "train"), "validation": validation}


def decide(report: dict[str, Any], reference_uri: str, batch: dict[str, str],
           drift_events: list[Any]) -> dict[str, Any]:
    """Whether this report signals retraining, and why: drift past the threshold, on a batch
    that is not already the model's training data nor already signalled."""
    if not report["judged"]:
        return {"signal": False, "why": f"not judged: {report['reason']}"}
    if batch["train"] == reference_uri:
        return {"signal": False, "why": "the current model was trained on this batch"}
    for event in drift_events:
        if (event.extra or {}).get("features_uri") == batch["train"]:
            return {"signal": False,
                    "why": f"this batch was already signalled at {event.timestamp.isoformat()} "
                           f"by {event.source_dag_id}/{event.source_run_id}"}
    if report["drift"]:
        worst = ", ".join(f"{c} {report['features'][c]['psi']:.3f}" for c in report["drifted"])
        return {"signal": True, "why": f"PSI above {report['threshold']}: {worst}"}
    return {"signal": False, "why": f"max PSI {report['max_psi']:.3f} ({report['max_feature']}) "
                                    f"is within {report['threshold']}"}


def summary_line(report: dict[str, Any]) -> str:
    per_feature = " ".join(f"{c}={f['psi']:.3f}" for c, f in report["features"].items())
    return (f"drift check v{report['config_version']}: {report['batch_rows']} batch rows vs "
            f"{report['reference_rows']} training rows; PSI {per_feature or '-'} "
            f"(threshold {report['threshold']}); {report['decision']['why']}")
