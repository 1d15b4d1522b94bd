"""Bad cluster specs, profiles, overrides and references: each fails with a SpecError that names
the file, the exact field and what would have been allowed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ephemeral.errors import SpecError, SpecNotFound
from ephemeral.specs import load_file, resolve

SPECS_DIR = Path(__file__).resolve().parents[2] / "cluster_specs"

RAY = """\
# A valid Ray spec; every case below breaks exactly one thing in it.
kind: RayCluster
name: demo
version: 1
rayVersion: "2.60.0"
image: rayproject/ray:2.60.0-py311-cpu
head:
  cpu: 1
  memory: 2Gi
workerGroups:
  - name: cpu
    replicas: 2
    minReplicas: 1
    maxReplicas: 4
    cpu: 1
    memory: 4Gi
    gpus: 0
    gpuResource: nvidia.com/gpu
    tolerations:
      - key: nvidia.com/gpu
        operator: Exists
        effect: NoSchedule
runtimeEnv:
  env:
    - name: NCCL_DEBUG
      value: WARN
lifetime:
  ttl: 2h
  idleTimeout: 15m
profiles:
  small:
    workerGroups:
      cpu:
        replicas: 1
"""

SPARK = """\
kind: SparkCluster
name: etl
version: 1
sparkVersion: "4.3.0"
image: apache/spark:4.3.0-python3
master:
  cpu: 1
  memory: 1Gi
workers:
  replicas: 2
  cores: 2
  memory: 2Gi
conf:
  spark.sql.shuffle.partitions: "8"
"""


def edit(base: str, old: str, new: str) -> str:
    """``base`` with the one occurrence of ``old`` replaced, so a case cannot silently not apply."""
    if base.count(old) != 1:
        raise ValueError(f"{old!r} occurs {base.count(old)} times in the base spec")
    return base.replace(old, new)


@dataclass(frozen=True)
class Case:
    text: str
    field: str
    """The exact field path the error must name."""
    phrase: str
    """Part of what the message for that field must say (what is allowed, or what is wrong)."""
    profile: str | None = None
    overrides: dict[str, Any] | None = None
    source: str | None = None
    """Expected ``err.source`` when it is not the spec file (user overrides)."""
    context: str | None = None
    """Something else ``str(err)`` must contain, such as the profile that made the spec invalid."""


def case(id_: str, *args: Any, **kwargs: Any) -> Any:
    return pytest.param(Case(*args, **kwargs), id=id_)


WG = "  - name: cpu\n    replicas: 2\n"
ENV = "    - name: NCCL_DEBUG\n      value: WARN\n"
TOL = "        operator: Exists\n        effect: NoSchedule\n"

CASES = [
    # --- the file as a whole
    case("malformed-yaml", "kind: RayCluster\nname: demo\n  version: 1\n", "", "line 3"),
    case("unclosed-quote", edit(RAY, 'rayVersion: "2.60.0"', 'rayVersion: "2.60.0'), "",
         "malformed YAML at line"),
    case("list-not-mapping", "- kind: RayCluster\n- name: demo\n", "", "YAML mapping"),
    case("scalar-not-mapping", "RayCluster\n", "", "YAML mapping"),
    case("empty-file", "", "", "YAML mapping"),
    # --- unknown fields
    case("unknown-top-level", RAY + "replica: 3\n", "replica", "unknown field"),
    case("unknown-head-field", edit(RAY, "  cpu: 1\n  memory: 2Gi\n",
                                    "  cpu: 1\n  gpu: 1\n  memory: 2Gi\n"),
         "head.gpu", "check its spelling"),
    case("unknown-group-field", edit(RAY, "    minReplicas: 1\n", "    minReplica: 1\n"),
         "workerGroups[0].minReplica", "unknown field"),
    case("spark-field-in-ray", RAY + "workers:\n  replicas: 2\n  cores: 1\n", "workers",
         "unknown field"),
    # --- required fields and kind
    case("missing-kind", edit(RAY, "kind: RayCluster\n", ""), "kind",
         "RayCluster or SparkCluster"),
    case("bad-kind", edit(RAY, "kind: RayCluster", "kind: RayClusters"), "kind",
         "RayCluster or SparkCluster"),
    case("missing-name", edit(RAY, "name: demo\n", ""), "name", "required"),
    case("missing-version", edit(RAY, "version: 1\n", ""), "version", "required"),
    case("missing-image", edit(RAY, "image: rayproject/ray:2.60.0-py311-cpu\n", ""), "image",
         "required"),
    case("missing-ray-version", edit(RAY, 'rayVersion: "2.60.0"\n', ""), "rayVersion",
         "required"),
    case("missing-worker-groups", RAY.split("workerGroups:")[0], "workerGroups", "required"),
    case("empty-worker-groups", RAY.split("workerGroups:")[0] + "workerGroups: []\n",
         "workerGroups", "at least 1"),
    case("missing-group-name", edit(RAY, WG, "  - replicas: 2\n"), "workerGroups[0].name",
         "required"),
    case("missing-group-replicas", edit(RAY, WG, "  - name: cpu\n"),
         "workerGroups[0].replicas", "required"),
    case("spark-missing-workers", SPARK.split("workers:")[0], "workers", "required"),
    case("spark-missing-cores", edit(SPARK, "  cores: 2\n", ""), "workers.cores", "required"),
    # --- replica counts
    case("replicas-0", edit(RAY, "    replicas: 2\n", "    replicas: 0\n"),
         "workerGroups[0].replicas", "greater than or equal to 1"),
    case("replicas-negative", edit(RAY, "    replicas: 2\n", "    replicas: -3\n"),
         "workerGroups[0].replicas", "greater than or equal to 1"),
    case("replicas-not-a-number", edit(RAY, "    replicas: 2\n", "    replicas: two\n"),
         "workerGroups[0].replicas", "valid integer"),
    case("spark-replicas-0", edit(SPARK, "  replicas: 2\n", "  replicas: 0\n"),
         "workers.replicas", "greater than or equal to 1"),
    case("min-greater-than-max", edit(RAY, "minReplicas: 1", "minReplicas: 5"),
         "workerGroups[0]", "minReplicas (5) is greater than maxReplicas (4)"),
    case("replicas-above-max", edit(RAY, "    replicas: 2\n", "    replicas: 9\n"),
         "workerGroups[0]", "must lie between minReplicas (1) and maxReplicas (4)"),
    case("replicas-below-min", edit(RAY, "minReplicas: 1", "minReplicas: 3"),
         "workerGroups[0]", "must lie between minReplicas (3)"),
    # --- memory quantities
    case("memory-with-space", edit(RAY, "  memory: 2Gi\n", "  memory: 2 GB\n"), "head.memory",
         "such as 512Mi, 4Gi or 2G"),
    case("memory-negative", edit(RAY, "    memory: 4Gi\n", "    memory: -1Gi\n"),
         "workerGroups[0].memory", "Kubernetes quantity"),
    case("memory-zero", edit(RAY, "    memory: 4Gi\n", "    memory: 0Gi\n"),
         "workerGroups[0].memory", "greater than zero"),
    case("memory-word", edit(RAY, "  memory: 2Gi\n", "  memory: abc\n"), "head.memory",
         "Kubernetes quantity"),
    case("memory-float", edit(RAY, "  memory: 2Gi\n", "  memory: 1.5\n"), "head.memory",
         "such as 512Mi"),
    case("memory-lowercase-unit", edit(SPARK, "  memory: 2Gi\n", "  memory: 2gi\n"),
         "workers.memory", "Kubernetes quantity"),
    # --- names
    case("name-uppercase", edit(RAY, "name: demo\n", "name: Demo\n"), "name", "DNS-1123"),
    case("name-underscore", edit(RAY, "name: demo\n", "name: my_demo\n"), "name",
         "lowercase letters, digits and '-'"),
    case("name-too-long", edit(RAY, "name: demo\n", f"name: {'a' * 31}\n"), "name",
         "at most 30 allowed"),
    case("name-trailing-dash", edit(RAY, "name: demo\n", "name: demo-\n"), "name",
         "ending with a letter or digit"),
    case("group-name-too-long", edit(RAY, "- name: cpu", f"- name: {'g' * 16}"),
         "workerGroups[0].name", "at most 15 allowed"),
    case("group-name-uppercase", edit(RAY, "- name: cpu", "- name: CPU"),
         "workerGroups[0].name", "DNS-1123"),
    case("duplicate-group-names", RAY.replace("workerGroups:\n", "workerGroups:\n" + WG, 1),
         "workerGroups", "repeated: cpu"),
    case("profile-name-invalid", edit(RAY, "  small:\n", "  Small:\n"), "profiles", "DNS-1123"),
    # --- versions
    case("ray-version-two-parts", edit(RAY, '"2.60.0"', '"2.60"'), "rayVersion",
         "release version such as 2.60.0"),
    case("ray-version-unquoted-number", edit(RAY, 'rayVersion: "2.60.0"', "rayVersion: 2.60"),
         "rayVersion", "quote it"),
    case("spark-version-word", edit(SPARK, '"4.3.0"', "latest"), "sparkVersion",
         "release version"),
    case("version-0", edit(RAY, "version: 1\n", "version: 0\n"), "version",
         "is not a version from 1 to 999999999"),
    case("version-word", edit(RAY, "version: 1\n", "version: one\n"), "version",
         "write a whole number such as 3"),
    # --- cpu and gpus
    case("head-cpu-0", edit(RAY, "  cpu: 1\n  memory: 2Gi\n", "  cpu: 0\n  memory: 2Gi\n"),
         "head.cpu", "greater than 0"),
    case("group-cpu-negative", edit(RAY, "    cpu: 1\n", "    cpu: -2\n"), "workerGroups[0].cpu",
         "greater than 0"),
    case("spark-cores-0", edit(SPARK, "cores: 2", "cores: 0"), "workers.cores",
         "greater than or equal to 1"),
    case("gpus-negative", edit(RAY, "    gpus: 0\n", "    gpus: -1\n"), "workerGroups[0].gpus",
         "greater than or equal to 0"),
    case("bad-gpu-resource", edit(RAY, "gpuResource: nvidia.com/gpu", "gpuResource: nvidia gpu"),
         "workerGroups[0].gpuResource", "such as nvidia.com/gpu"),
    case("spark-gpus-without-discovery", edit(SPARK, "  cores: 2\n", "  cores: 2\n  gpus: 1\n"),
         "workers", "needs discoveryScript"),
    case("spark-conf-key", edit(SPARK, "spark.sql.shuffle", "sql.shuffle"), "conf",
         "start with 'spark.'"),
    # --- runtime environment
    case("env-value-and-secret", edit(RAY, ENV, ENV + "      secretKeyRef: {name: s, key: k}\n"),
         "runtimeEnv.env[0]", "exactly one of value, secretKeyRef or fromEnv"),
    case("env-no-source", edit(RAY, ENV, "    - name: NCCL_DEBUG\n"), "runtimeEnv.env[0]",
         "exactly one of value, secretKeyRef or fromEnv"),
    case("env-bad-name", edit(RAY, "name: NCCL_DEBUG", "name: 1NCCL-DEBUG"),
         "runtimeEnv.env[0].name", "[A-Za-z_][A-Za-z0-9_]*"),
    case("env-duplicate", edit(RAY, ENV, ENV + ENV), "runtimeEnv.env", "defined twice: NCCL_DEBUG"),
    case("env-secret-name", edit(RAY, "      value: WARN\n",
                                 "      secretKeyRef: {name: My_Secret, key: token}\n"),
         "runtimeEnv.env[0].secretKeyRef.name", "DNS-1123"),
    # --- lifetime
    case("ttl-words", edit(RAY, "ttl: 2h", "ttl: 10 minutes"), "lifetime.ttl",
         "such as 90s, 30m, 6h or 1h30m"),
    case("ttl-zero", edit(RAY, "ttl: 2h", "ttl: 0s"), "lifetime.ttl", "greater than zero"),
    case("ttl-bare-number", edit(RAY, "ttl: 2h", "ttl: 10"), "lifetime.ttl", "such as 90s"),
    case("idle-timeout-bad", edit(RAY, "idleTimeout: 15m", "idleTimeout: 15 min"),
         "lifetime.idleTimeout", "such as 90s"),
    # --- tolerations
    case("toleration-operator", edit(RAY, TOL, "        operator: In\n        effect: NoSchedule\n"),
         "workerGroups[0].tolerations[0].operator", "'Equal' or 'Exists'"),
    case("toleration-effect", edit(RAY, TOL, "        operator: Exists\n        effect: NoExec\n"),
         "workerGroups[0].tolerations[0].effect", "'NoExecute'"),
    # --- profiles
    case("unknown-profile", RAY, "profile", "profiles: ci-cpu, small", profile="gpu-big"),
    case("profile-sets-replicas-0", edit(RAY, "        replicas: 1\n", "        replicas: 0\n"),
         "workerGroups[0].replicas", "greater than or equal to 1", profile="small",
         context="(profile small)"),
    case("profile-unknown-group", edit(RAY, "      cpu:\n        replicas: 1\n",
                                       "      gpu:\n        replicas: 1\n"),
         "workerGroups.gpu", "no worker group of that name; groups: cpu", profile="small",
         context="(profile small)"),
    case("profile-group-patch-not-mapping", edit(RAY, "      cpu:\n        replicas: 1\n",
                                                 "      cpu: 1\n"),
         "workerGroups.cpu", "maps to the fields to change", profile="small"),
    case("profile-groups-as-list", edit(RAY, "      cpu:\n        replicas: 1\n",
                                        "      - name: cpu\n"),
         "workerGroups", "maps a group name", profile="small"),
    case("profile-changes-kind", edit(RAY, "  small:\n", "  small:\n    kind: SparkCluster\n"),
         "kind", "cannot change", profile="small"),
    case("profile-unknown-field", edit(RAY, "  small:\n", "  small:\n    replica: 3\n"),
         "replica", "unknown field", profile="small", context="(profile small)"),
    case("profile-bad-memory", edit(RAY, "        replicas: 1\n", "        memory: 1 Gi\n"),
         "workerGroups[0].memory", "such as 512Mi", profile="small"),
    # --- user overrides
    case("override-replicas-0", RAY, "workers.replicas", "greater than or equal to 1",
         overrides={"workers": {"replicas": 0}}, source="overrides"),
    case("override-unknown-key", RAY, "worker", "unknown field",
         overrides={"worker": {"replicas": 1}}, source="overrides"),
    case("override-bad-memory", RAY, "head.memory", "such as 512Mi",
         overrides={"head": {"memory": "lots"}}, source="overrides"),
    case("override-negative-gpus", RAY, "groups.cpu.gpus", "greater than or equal to 0",
         overrides={"groups": {"cpu": {"gpus": -1}}}, source="overrides"),
    case("override-unknown-group", RAY, "groups.gpu", "no worker group of that name; groups: cpu",
         overrides={"groups": {"gpu": {"replicas": 1}}}, context="with overrides"),
    case("spark-override-fractional-cpu", SPARK, "workers.cpu", "whole numbers",
         overrides={"workers": {"cpu": 1.5}}),
    case("ray-override-fractional-cpu", RAY, "workers.cpu", "Ray counts a node's CPUs in whole",
         overrides={"workers": {"cpu": 0.5}}),
    case("spark-override-group-fractional-cpu", SPARK, "groups.workers.cpu", "whole numbers",
         overrides={"groups": {"workers": {"cpu": 0.5}}}),
    case("spark-override-gpus-without-discovery", SPARK, "workers", "needs discoveryScript",
         overrides={"workers": {"gpus": 1}}, context="with overrides"),
    case("override-replicas-over-ceiling", RAY, "workers.replicas", "less than or equal to 1000",
         overrides={"workers": {"replicas": 1001}}, source="overrides"),
    # The spec's maxReplicas is its author's size limit: an override does not lift it silently.
    case("override-replicas-above-max", RAY, "workers.replicas",
         "5 is above maxReplicas (4) of worker group 'cpu'; ask for at most 4",
         overrides={"workers": {"replicas": 5}}, context="with overrides"),
    case("override-group-replicas-above-max", RAY, "groups.cpu.replicas",
         "above maxReplicas (4)", overrides={"groups": {"cpu": {"replicas": 8}}},
         context="with overrides"),
    case("override-opt-in-not-a-bool", RAY, "raise_max_replicas", "valid boolean",
         overrides={"workers": {"replicas": 5}, "raise_max_replicas": "perhaps"},
         source="overrides"),
]


def messages_for(err: SpecError, field: str) -> list[str]:
    return [msg for path, msg in err.problems if path == field]


@pytest.mark.parametrize("bad", CASES)
def test_bad_spec_is_rejected_with_field_and_explanation(tmp_path: Path, bad: Case) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(bad.text)
    if bad.profile is None and bad.overrides is None:
        with pytest.raises(SpecError) as loaded:
            load_file(path)
        assert loaded.value.problems  # load_file and resolve agree on plain files
    with pytest.raises(SpecError) as info:
        resolve(str(path), bad.profile, bad.overrides, specs_dir=tmp_path)
    err = info.value
    if bad.profile is None and bad.overrides is None:
        assert err.problems == loaded.value.problems

    assert bad.field in err.fields, err.problems
    msgs = messages_for(err, bad.field)
    assert any(bad.phrase in m for m in msgs), f"{bad.phrase!r} not in {msgs}"
    if bad.source is None:
        assert err.source.startswith(str(path))
        assert str(path) in str(err)
    else:
        assert err.source == bad.source
        assert str(err).startswith(f"{bad.source}: invalid cluster spec")
    if bad.context is not None:
        assert bad.context in str(err)
    # Every problem is listed in the message, under its field path.
    for field, msg in err.problems:
        assert f"  {field or '<root>'}: {msg}" in str(err)


def test_table_is_big_enough_and_ids_are_unique() -> None:
    ids = [p.id for p in CASES]
    assert len(ids) >= 35
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("text", [RAY, SPARK], ids=["ray", "spark"])
def test_base_specs_of_the_table_are_valid(tmp_path: Path, text: str) -> None:
    """The cases break valid specs, so each fails for its own reason only."""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    spec = load_file(path)
    assert spec.version == 1
    assert resolve(str(path), specs_dir=tmp_path).spec == spec


def test_base_profile_of_the_table_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(RAY)
    spec = resolve(str(path), "small", specs_dir=tmp_path).spec
    assert spec.engine == "ray"
    assert spec.worker_groups[0].replicas == 1


def test_every_problem_of_a_spec_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(edit(edit(RAY, "name: demo\n", "name: Demo\n"), "ttl: 2h", "ttl: 0s"))
    with pytest.raises(SpecError) as info:
        load_file(path)
    assert sorted(info.value.fields) == ["lifetime.ttl", "name"]


def test_unreadable_file_is_spec_not_found(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(SpecNotFound) as info:
        load_file(path)
    assert info.value.fields == [""]
    assert str(path) in str(info.value)
    assert "cannot read the file" in str(info.value)


REF_CASES = [
    pytest.param("ray/train-gpu@9", "version", "versions that exist: ray/train-gpu@1",
                 id="version-does-not-exist"),
    pytest.param("ray/train-gpu@0", "version", "has no version 0", id="version-0"),
    pytest.param("ray/train-gpu@x", "version", "is not an integer version", id="version-word"),
    pytest.param("ray/train-gpu@", "version", "is not an integer version", id="version-empty"),
    pytest.param("Ray/Train", "", "looks like ray/train-gpu@3", id="uppercase-reference"),
    pytest.param("train-gpu", "", "looks like ray/train-gpu@3", id="no-directory"),
    pytest.param("ray/train-gpu@1@2", "", "looks like ray/train-gpu@3", id="two-pins"),
    pytest.param("ray/nope", "", "no spec 'ray/nope' under", id="unknown-spec"),
    pytest.param("nowhere/train-gpu.yaml", "", "no such spec file", id="missing-path"),
]


@pytest.mark.parametrize(("ref", "field", "phrase"), REF_CASES)
def test_bad_reference_is_spec_not_found(ref: str, field: str, phrase: str) -> None:
    with pytest.raises(SpecNotFound) as info:
        resolve(ref, specs_dir=SPECS_DIR)
    err = info.value
    assert err.source == ref
    assert str(err).startswith(f"{ref}: invalid cluster spec")
    assert err.fields == [field]
    assert phrase in err.problems[0][1]


def test_unknown_spec_lists_the_specs_that_exist() -> None:
    with pytest.raises(SpecNotFound) as info:
        resolve("ray/nope", specs_dir=SPECS_DIR)
    known = info.value.problems[0][1].split("known specs: ")[1].split(", ")
    shipped = sorted(f"{p.parent.name}/{p.stem}" for p in SPECS_DIR.glob("*/*.yaml")
                     if "@" not in p.stem)
    assert known == shipped
