"""Valid specs: the shipped ones, profiles, overrides, hashing, references, quantities, identity."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from ephemeral.errors import SpecError, SpecNotFound
from ephemeral.specs import (
    CI_CPU,
    ClusterIdentity,
    Overrides,
    RaySpec,
    SparkSpec,
    label_value,
    load_file,
    resolve,
    spec_hash,
)
from ephemeral.specs.identity import NAME_MAX, expires_at
from ephemeral.specs.quantities import duration_seconds, format_memory, memory_bytes

SPECS_DIR = Path(__file__).resolve().parents[2] / "cluster_specs"
SHIPPED = sorted(
    f"{p.parent.name}/{p.stem}" for p in SPECS_DIR.glob("*/*.yaml") if "@" not in p.stem
)
GI = 2**30
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.fixture(autouse=True)
def _default_specs_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """References without ``specs_dir`` resolve against the checkout's cluster_specs."""
    monkeypatch.delenv("EPHEMERAL_SPECS_DIR", raising=False)


def nodes(spec: RaySpec | SparkSpec) -> list[tuple[str, float, str]]:
    """(node kind, cpu, memory) of every kind of node of a spec."""
    if isinstance(spec, RaySpec):
        return [("head", spec.head.cpu, spec.head.memory)] + [
            (f"group {g.name}", g.cpu, g.memory) for g in spec.worker_groups
        ]
    out = [("master", spec.master.cpu, spec.master.memory),
           ("workers", spec.workers.cores, spec.workers.memory)]
    if spec.connect is not None:
        out.append(("connect", spec.connect.cpu, spec.connect.memory))
    return out


def gpus(spec: RaySpec | SparkSpec) -> list[int]:
    if isinstance(spec, RaySpec):
        return [spec.head.gpus] + [g.gpus for g in spec.worker_groups]
    return [spec.workers.gpus]


# --- shipped specs ----------------------------------------------------------------------------


def test_the_expected_specs_are_shipped() -> None:
    assert {"ray/adhoc-cpu", "ray/train-gpu", "spark/etl", "spark/etl-gpu"} <= set(SHIPPED)


@pytest.mark.parametrize("profile", [None, CI_CPU])
@pytest.mark.parametrize("ref", SHIPPED)
def test_shipped_spec_resolves(ref: str, profile: str | None) -> None:
    resolved = resolve(ref, profile)
    kind_dir, name = ref.split("/")
    spec = resolved.spec
    assert spec.name == name
    assert spec.engine == kind_dir
    assert isinstance(spec, RaySpec if kind_dir == "ray" else SparkSpec)
    assert resolved.ref == f"{ref}@{spec.version}"
    assert resolved.profile == profile
    assert Path(resolved.source) == SPECS_DIR / f"{ref}.yaml"
    assert re.fullmatch(r"[0-9a-f]{16}", resolved.hash)
    assert resolved.hash == spec_hash(spec)


@pytest.mark.parametrize("ref", SHIPPED)
def test_shipped_spec_loads_as_file(ref: str) -> None:
    spec = load_file(SPECS_DIR / f"{ref}.yaml")
    assert resolve(ref).spec == spec
    assert spec.lifetime.ttl_seconds > 0


@pytest.mark.parametrize("ref", SHIPPED)
def test_ci_cpu_is_cpu_only_and_small(ref: str) -> None:
    spec = resolve(ref, CI_CPU).spec
    assert gpus(spec)
    assert all(n == 0 for n in gpus(spec))
    for node, cpu, memory in nodes(spec):
        assert cpu <= 1, node
        assert memory_bytes(memory) <= 2 * GI, node
    if isinstance(spec, SparkSpec):
        assert spec.workers.discovery_script is None


@pytest.mark.parametrize("ref", SHIPPED)
def test_ci_cpu_changes_the_hash(ref: str) -> None:
    assert resolve(ref).hash != resolve(ref, CI_CPU).hash


def test_ci_cpu_caps_a_big_spark_master_and_connect_server(tmp_path: Path) -> None:
    text = (SPECS_DIR / "spark/etl.yaml").read_text()
    text = text.replace("master:\n  cpu: 1\n  memory: 1Gi", "master:\n  cpu: 4\n  memory: 16Gi")
    text = text.replace("connect:\n  enabled: true\n", "connect:\n  enabled: true\n  cpu: 3\n")
    path = tmp_path / "etl.yaml"
    path.write_text(text)
    assert load_file(path).master.cpu == 4  # the edit applied
    spec = resolve(str(path), CI_CPU).spec
    assert isinstance(spec, SparkSpec)
    assert (spec.master.cpu, spec.master.memory) == (1, "2Gi")
    assert spec.connect is not None
    assert spec.connect.cpu == 1


def test_ci_cpu_keeps_train_gpu_multi_node() -> None:
    base = resolve("ray/train-gpu").spec
    spec = resolve("ray/train-gpu", CI_CPU).spec
    assert isinstance(base, RaySpec)
    assert isinstance(spec, RaySpec)
    assert base.worker_groups[0].gpus == 1
    assert sum(g.replicas for g in spec.worker_groups) >= 2
    assert all(g.min <= g.replicas <= g.max for g in spec.worker_groups)


def test_train_gpu_ci_cpu_overlay_clears_placement_and_sets_image() -> None:
    base = resolve("ray/train-gpu").spec
    spec = resolve("ray/train-gpu", CI_CPU).spec
    assert isinstance(base, RaySpec)
    assert isinstance(spec, RaySpec)
    assert base.worker_groups[0].node_selector == {"nvidia.com/gpu.present": "true"}
    assert base.worker_groups[0].tolerations
    gpu = spec.worker_groups[0]
    assert gpu.name == "gpu"
    assert gpu.node_selector == {}
    assert gpu.tolerations == []
    assert spec.image == "rayproject/ray:2.60.0-py311-cpu"
    # What the overlay does not mention is kept.
    assert spec.runtime_env == base.runtime_env
    assert spec.lifetime == base.lifetime


def test_etl_gpu_ci_cpu_overlay_merges_conf() -> None:
    spec = resolve("spark/etl-gpu", CI_CPU).spec
    assert isinstance(spec, SparkSpec)
    assert spec.conf == {"spark.sql.shuffle.partitions": "4", "spark.task.resource.gpu.amount": "0"}
    assert spec.workers.node_selector == {}
    assert spec.workers.tolerations == []
    assert spec.workers.replicas == 2


def test_profile_overlay_merges_mappings_and_replaces_the_rest(tmp_path: Path) -> None:
    text = (SPECS_DIR / "ray/train-gpu.yaml").read_text() + (
        "  big:\n"
        "    head:\n"
        "      memory: 16Gi\n"
        "    workerGroups:\n"
        "      gpu:\n"
        "        replicas: 3\n"
        "        nodeSelector:\n"
        "          zone: a\n"
        "        tolerations: []\n"
    )
    path = tmp_path / "train-gpu.yaml"
    path.write_text(text)
    spec = resolve(str(path), "big").spec
    assert isinstance(spec, RaySpec)
    assert (spec.head.cpu, spec.head.memory) == (2, "16Gi")
    gpu = spec.worker_groups[0]
    assert gpu.replicas == 3
    assert gpu.node_selector == {"nvidia.com/gpu.present": "true", "zone": "a"}
    assert gpu.tolerations == []
    assert gpu.gpus == 1  # not a built-in profile: GPUs stay


# --- overrides --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "lo", "hi"),
    [(3, 2, 4), (4, 2, 4), (1, 1, 4)],
)
def test_replica_override_lowers_min_and_stays_within_max(replicas: int, lo: int,
                                                          hi: int) -> None:
    spec = resolve("ray/train-gpu", None, {"workers": {"replicas": replicas}}).spec
    assert isinstance(spec, RaySpec)
    g = spec.worker_groups[0]
    assert (g.replicas, g.min_replicas, g.max_replicas) == (replicas, lo, hi)


@pytest.mark.parametrize("overrides", [
    {"workers": {"replicas": 6}},
    {"groups": {"gpu": {"replicas": 5}}},
    # The group's own count wins over the workers-wide one: only it is judged.
    {"workers": {"replicas": 2}, "groups": {"gpu": {"replicas": 5}}},
], ids=["workers", "group", "group-wins"])
def test_replica_override_above_max_is_refused_naming_the_field(
        overrides: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as err:
        resolve("ray/train-gpu", None, overrides)
    field = "workers.replicas" if "groups" not in overrides else "groups.gpu.replicas"
    assert err.value.fields == [field]
    assert "above maxReplicas (4) of worker group 'gpu'; ask for at most 4" in str(err.value)


def test_a_group_count_within_max_wins_over_a_workers_count_above_it() -> None:
    spec = resolve("ray/train-gpu", None, {"workers": {"replicas": 9},
                                           "groups": {"gpu": {"replicas": 3}}}).spec
    assert isinstance(spec, RaySpec)
    assert spec.worker_groups[0].replicas == 3


def test_replicas_above_max_only_when_the_caller_opts_in() -> None:
    opted = resolve("ray/train-gpu", None, {"workers": {"replicas": 6},
                                            "raise_max_replicas": True})
    assert isinstance(opted.spec, RaySpec)
    g = opted.spec.worker_groups[0]
    assert (g.replicas, g.min_replicas, g.max_replicas) == (6, 2, 6)
    same = resolve("ray/train-gpu", None, {"workers": {"replicas": 6}, "raiseMaxReplicas": True})
    assert same.hash == opted.hash
    # The flag alone changes nothing: not the spec, not its hash.
    assert resolve("ray/train-gpu", None, {"raise_max_replicas": True}).hash == (
        resolve("ray/train-gpu").hash)


def test_replica_override_after_ci_cpu() -> None:
    spec = resolve("ray/train-gpu", CI_CPU, {"workers": {"replicas": 1}}).spec
    assert isinstance(spec, RaySpec)
    g = spec.worker_groups[0]
    assert (g.replicas, g.gpus, g.min_replicas, g.max_replicas) == (1, 0, None, None)


def test_ci_cpu_with_a_connect_override_on_a_spec_without_connect(tmp_path: Path) -> None:
    """The ETL DAGs pass {"connect": False} with ci-cpu; a spec of their own without a
    connect section must resolve too (the override adds the node)."""
    doc = resolve("spark/etl").spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc.pop("connect", None)
    path = tmp_path / "etl-no-connect.yaml"
    path.write_text(yaml.safe_dump(doc))
    for enabled in (False, True):
        spec = resolve(str(path), CI_CPU, {"connect": enabled}).spec
        assert isinstance(spec, SparkSpec)
        assert spec.connect is not None
        assert spec.connect.enabled is enabled


@pytest.mark.parametrize(("ref", "overrides", "field", "says"), [
    ("ray/train-gpu", {"workers": {"replicas": 3}}, "workerGroups.gpu.replicas",
     "3 is more than profile ci-cpu allows; ask for at most 2 workers per group"),
    # Above the spec's own maxReplicas (4) too: the spec's limit is judged first, as without
    # a profile.
    ("ray/train-gpu", {"workers": {"replicas": 1000}}, "workers.replicas",
     "1000 is above maxReplicas (4)"),
    ("ray/train-gpu", {"workers": {"replicas": 5}, "raise_max_replicas": True},
     "workerGroups.gpu.replicas", "ask for at most 2 workers per group"),
    ("ray/train-gpu", {"groups": {"gpu": {"gpus": 8}}}, "workerGroups.gpu.gpus",
     "profile ci-cpu runs without GPUs; ask for 0, or choose no profile"),
    ("ray/train-gpu", {"head": {"cpu": 64}}, "head.cpu", "ask for at most 1 CPU per node"),
    ("ray/adhoc-cpu", {"workers": {"memory": "256Gi"}}, "workerGroups.cpu.memory",
     "ask for at most 2Gi per node"),
    ("spark/etl", {"workers": {"cpu": 4}}, "workers.cores", "ask for at most 1 CPU per node"),
], ids=["replicas", "above-spec-max", "raise-max-opt-in", "gpus", "head-cpu", "memory",
        "spark-cores"])
def test_overrides_cannot_lift_the_ci_cpu_limits(ref: str, overrides: dict[str, Any],
                                                  field: str, says: str) -> None:
    """A CPU-only, small profile stays one: a flag or a form field that asks for more is
    refused by name, not given GPUs and 1000 nodes on a kind cluster."""
    with pytest.raises(SpecError) as err:
        resolve(ref, CI_CPU, overrides)
    assert err.value.fields == [field]
    assert says in str(err.value)


def test_group_override_touches_only_named_fields() -> None:
    base = resolve("ray/train-gpu").spec
    spec = resolve("ray/train-gpu", None, {"groups": {"gpu": {"gpus": 2}}}).spec
    assert isinstance(base, RaySpec)
    assert isinstance(spec, RaySpec)
    assert spec.worker_groups[0].gpus == 2
    assert spec.worker_groups[0].model_copy(update={"gpus": 1}) == base.worker_groups[0]
    assert spec.head == base.head


def test_head_override_and_overrides_object() -> None:
    ov = Overrides.model_validate({"head": {"cpu": 0.5, "memory": "1Gi"}})
    a = resolve("ray/adhoc-cpu", None, ov)
    b = resolve("ray/adhoc-cpu", None, {"head": {"cpu": 0.5, "memory": "1Gi"}})
    assert isinstance(a.spec, RaySpec)
    assert (a.spec.head.cpu, a.spec.head.memory) == (0.5, "1Gi")
    assert a.hash == b.hash != resolve("ray/adhoc-cpu").hash


def test_empty_overrides_change_nothing() -> None:
    assert resolve("ray/adhoc-cpu", None, {}).hash == resolve("ray/adhoc-cpu").hash
    assert resolve("ray/adhoc-cpu", None, Overrides()).spec == resolve("ray/adhoc-cpu").spec


@pytest.mark.parametrize(
    "overrides",
    [{"workers": {"cpu": 2}}, {"groups": {"workers": {"cpu": 2.0}}}],
    ids=["workers", "group"],
)
def test_spark_override_cpu_becomes_cores(overrides: dict[str, object]) -> None:
    spec = resolve("spark/etl", None, overrides).spec
    assert isinstance(spec, SparkSpec)
    assert spec.workers.cores == 2
    assert spec.master.cpu == 1


def test_spark_head_override_sizes_the_master() -> None:
    spec = resolve("spark/etl", None, {"head": {"cpu": 2, "memory": "3Gi"},
                                        "workers": {"replicas": 5, "memory": "1Gi"}}).spec
    assert isinstance(spec, SparkSpec)
    assert (spec.master.cpu, spec.master.memory) == (2, "3Gi")
    assert (spec.workers.replicas, spec.workers.memory, spec.workers.cores) == (5, "1Gi", 4)


def test_connect_override_switches_the_connect_server_and_changes_the_hash() -> None:
    plain = resolve("spark/etl", "ci-cpu")
    without = resolve("spark/etl", "ci-cpu", {"connect": False})
    assert isinstance(plain.spec, SparkSpec)
    assert isinstance(without.spec, SparkSpec)
    assert plain.spec.connect is not None
    assert plain.spec.connect.enabled
    assert without.spec.connect is not None
    assert not without.spec.connect.enabled
    # Everything else about the server is kept, so turning it back on restores the spec.
    assert without.spec.connect.memory == plain.spec.connect.memory
    assert without.hash != plain.hash
    assert resolve("spark/etl", "ci-cpu", {"connect": True}).hash == plain.hash


def test_connect_override_on_a_ray_spec_names_the_field() -> None:
    with pytest.raises(SpecError) as err:
        resolve("ray/adhoc-cpu", None, {"connect": False})
    assert err.value.fields == ["connect"]
    assert "Spark cluster option" in str(err.value)


# --- content hash -----------------------------------------------------------------------------

HASH_A = """\
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
    memory: 4Gi
lifetime:
  ttl: 2h
"""

# The same spec: other key order, comments, flow style, other quoting, explicit defaults.
HASH_B = """\
# the same cluster, written differently
workerGroups: [{memory: "4Gi", replicas: 2, name: 'cpu'}]   # one group
lifetime: {ttl: "2h"}
head: {memory: 2Gi, cpu: 1.0}
image: "rayproject/ray:2.60.0-py311-cpu"
rayVersion: '2.60.0'
version: 1
name: demo
kind: RayCluster
description: not part of the hash
"""


def _hash_of(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return resolve(str(path), specs_dir=tmp_path).hash


def test_hash_ignores_order_comments_and_formatting(tmp_path: Path) -> None:
    assert _hash_of(tmp_path, HASH_A, "a.yaml") == _hash_of(tmp_path, HASH_B, "b.yaml")


@pytest.mark.parametrize(
    ("old", "new"),
    [("replicas: 2", "replicas: 3"), ("memory: 4Gi", "memory: 4G"), ("ttl: 2h", "ttl: 3h"),
     ("version: 1", "version: 2"), ("py311-cpu", "py312-cpu")],
)
def test_hash_changes_with_any_value(tmp_path: Path, old: str, new: str) -> None:
    assert HASH_A.count(old) == 1
    changed = HASH_A.replace(old, new)
    assert _hash_of(tmp_path, HASH_A, "a.yaml") != _hash_of(tmp_path, changed, "b.yaml")


def test_hash_differs_between_profiles(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(HASH_A + "profiles:\n  one:\n    head: {cpu: 0.5}\n"
                    "  two:\n    head: {memory: 1Gi}\n")
    hashes = {p: resolve(str(path), p, specs_dir=tmp_path).hash for p in (None, "one", "two",
                                                                          CI_CPU)}
    assert len(set(hashes.values())) == 4
    assert hashes[None] == _hash_of(tmp_path, HASH_A, "plain.yaml")  # profiles are not hashed


# --- references -------------------------------------------------------------------------------


def test_reference_without_and_with_version() -> None:
    latest = resolve("ray/train-gpu")
    pinned = resolve("ray/train-gpu@1")
    assert latest.ref == pinned.ref == "ray/train-gpu@1"
    assert latest.source == pinned.source == str(SPECS_DIR / "ray/train-gpu.yaml")
    assert latest.hash == pinned.hash
    assert pinned.label() == "ray/train-gpu@1"
    assert resolve("ray/train-gpu", CI_CPU).label() == "ray/train-gpu@1 [ci-cpu]"


def test_reference_by_path() -> None:
    inside = resolve(str(SPECS_DIR / "ray/train-gpu.yaml"))
    assert inside.ref == "ray/train-gpu@1"
    assert inside.hash == resolve("ray/train-gpu").hash


def test_reference_by_path_outside_the_specs_dir(tmp_path: Path) -> None:
    path = tmp_path / "mine.yml"
    path.write_text(HASH_A)
    resolved = resolve(str(path))
    assert resolved.ref == str(path)
    assert resolved.spec.name == "demo"


def test_specs_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray/demo.yaml").write_text(HASH_A)
    monkeypatch.setenv("EPHEMERAL_SPECS_DIR", str(tmp_path))
    assert resolve("ray/demo").ref == "ray/demo@1"


@pytest.fixture
def versioned_dir(tmp_path: Path) -> Path:
    """``ray/demo.yaml`` at version 2, with version 1 archived beside it as ``demo@1.yaml``."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray/demo@1.yaml").write_text(HASH_A)
    (tmp_path / "ray/demo.yaml").write_text(
        HASH_A.replace("version: 1", "version: 2").replace("replicas: 2", "replicas: 3"))
    return tmp_path


def test_archived_versions_resolve(versioned_dir: Path) -> None:
    v1 = resolve("ray/demo@1", specs_dir=versioned_dir)
    v2 = resolve("ray/demo@2", specs_dir=versioned_dir)
    latest = resolve("ray/demo", specs_dir=versioned_dir)
    assert (v1.ref, v1.spec.version) == ("ray/demo@1", 1)
    assert (v2.ref, v2.spec.version) == ("ray/demo@2", 2)
    assert Path(v1.source).name == "demo@1.yaml"
    assert Path(v2.source).name == "demo.yaml"
    assert latest.ref == "ray/demo@2"
    assert latest.hash == v2.hash != v1.hash
    assert isinstance(v1.spec, RaySpec)
    assert v1.spec.worker_groups[0].replicas == 2


def test_missing_version_lists_archived_ones(versioned_dir: Path) -> None:
    with pytest.raises(SpecNotFound) as info:
        resolve("ray/demo@3", specs_dir=versioned_dir)
    assert info.value.fields == ["version"]
    assert "versions that exist: ray/demo@1, ray/demo@2" in str(info.value)


def test_current_file_wins_over_a_stale_archive_of_its_version(versioned_dir: Path) -> None:
    (versioned_dir / "ray/demo@2.yaml").write_text(
        HASH_A.replace("version: 1", "version: 2").replace("replicas: 2", "replicas: 7"))
    resolved = resolve("ray/demo@2", specs_dir=versioned_dir)
    assert Path(resolved.source).name == "demo.yaml"
    assert isinstance(resolved.spec, RaySpec)
    assert resolved.spec.worker_groups[0].replicas == 3


# --- quantities -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n"),
    [("512Mi", 512 * 2**20), ("2G", 2 * 10**9), ("1.5Gi", 3 * 2**29), ("4Gi", 4 * GI),
     ("100k", 100_000), ("1Ti", 2**40), ("12", 12)],
)
def test_memory_bytes(text: str, n: int) -> None:
    assert memory_bytes(text) == n


@pytest.mark.parametrize("text", ["", "2 GB", " 1Gi", "1Gi ", "-1Gi", "0Gi", "1gi", "1e9", "abc"])
def test_memory_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="Kubernetes quantity"):
        memory_bytes(text)


def test_format_memory() -> None:
    assert format_memory(2 * GI) == "2Gi"
    assert format_memory(1536 * 2**20) == "1536Mi"
    assert format_memory(3 * 2**10) == "3Ki"
    assert format_memory(1000) == "1000"


@pytest.mark.parametrize(
    ("text", "n"),
    [("1h30m", 5400), ("90s", 90), ("30m", 1800), ("6h", 21600), ("1d", 86400),
     ("1d2h3m4s", 93784)],
)
def test_duration_seconds(text: str, n: int) -> None:
    assert duration_seconds(text) == n


@pytest.mark.parametrize("text", ["", "0s", "1h 30m", "30m1h", "6H", "10 minutes", "1.5h"])
def test_duration_seconds_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration greater than zero"):
        duration_seconds(text)


def test_integer_memory_in_a_spec_means_bytes(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(HASH_A.replace("memory: 4Gi", "memory: 1073741824"))
    spec = load_file(path)
    assert isinstance(spec, RaySpec)
    assert spec.worker_groups[0].memory == "1073741824"
    assert memory_bytes(spec.worker_groups[0].memory) == GI


def test_lifetime_seconds() -> None:
    spec = resolve("ray/train-gpu").spec
    assert spec.lifetime.ttl_seconds == 6 * 3600
    assert spec.lifetime.idle_timeout_seconds == 30 * 60


# --- identity ---------------------------------------------------------------------------------

OWNER = {"spec_name": "train-gpu", "dag_id": "train_daily", "run_id": "scheduled__2026-01-01",
         "task_id": "setup", "map_index": -1}


def identity(**changes: object) -> ClusterIdentity:
    return ClusterIdentity(**(OWNER | changes))  # type: ignore[arg-type]


def assert_label_value(value: str) -> None:
    assert len(value) <= 63, value
    assert LABEL_VALUE.match(value), value


def test_name_is_deterministic_and_short() -> None:
    a, b = identity(), identity()
    assert a.name == b.name
    assert a.name.startswith("eph-train-gpu-")
    assert re.fullmatch(r"eph-train-gpu-[0-9a-f]{10}", a.name)
    assert DNS1123.match(a.name)
    longest = identity(spec_name="s" * 30)
    assert DNS1123.match(longest.name)
    assert len(longest.name) <= NAME_MAX == 47


@pytest.mark.parametrize(
    "change",
    [{"dag_id": "train_weekly"}, {"run_id": "scheduled__2026-01-02"}, {"task_id": "setup2"},
     {"map_index": 0}, {"map_index": 1}, {"spec_name": "adhoc-cpu"}],
)
def test_name_differs_with_any_owner_field(change: dict[str, object]) -> None:
    assert identity(**change).name != identity().name


def test_name_is_not_ambiguous_across_fields() -> None:
    assert identity(dag_id="a", run_id="bc").name != identity(dag_id="ab", run_id="c").name


def test_labels_are_valid_even_for_raw_airflow_ids() -> None:
    run_id = "manual__2026-11-22T00:00:00+00:00"
    dag_id = "d" * 200
    task_id = "group.setup_cluster"
    ident = identity(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=-1)
    labels = ident.labels()
    for key, value in labels.items():
        assert_label_value(value)
        prefix, _, name = key.rpartition("/")
        assert len(name) <= 63, key
        assert LABEL_VALUE.match(name), key
        assert prefix in ("ephemeral.dev", "app.kubernetes.io")
    assert labels["ephemeral.dev/cluster"] == ident.name
    assert labels["ephemeral.dev/owner"] == "airflow"
    assert labels["ephemeral.dev/spec"] == "train-gpu"
    assert labels["app.kubernetes.io/managed-by"] == "ephemeral"
    assert labels["ephemeral.dev/task-id"] == task_id  # valid as is: kept
    assert labels["ephemeral.dev/run-id"] == label_value(run_id) != run_id
    assert labels["ephemeral.dev/dag-id"] == label_value(dag_id) != dag_id
    assert labels["ephemeral.dev/map-index"] == "none"
    assert identity(map_index=3).labels()["ephemeral.dev/map-index"] == "3"
    assert ident.annotations() == {"ephemeral.dev/dag-id": dag_id, "ephemeral.dev/run-id": run_id,
                                   "ephemeral.dev/task-id": task_id}


def test_label_value() -> None:
    assert label_value("train_daily") == "train_daily"
    assert label_value("") == ""
    assert label_value("a" * 63) == "a" * 63
    hashed = label_value("a" * 64)
    assert re.fullmatch(r"h-[0-9a-f]{20}", hashed)
    assert label_value("a" * 64) == hashed
    assert label_value("a" * 65) != hashed
    for bad in ("-x", "x-", "a:b", "a+b", "a b", "é"):
        assert label_value(bad).startswith("h-"), bad
        assert_label_value(label_value(bad))


def test_manual_identity() -> None:
    ident = ClusterIdentity.manual("adhoc-cpu")
    assert ident.owner == "manual"
    assert ident.name.startswith("eph-adhoc-cpu-")
    assert ident.name == ClusterIdentity.manual("adhoc-cpu").name != identity().name
    assert ident.annotations() == {}
    assert "ephemeral.dev/dag-id" not in ident.labels()
    named = ClusterIdentity.manual("adhoc-cpu", "my-cluster")
    assert named.name == "my-cluster"
    assert named.labels()["ephemeral.dev/cluster"] == "my-cluster"
    assert ClusterIdentity.manual("adhoc-cpu", "n" * 47).name == "n" * 47


@pytest.mark.parametrize("name", ["My-Cluster", "my_cluster", "-x", "x-", "", "n" * 48, "a.b"])
def test_manual_identity_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="at most 47 characters"):
        ClusterIdentity.manual("adhoc-cpu", name)


def test_expires_at() -> None:
    created = datetime(2026, 1, 1, 23, 30, tzinfo=UTC)
    assert expires_at(created, 3600) == "2026-01-02T00:30:00Z"


@pytest.mark.parametrize("ref", [
    "rayproject/ray:2.60.0-py311-cpu", "ray", "localhost:5000/team/ray:2.60.0",
    "Registry.Example.com/team/ray", "[::1]:5000/ray:x", "my_team__x/ray-gpu.v2:latest",
    "ghcr.io/team/spark:4.3.0@sha256:" + "a" * 64, "a/" + "b" * 253 + ":long-names-count"])
def test_image_references_the_runtimes_take_are_accepted(ref: str) -> None:
    from ephemeral.specs.models import image_ref_ok

    assert image_ref_ok(ref)


@pytest.mark.parametrize("ref", [
    "RayProject/ray:1", "ghcr.io/Team/ray", "ray :1", "ray:", "ray@sha256:abc",
    "https://ghcr.io/team/ray", "-ray", "ghcr.io/", "ray:1\n", "a/" + "b" * 254])
def test_image_references_the_runtimes_refuse_are_refused(ref: str) -> None:
    from ephemeral.specs.models import image_ref_ok

    assert not image_ref_ok(ref)
