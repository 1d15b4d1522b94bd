"""Every number, quantity and duration of a spec and of its overrides is bounded and finite: an
absurd value is a SpecError naming the field, never a traceback or a reason that is none."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ephemeral.errors import SpecError
from ephemeral.specs import apply_profile
from ephemeral.specs.loader import parse_spec
from ephemeral.specs.quantities import memory_bytes

SPECS_DIR = Path(__file__).resolve().parents[2] / "cluster_specs"
RAY = yaml.safe_load((SPECS_DIR / "ray" / "adhoc-cpu.yaml").read_text())
SPARK = yaml.safe_load((SPECS_DIR / "spark" / "etl.yaml").read_text())


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as err:
        parse_spec(data, "spec.yaml")
    return dict(err.value.problems)


def with_head(**fields: Any) -> dict[str, Any]:
    data = copy.deepcopy(RAY)
    data["head"].update(fields)
    return data


@pytest.mark.parametrize("memory", ["1" + "0" * 400 + "Gi", 10**400, 10**5000, "65Ti",
                                    "1" + "0" * 5000],
                         ids=["400-digit-Gi", "int-400-digits", "int-5000-digits", "65Ti",
                              "5000-digit-bytes"])
def test_a_huge_memory_is_refused_naming_the_field_and_the_limit(memory: object) -> None:
    msg = problems(with_head(memory=memory))["head.memory"]
    assert "64Ti" in msg
    assert len(msg) < 300  # a 400-digit value is cut, not echoed whole


def test_memory_is_parsed_exactly() -> None:
    assert memory_bytes("64Ti") == 64 * 2**40
    assert memory_bytes("0.5Gi") == 2**29
    assert memory_bytes("600000000.9") == 600000000  # rounded down to whole bytes
    assert memory_bytes("1.1G") == 1_100_000_000  # float would give 1100000000.0000002
    assert memory_bytes("3.3Ki") == 3379  # 3379.2


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "NaN",
                                   "inf", "-Infinity", " nan "])
@pytest.mark.parametrize("field", ["cpu", "gpus"])
def test_a_non_finite_number_is_refused_as_such(field: str, value: object) -> None:
    msg = problems(with_head(**{field: value}))[f"head.{field}"]
    assert "not a finite number" in msg
    assert "1024" not in msg


def test_a_non_finite_replica_count_is_refused_as_such() -> None:
    data = copy.deepcopy(RAY)
    data["workerGroups"][0]["replicas"] = float("nan")
    assert "not a finite number" in problems(data)["workerGroups[0].replicas"]


@pytest.mark.parametrize("ttl", ["9" * 5000 + "s", "1" * 40 + "d"], ids=["5000", "40"])
def test_a_duration_of_thousands_of_digits_is_refused_in_plain_words(ttl: str) -> None:
    data = copy.deepcopy(RAY)
    data["lifetime"]["ttl"] = ttl
    msg = problems(data)["lifetime.ttl"]
    assert "longer than a duration" in msg
    assert "int_max_str_digits" not in msg
    assert len(msg) < 300


@pytest.mark.parametrize(("override", "field"), [
    ({"workers": {"memory": "1" + "0" * 400 + "Gi"}}, "workers.memory"),
    ({"workers": {"cpu": float("nan")}}, "workers.cpu"),
    ({"head": {"cpu": "inf"}}, "head.cpu"),
    ({"workers": {"gpus": float("nan")}}, "workers.gpus"),
    ({"workers": {"replicas": float("nan")}}, "workers.replicas"),
    ({"workers": {"replicas": True}}, "workers.replicas"),
    ({"groups": {"cpu": {"replicas": True}}}, "groups.cpu.replicas"),
])
def test_overrides_refuse_what_a_spec_refuses(override: dict[str, Any], field: str) -> None:
    spec = parse_spec(copy.deepcopy(RAY), "spec.yaml")
    with pytest.raises(SpecError) as err:
        apply_profile(spec, None, override)
    assert field in dict(err.value.problems)


@pytest.mark.parametrize("version", ["1", 2.0, True, 0, 1_000_000_000, 10**5000],
                         ids=["string", "float", "bool", "zero", "ten-digits", "5000-digits"])
def test_a_version_is_a_whole_number_a_reference_can_find(version: object) -> None:
    data = copy.deepcopy(RAY)
    data["version"] = version
    msg = problems(data)["version"]
    assert "version" in msg
    assert len(msg) < 200


def test_two_files_claiming_one_version_are_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from typer.testing import CliRunner

    from ephemeral.cli import main
    from ephemeral.specs import resolve

    specs = tmp_path / "specs"
    shutil.copytree(SPECS_DIR, specs)
    current = specs / "ray" / "adhoc-cpu.yaml"
    (specs / "ray" / "adhoc-cpu@1.yaml").write_text(current.read_text())  # not bumped
    monkeypatch.setenv("EPHEMERAL_SPECS_DIR", str(specs))
    run = CliRunner().invoke(main.app, ["specs", "validate"])
    assert run.exit_code == 2, run.output
    assert "1 is also the version of adhoc-cpu@1.yaml" in run.output
    # A running deployment keeps resolving it: the current file wins (test_specs).
    current.write_text(current.read_text().replace("version: 1", "version: 2"))
    assert CliRunner().invoke(main.app, ["specs", "validate"]).exit_code == 0
    assert resolve("ray/adhoc-cpu", specs_dir=specs).ref == "ray/adhoc-cpu@2"
