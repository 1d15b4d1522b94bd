"""The gate's rules: the shipped file loads, every threshold is checked against its number (a
quality fail, a latency fail, a number not measured), overrides are validated, and a bad file is
refused naming the file and the field."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ephemeral.gate import GateError, Thresholds, evaluate_gate, load_gate, with_overrides

# What a run on a loaded 2-core machine measures (tests/integration/test_gate.py prints them).
GOOD = {"accuracy": 0.93, "f1": 0.92, "p50_ms": 12.0, "p95_ms": 30.0, "p99_ms": 60.0,
        "throughput_rps": 150.0, "error_rate": 0.0}


def test_the_shipped_gate_passes_a_good_candidate_and_checks_every_threshold() -> None:
    gate = load_gate("train_distributed")
    decision = evaluate_gate(gate, GOOD)
    assert decision.passed, decision.summary()
    assert {c.threshold_name for c in decision.checks} == set(Thresholds.model_fields)
    assert gate.load.requests >= 100
    assert gate.load.concurrency >= 1


def test_a_quality_fail_names_the_metric_its_number_and_threshold(
        caplog: pytest.LogCaptureFixture) -> None:
    gate = load_gate("train_distributed")
    with caplog.at_level(logging.INFO, logger="ephemeral.gate"):
        decision = evaluate_gate(gate, {**GOOD, "f1": 0.41})
    assert not decision.passed
    [failed] = decision.failed
    assert (failed.metric, failed.measured, failed.threshold) == ("f1", 0.41, 0.8)
    assert "f1 0.41 >= 0.8 (min_f1): FAIL" in decision.summary()
    # Every number against its threshold in the log, the passing ones too.
    assert "accuracy 0.93 >= 0.8 (min_accuracy): pass" in caplog.text
    assert "f1 0.41 >= 0.8 (min_f1): FAIL" in caplog.text


def test_a_latency_fail_on_an_impossibly_low_threshold() -> None:
    gate = with_overrides(load_gate("train_distributed"),
                          {"max_p50_ms": 0.001, "max_p95_ms": 0.001, "max_p99_ms": 0.001,
                           "min_accuracy": None})
    decision = evaluate_gate(gate, GOOD)
    assert not decision.passed
    assert {c.threshold_name for c in decision.failed} == {"max_p50_ms", "max_p95_ms",
                                                           "max_p99_ms"}
    assert decision.overrides == {"max_p50_ms": 0.001, "max_p95_ms": 0.001, "max_p99_ms": 0.001}
    assert gate.thresholds.min_accuracy == 0.8  # None keeps the file's


def test_throughput_and_errors_fail_too() -> None:
    gate = load_gate("train_distributed")
    assert [c.threshold_name for c in evaluate_gate(gate, {**GOOD, "throughput_rps": 1})
            .failed] == ["min_throughput_rps"]
    assert [c.threshold_name for c in evaluate_gate(gate, {**GOOD, "error_rate": 0.01})
            .failed] == ["max_error_rate"]


def test_a_number_not_measured_fails_its_check() -> None:
    missing = dict(GOOD)
    del missing["p99_ms"]
    decision = evaluate_gate(load_gate("train_distributed"), missing)
    assert not decision.passed
    assert "p99_ms not measured <= " in decision.summary()


def test_the_min_accuracy_param_overrides_the_file() -> None:
    gate = load_gate("train_distributed")
    assert evaluate_gate(gate, {**GOOD, "accuracy": 0.85}).passed
    strict = with_overrides(gate, {"min_accuracy": 0.9})
    assert not evaluate_gate(strict, {**GOOD, "accuracy": 0.85}).passed


@pytest.mark.parametrize(("overrides", "message"), [
    ({"min_acuracy": 0.9}, r"unknown threshold\(s\) \['min_acuracy'\]"),
    ({"min_f1": 1.5}, "min_f1: Input should be less than or equal to 1"),
    ({"max_p50_ms": 900}, "max_p50_ms .* <= max_p95_ms .* must hold"),
])
def test_bad_overrides_are_refused_by_name(overrides: dict[str, float], message: str) -> None:
    with pytest.raises(GateError, match=message):
        with_overrides(load_gate("train_distributed"), overrides)


@pytest.mark.parametrize(("text", "message"), [
    ("version: 1\nthresholds: {min_accuracy: 0.8}\n", "thresholds.min_f1: Field required"),
    ("version: 1\nthresholds: {min_accuracy: 0.8, min_f1: 0.8, max_p50_ms: 1, max_p95_ms: 2,"
     " max_p99_ms: 3, min_throughput_rps: 1, max_p90_ms: 2}\n",
     "thresholds.max_p90_ms: Extra inputs are not permitted"),
    ("thresholds: {}\n", "version: Field required"),
    ("- a list\n", "expected a mapping"),
    ("version: [\n", "not YAML"),
    ("version: 1\nthresholds: {min_accuracy: 0.8, min_f1: 0.8, max_p50_ms: 1, max_p95_ms: 2,"
     " max_p99_ms: 3, min_throughput_rps: 1}\nload: {requests: 0}\n",
     "load.requests: Input should be greater than or equal to 10"),
    ("version: 1\nthresholds: {min_accuracy: 0.8, min_f1: 0.8, max_p50_ms: 1, max_p95_ms: 2,"
     " max_p99_ms: 3, min_throughput_rps: 1}\n", "thresholds.max_error_rate: Field required"),
    ("version: 1\nthresholds: {}\noverrides: {min_f1: 0.1}\n", "overrides: not a gate file"),
])
def test_a_bad_gate_file_is_refused_naming_the_file_and_field(tmp_path: Path, text: str,
                                                              message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(GateError, match=message) as caught:
        load_gate(path)
    assert str(path) in str(caught.value)


def test_a_missing_gate_file_names_the_setting(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("EPHEMERAL_GATES_DIR", str(tmp_path))
    with pytest.raises(GateError, match="EPHEMERAL_GATES_DIR"):
        load_gate("train_distributed")


def test_the_binary_f1_of_evaluate_py() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
    from evaluate import binary_f1

    # tp=2, fp=1, fn=1: precision 2/3, recall 2/3, F1 2/3.
    assert binary_f1([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert binary_f1([0, 0], [0, 0]) == (0.0, 0.0, 0.0)  # nothing positive: 0, not a crash


@pytest.mark.parametrize(("overrides", "message"), [
    ({"min_accuracy": 0.5}, r"loosen min_accuracy=0.5 \(the file's 0.8\)"),
    ({"max_p99_ms": 5000}, "loosen max_p99_ms=5000"),
    ({"max_error_rate": 1.0}, "loosen max_error_rate=1.0"),
    ({"min_accuracy": 0, "min_f1": 0, "min_throughput_rps": 0}, "may only tighten"),
    ({"max_p99_ms": float("inf")}, "not a finite number"),
    ({"min_accuracy": float("nan")}, "not a finite number"),
    ({"min_accuracy": True}, "a bool, not a number"),
    ({"max_p99_ms": "1e308"}, "a str, not a number"),
])
def test_an_override_may_only_tighten_and_must_be_a_finite_number(
        overrides: dict[str, object], message: str) -> None:
    with pytest.raises(GateError, match=message):
        with_overrides(load_gate("train_distributed"), overrides)


def test_a_gate_file_may_allow_loosening(tmp_path: Path) -> None:
    text = (Path(load_gate("train_distributed").source).read_text()
            + "allow_loosening: true\n")
    (tmp_path / "loose.yaml").write_text(text)
    gate = with_overrides(load_gate(tmp_path / "loose.yaml"), {"min_accuracy": 0.5})
    assert gate.thresholds.min_accuracy == 0.5


def test_a_measured_bool_string_or_nan_fails_its_check() -> None:
    gate = load_gate("train_distributed")
    for value in (True, "0.95", float("nan"), float("inf")):
        decision = evaluate_gate(gate, {**GOOD, "accuracy": value})
        assert [c.threshold_name for c in decision.failed] == ["min_accuracy"], value
        assert decision.failed[0].measured is None  # no NaN in the decision's JSON
        assert "not a number" in decision.summary() or "not a finite" in decision.summary()


def test_the_decision_records_thresholds_overrides_and_every_check() -> None:
    gate = with_overrides(load_gate("train_distributed"), {"min_accuracy": 0.9})
    record = evaluate_gate(gate, GOOD).record()
    assert all(isinstance(v, str) for v in record.values())
    assert record["gate_overrides"] == '{"min_accuracy": 0.9}'
    assert '"min_accuracy": 0.9' in record["gate_thresholds"]
    assert record["gate_passed"] == "true"
    assert {k.removeprefix("gate_check.") for k in record if k.startswith("gate_check.")} \
        == set(Thresholds.model_fields)
    assert record["gate_check.min_accuracy"].startswith("pass: accuracy 0.93 >= 0.9")


def test_every_threshold_a_run_may_override_is_a_declared_param() -> None:
    """An undeclared one (max_error_rate was) reached the gate from a run's conf unchecked by
    the form's schema."""
    from tests.conftest import dag_file_module

    dag = dag_file_module("train_distributed", "gate_train_distributed").dag
    assert set(Thresholds.model_fields) <= set(dag.params)


def test_the_jobs_report_unrounded_numbers_the_gate_can_fail_on() -> None:
    """One error in 20001 requests, and 15999 right answers of 20000, rounded to 4 places,
    were 0.0 and 0.8: both passed a gate they fail."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
    import evaluate
    import serve_latency

    gate = load_gate("train_distributed")
    rate = serve_latency.error_rate(1, 20001)
    assert [c.threshold_name for c in evaluate_gate(gate, {**GOOD, "error_rate": rate})
            .failed] == ["max_error_rate"]
    actual = [1] * 10000 + [0] * 10000
    predicted = [1] * 10000 + [0] * 5999 + [1] * 4001  # 15999 right
    scores = evaluate.quality(predicted, actual)
    assert scores["accuracy"] == 15999 / 20000
    assert [c.threshold_name for c in evaluate_gate(gate, {**GOOD, **scores}).failed] \
        == ["min_accuracy"]
