"""The model gate: thresholds from a versioned file, one decision with every number in it.

A gate file lives in the repository (``gates/<dag_id>.yaml``), reviewed like the cluster specs
and the trial sweeps; ``$EPHEMERAL_GATES_DIR`` points elsewhere when the DAGs are deployed apart
from the checkout::

    version: 3                 # bump on every change: registrations record it
    thresholds:
      min_accuracy: 0.8        # quality, on the held-back validation set
      min_f1: 0.8
      max_p50_ms: 150          # latency, served by Ray Serve on the run's own cluster
      max_p95_ms: 400
      max_p99_ms: 800
      min_throughput_rps: 10
      max_error_rate: 0.0      # failed or wrong answers under load
    load:                      # the bounded load the latency numbers are measured under
      requests: 400
      concurrency: 4
      warmup: 20

Each ``min_<metric>``/``max_<metric>`` threshold checks the measured ``<metric>``. A file that
does not parse, misses a threshold or names an unknown one fails the DAG's import naming the
file and the field. A run may override a threshold (DAG params): an override is a finite number
(not a bool nor a string), validated like the file's, and may only tighten the file's threshold
(raise a ``min_``, lower a ``max_``) unless the file says ``allow_loosening: true``. The decision
records the effective thresholds, the overrides and every check (``GateDecision.record``: what
the registration's tags, registration.json and the model event carry).

A measured value must be a finite number: a bool, a string or NaN fails its check.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ephemeral.errors import EphemeralError, field_problems
from ephemeral.yaml_files import load_yaml

log = logging.getLogger(__name__)

GATES_VAR = "EPHEMERAL_GATES_DIR"


class GateError(EphemeralError):
    """A gate file or override is unusable: names the file (or the override) and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_accuracy: float = Field(ge=0, le=1)
    min_f1: float = Field(ge=0, le=1)
    max_p50_ms: float = Field(gt=0)
    max_p95_ms: float = Field(gt=0)
    max_p99_ms: float = Field(gt=0)
    min_throughput_rps: float = Field(ge=0)
    max_error_rate: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.max_p50_ms <= self.max_p95_ms <= self.max_p99_ms:
            raise ValueError(f"max_p50_ms ({self.max_p50_ms}) <= max_p95_ms "
                             f"({self.max_p95_ms}) <= max_p99_ms ({self.max_p99_ms}) must hold: "
                             "a higher percentile cannot be faster")
        return self


class Load(_Strict):
    """The bounded load of the latency job (jobs/serve_latency.py flags)."""

    requests: int = Field(default=400, ge=10, le=1_000_000)
    concurrency: int = Field(default=4, ge=1, le=256)
    warmup: int = Field(default=20, ge=0, le=100_000)


class Gate(_Strict):
    version: int = Field(ge=1)
    description: str = ""
    thresholds: Thresholds
    load: Load = Load()
    # Whether a run's override may loosen a threshold: off unless the file says so, so a form
    # cannot switch the gate off (min_accuracy 0, max_p99_ms 1e308).
    allow_loosening: bool = False
    source: str = Field(default="", exclude=True)
    overrides: dict[str, float] = Field(default_factory=dict)


class Check(_Strict):
    threshold_name: str
    metric: str
    kind: Literal["min", "max"]
    threshold: float
    measured: float | None
    passed: bool
    problem: str = ""  # why a measured value was not taken (a bool, a string, NaN)

    def line(self) -> str:
        op = ">=" if self.kind == "min" else "<="
        shown = self.problem or ("not measured" if self.measured is None
                                 else f"{self.measured:g}")
        verdict = "pass" if self.passed else "FAIL"
        return f"{self.metric} {shown} {op} {self.threshold:g} ({self.threshold_name}): {verdict}"


class GateDecision(_Strict):
    passed: bool
    checks: list[Check]
    gate_version: int
    overrides: dict[str, float] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict)  # the effective ones

    def record(self) -> dict[str, str]:
        """The decision as flat strings: the registered version's tags, and what
        registration.json and the model event carry (an override is never silent)."""
        checks = {f"gate_check.{c.threshold_name}": f"{'pass' if c.passed else 'FAIL'}: "
                  f"{c.line()}" for c in self.checks}
        return {"gate_version": str(self.gate_version), "gate_passed": str(self.passed).lower(),
                "gate_overrides": json.dumps(self.overrides, sort_keys=True),
                "gate_thresholds": json.dumps(self.thresholds, sort_keys=True), **checks}

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        if self.passed:
            return f"gate v{self.gate_version} passed: " + "; ".join(c.line() for c in self.checks)
        return f"gate v{self.gate_version} failed: " + "; ".join(c.line() for c in self.failed)


def gates_dir() -> Path:
    from ephemeral.settings import default_dir, folder

    return folder("gates_dir") or default_dir("gates")


def load_gate(name_or_path: str | Path) -> Gate:
    """The gate ``gates/<name>.yaml`` (or the file at a path), validated."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = gates_dir() / f"{name_or_path}.yaml"
    try:
        data = load_yaml(path.read_text())
    except OSError as err:
        raise GateError(f"{path}: cannot read the gate file ({err.strerror}); set {GATES_VAR} "
                        "to the folder that holds the gate files") from err
    except yaml.YAMLError as err:
        raise GateError(f"{path}: not YAML: {err}") from err
    if not isinstance(data, dict):
        raise GateError(f"{path}: expected a mapping with version, thresholds and load")
    if "overrides" in data:  # a run's own (DAG params), never the file's: it would be ignored
        raise GateError(f"{path}: overrides: not a gate file field; change the thresholds, or "
                        "override one for a run through the DAG's params")
    try:
        return Gate.model_validate({**data, "source": str(path)})
    except ValidationError as err:
        raise GateError(f"{path}: invalid gate file: {field_problems(err)}") from err


def with_overrides(gate: Gate, overrides: Mapping[str, Any]) -> Gate:
    """``gate`` with the thresholds in ``overrides`` replaced (None values are ignored: a DAG
    param left empty keeps the file's threshold). Each must be a finite number that tightens
    the file's threshold, unless the file allows loosening."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return gate
    unknown = sorted(set(given) - set(Thresholds.model_fields))
    if unknown:
        raise GateError(f"gate overrides: unknown threshold(s) {unknown}; the thresholds are "
                        f"{sorted(Thresholds.model_fields)}")
    for name, value in given.items():
        if (problem := number_problem(value)) is not None:
            raise GateError(f"gate override {name}={value!r}: {problem}; give a number, or "
                            "leave it empty to keep the file's threshold")
    try:
        thresholds = Thresholds.model_validate({**gate.thresholds.model_dump(), **given})
    except ValidationError as err:
        raise GateError(f"gate overrides {given}: {field_problems(err)}") from err
    if not gate.allow_loosening:
        current = gate.thresholds.model_dump()
        looser = [f"{k}={v!r} (the file's {current[k]!r})" for k, v in given.items()
                  if (v < current[k] if k.startswith("min_") else v > current[k])]
        if looser:
            raise GateError(f"gate overrides loosen {', '.join(looser)}: a run may only tighten "
                            f"a threshold (raise a min_, lower a max_); change "
                            f"{gate.source or 'the gate file'} (and its version), or set "
                            "allow_loosening: true there")
    return gate.model_copy(update={"thresholds": thresholds,
                                   "overrides": {**gate.overrides,
                                                 **{k: float(v) for k, v in given.items()}}})


def number_problem(value: Any) -> str | None:
    """Why ``value`` is no threshold or measured number, or None: an int or a float, finite
    (a bool is an int to Python, and ``True`` would gate as 1.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"a {type(value).__name__}, not a number"
    if not math.isfinite(value):
        return "not a finite number"
    return None


def evaluate_gate(gate: Gate, measured: Mapping[str, Any]) -> GateDecision:
    """Check every threshold against its measured number (``min_x`` wants ``measured['x']`` at
    least the threshold, ``max_x`` at most). A number that was not measured fails its check: a
    gate cannot pass on what it did not see. Logs each number against its threshold."""
    checks = []
    for name, threshold in gate.thresholds.model_dump().items():
        kind, _, metric = name.partition("_")
        value = measured.get(metric)
        problem = None if value is None else number_problem(value)
        number = None if value is None or problem else float(value)
        passed = number is not None and (number >= threshold if kind == "min"
                                         else number <= threshold)
        check = Check(threshold_name=name, metric=metric, kind=kind, threshold=threshold,
                      measured=number, passed=passed,
                      problem=f"{value!r} ({problem})" if problem else "")
        (log.info if passed else log.warning)("gate check %s", check.line())
        checks.append(check)
    decision = GateDecision(passed=all(c.passed for c in checks), checks=checks,
                            gate_version=gate.version, overrides=gate.overrides,
                            thresholds=gate.thresholds.model_dump())
    (log.info if decision.passed else log.warning)("%s", decision.summary())
    return decision
