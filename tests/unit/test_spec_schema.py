"""`ephemeral specs schema`: the JSON Schema editors use validates every shipped spec and
refuses bad ones, as the loader does."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ephemeral.errors import SpecError
from ephemeral.specs import parse_spec
from ephemeral.specs.schema import SCHEMA_DIALECT, spec_json_schema
from tests.cli.test_cli import EPHEMERAL

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "cluster_specs").glob("*/*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    out = subprocess.run([EPHEMERAL, "specs", "schema"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    schema = json.loads(out)
    assert schema == spec_json_schema()
    assert schema["$schema"] == SCHEMA_DIALECT
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_it_validates_every_shipped_spec(validator: jsonschema.Draft202012Validator) -> None:
    assert len(SHIPPED) >= 4
    for path in SHIPPED:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path


def _ray() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "cluster_specs/ray/adhoc-cpu.yaml").read_text()))


def _spark() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "cluster_specs/spark/etl.yaml").read_text()))


def _unknown_field(d: dict[str, Any]) -> None:
    d["workerGroup"] = d.pop("workerGroups")


def _bad_kind(d: dict[str, Any]) -> None:
    d["kind"] = "FlinkCluster"


def _no_name(d: dict[str, Any]) -> None:
    del d["name"]


def _negative_cpu(d: dict[str, Any]) -> None:
    d["head"]["cpu"] = -1


def _replicas_as_text(d: dict[str, Any]) -> None:
    d["workers"]["replicas"] = "two"


@pytest.mark.parametrize(("base", "damage"), [
    (_ray, _unknown_field), (_ray, _bad_kind), (_ray, _no_name), (_ray, _negative_cpu),
    (_spark, _replicas_as_text)])
def test_it_refuses_a_bad_spec_as_the_loader_does(
        validator: jsonschema.Draft202012Validator, base: Any, damage: Any) -> None:
    spec = copy.deepcopy(base())
    damage(spec)
    assert list(validator.iter_errors(spec)), f"the schema accepts {damage.__name__}"
    with pytest.raises(SpecError):
        parse_spec(spec, damage.__name__)


def test_it_writes_a_file_for_editor_settings(tmp_path: Path) -> None:
    target = tmp_path / "cluster-spec.schema.json"
    subprocess.run([EPHEMERAL, "specs", "schema", "--output", str(target)], check=True,
                   capture_output=True, timeout=120)
    assert json.loads(target.read_text()) == spec_json_schema()


def test_every_field_has_hover_text() -> None:
    """docs/spec-schema.md promises each field's description on hover: every property of every
    definition carries one (the models' field docstrings)."""
    schema = spec_json_schema()
    bare = [f"{name}.{prop}" for name, d in schema["$defs"].items()
            for prop, body in d.get("properties", {}).items() if not body.get("description")]
    assert bare == []
    ray = schema["$defs"]["RayWorkerGroup"]["properties"]
    assert "KubeRay's autoscaler" in ray["minReplicas"]["description"]


def test_each_field_hovers_its_own_rule() -> None:
    """A description on a shared type stood in for the fields' own: a Ray group's CPUs read
    'may be fractional' (the loader refuses 1.5) and a Spark worker's GPUs 'Ray's --num-gpus'."""
    defs = spec_json_schema()["$defs"]
    for model in ("RayHead", "RayWorkerGroup"):
        text = defs[model]["properties"]["cpu"]["description"]
        assert "whole number" in text
        assert "fractional" not in text
    assert "0.001" in defs["SparkMaster"]["properties"]["cpu"]["description"]
    gpus = " ".join(defs["SparkWorkers"]["properties"]["gpus"]["description"].split())
    assert "a Spark worker's gpu resource" in gpus
