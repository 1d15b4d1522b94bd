"""What a spec file's place and text say must agree with what it means: a reference finds
``<dir>/<name>.yaml`` by its file name, so a copy renamed without editing it, an archive whose
number lies, a key written twice or a version pin of a thousand digits is refused, naming the
file and the field, before anything is resolved further."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ephemeral.adhoc import ray_spec_refs
from ephemeral.errors import SpecError, SpecNotFound
from ephemeral.specs import resolve
from ephemeral.specs.models import secret_name, secret_value

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "cluster_specs"


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    root = tmp_path / "specs"
    shutil.copytree(SHIPPED, root)
    return root


def test_a_renamed_copy_is_not_another_spec_under_the_first_ones_name(specs: Path) -> None:
    shutil.copy(specs / "spark/etl-gpu.yaml", specs / "spark/renamed.yaml")
    with pytest.raises(SpecError, match="differs from the file name 'renamed'") as err:
        resolve("spark/renamed", specs_dir=specs)
    assert "name" in err.value.fields
    with pytest.raises(SpecError, match="differs from the file name"):  # by path, too
        resolve(str(specs / "spark/renamed.yaml"), specs_dir=specs)


def test_an_archive_keeps_its_number_and_a_folder_its_kind(specs: Path) -> None:
    (specs / "spark/etl@7.yaml").write_text((specs / "spark/etl.yaml").read_text())
    with pytest.raises(SpecError, match="differs from the file name's @7") as err:
        resolve("spark/etl", specs_dir=specs)
    assert "version" in err.value.fields
    (specs / "spark/etl@7.yaml").unlink()
    shutil.copy(specs / "ray/adhoc-cpu.yaml", specs / "spark/adhoc-cpu.yaml")
    with pytest.raises(SpecError, match="which holds SparkCluster specs"):
        resolve("spark/adhoc-cpu", specs_dir=specs)


def test_specs_validate_names_a_misplaced_file_and_the_form_never_offers_one(
        specs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.cli import main

    for name in ("Adhoc", "adhoc_cpu"):
        shutil.copy(specs / "ray/adhoc-cpu.yaml", specs / f"ray/{name}.yaml")
    monkeypatch.setenv("EPHEMERAL_SPECS_DIR", str(specs))
    run = CliRunner().invoke(main.app, ["specs", "validate"])
    assert run.exit_code == 2, run.output
    assert "is not <name>.yaml or <name>@<N>.yaml" in run.output
    assert ray_spec_refs(specs) == ["ray/adhoc-cpu", "ray/train-gpu"]
    # A draft outside the specs folder is not found by a reference: its name is its own.
    draft = specs.parent / "draft.yaml"
    shutil.copy(specs / "ray/adhoc-cpu.yaml", draft)
    assert CliRunner().invoke(main.app, ["specs", "validate", str(draft)]).exit_code == 0


def test_a_key_written_twice_is_refused_in_every_file_the_project_reads(
        specs: Path, tmp_path: Path) -> None:
    path = specs / "ray/adhoc-cpu.yaml"
    path.write_text(path.read_text() + "lifetime:\n  ttl: 48h\n")
    with pytest.raises(SpecError, match="the key 'lifetime' appears twice; keep one"):
        resolve("ray/adhoc-cpu", specs_dir=specs)

    from ephemeral.gate import GateError, load_gate

    gate = tmp_path / "g.yaml"
    gate.write_text((ROOT / "gates/train_distributed.yaml").read_text() + "version: 2\n")
    with pytest.raises(GateError, match="appears twice"):
        load_gate(gate)


def test_merge_keys_still_merge() -> None:
    from ephemeral.yaml_files import load_yaml

    assert load_yaml("a: &d {x: 1, y: 2}\nb:\n  <<: *d\n  y: 3\n")["b"] == {"x": 1, "y": 3}


def test_a_pin_too_long_to_be_a_version_names_the_version(specs: Path) -> None:
    with pytest.raises(SpecNotFound, match="is not an integer version") as err:
        resolve("ray/adhoc-cpu@" + "9" * 4301, specs_dir=specs)
    assert "version" in err.value.fields


@pytest.mark.parametrize("name", ["PGPASSWORD", "MYSQL_PWD", "SSH_PRIVATE_KEY", "FERNET_KEY",
                                  "APIKEY", "GPG_PASSPHRASE", "CLIENT_CREDENTIALS", "GITHUB_PAT"])
def test_names_every_tool_reads_as_a_secret(name: str) -> None:
    assert secret_name(name)


@pytest.mark.parametrize("name", ["PWD", "SORT_KEY", "TOKENIZERS_PARALLELISM", "SECRETS_DIR",
                                  "PASSWORD_MIN_LENGTH", "FILE_PAT", "CACHE_KEY_PREFIX"])
def test_names_that_only_speak_of_secrets_are_none(name: str) -> None:
    assert not secret_name(name)


@pytest.mark.parametrize("value", [
    "ghp_" + "a" * 36, "github_pat_" + "A1" * 20, "sk-proj-" + "x" * 40, "AKIAABCDEFGHIJKLMNOP",
    "xoxb-1234-5678-abcdefghij", "eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4",
    "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc==;EndpointSuffix=core",
    "https://b.s3.amazonaws.com/x?X-Amz-Credential=A&X-Amz-Signature=deadbeef",
    "https://hooks.slack.com/services/T0AAAA1111/B0BBBB2222/abcdefghijklmnopqrstuvwx",
    "https://discord.com/api/webhooks/123456789012/abcdefghijklmnopqrstuvwxyz_-12",
    "https://acme.webhook.office.com/webhookb2/0a1b2c3d-4e5f@6a7b/IncomingWebhook/8c9d/0e1f"])
def test_values_that_are_credentials_by_their_shape(value: str) -> None:
    assert secret_value(value) is not None
    assert "deadbeef" not in str(secret_value(value))


@pytest.mark.parametrize("value", ["WARN", "/opt/task-runner-for-the-big-jobs", "0.5",
                                   "https://pypi.org/simple", "s3://bucket/key=2024/x.parquet",
                                   "https://api.slack.com/messaging/webhooks"])
def test_plain_values_stay_plain(value: str) -> None:
    assert secret_value(value) is None


def test_ci_cpu_drops_sparks_gpu_asks_with_the_gpus(specs: Path) -> None:
    """A GPU Spark spec without a ci-cpu entry of its own still runs on a CPU-only place:
    the built-in profile takes the GPUs and every ask for one."""
    path = specs / "spark/etl-gpu.yaml"
    path.write_text(path.read_text().split("profiles:")[0])
    spec = resolve("spark/etl-gpu", "ci-cpu", specs_dir=specs).spec
    assert "spark.task.resource.gpu.amount" not in spec.conf


def test_the_setup_logs_what_its_backend_does_not_honour() -> None:
    from types import SimpleNamespace

    from ephemeral.airflow.operators import _log_backend_notes
    from ephemeral.backends.local.backend import LocalBackend

    said: list[str] = []
    log = SimpleNamespace(warning=lambda msg, *args: said.append(msg % args))
    _log_backend_notes(log, resolve("ray/train-gpu"), LocalBackend())
    assert any("does not autoscale" in s for s in said), said
    assert any("nodeSelector" in s for s in said), said


@pytest.mark.parametrize(("ref", "overrides", "profile"), [
    ("ray/train-gpu", {"workers": {"gpus": 0}}, None),  # the trigger form's gpus_per_worker=0
    ("ray/train-gpu", None, "ci-cpu"),
    ("spark/etl-gpu", {"workers": {"gpus": 0}}, None),
])
def test_a_node_without_its_gpus_leaves_gpu_nodes_too(
        ref: str, overrides: dict[str, object] | None, profile: str | None) -> None:
    """On Kubernetes a CPU-only pod that still selects and tolerates GPU nodes holds one (or
    makes a cluster autoscaler buy one) whose GPUs nobody uses; a Spark cluster's applications
    stop asking for GPUs."""
    given = resolve(ref).spec
    spec = resolve(ref, profile, overrides).spec
    nodes = spec.worker_groups if hasattr(spec, "worker_groups") else [spec.workers]
    assert all(n.gpus == 0 and not n.node_selector and not n.tolerations for n in nodes)
    assert given.model_dump()["conf" if hasattr(given, "conf") else "name"]  # the spec asked
    if hasattr(spec, "conf"):
        assert not [k for k in spec.conf if "gpu" in k]


def test_placement_that_is_not_about_gpus_stays(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    text = (SHIPPED / "ray/train-gpu.yaml").read_text().replace(
        "nvidia.com/gpu.present: \"true\"", "nvidia.com/gpu.present: \"true\"\n      pool: ml")
    path.write_text(text)
    assert "pool: ml" in text
    spec = resolve(str(path), None, {"workers": {"gpus": 0}}).spec
    assert spec.worker_groups[0].node_selector == {"pool": "ml"}


@pytest.mark.parametrize(("name", "value"), [
    ("GOOGLE_APPLICATION_CREDENTIALS", "/var/run/secrets/gcp/key.json"),
    ("PAD_TOKEN", "[PAD]"), ("EOS_TOKEN", "</s>"), ("REGION_LIST", "ASIAPACIFICSOUTHEAST1"),
    ("BASELINE", "sk-learn-baseline-classifier-v2"),
    ("DATA", "https://h.example/d.parquet?versionId=3&partition_key=a&page_token=2&code=200"),
    ("DATA", "s3://bucket/x?key=2024")])
def test_what_only_looks_like_a_secret_is_none(name: str, value: str) -> None:
    from ephemeral.specs.models import literal_secret

    assert literal_secret(name, value) is None


@pytest.mark.parametrize("key", ["spark.io.encryption.keySizeBits",
                                 "spark.hadoop.fs.azure.sas.token.provider.type",
                                 "spark.kubernetes.driver.secretKeyRef.DB_PASSWORD",
                                 "spark.kubernetes.executor.secrets.spark-secret"])
def test_conf_keys_about_secrets_hold_none(key: str) -> None:
    from ephemeral.specs.models import secret_key

    assert not secret_key(key)


def test_a_google_api_key_in_a_url_is_one() -> None:
    from ephemeral.specs.pip_credentials import credentials_problem

    assert credentials_problem("https://maps.googleapis.com/x?key=AIzaSyA1234567890abcdefghij")
