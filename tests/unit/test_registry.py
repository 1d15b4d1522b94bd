"""The model registry on a real MLflow store (the embedded SQLite one under EPHEMERAL_HOME): trials
logged once, versions registered, the champion alias promoted and rolled back, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ephemeral import registry
from ephemeral.cli.main import app
from ephemeral.registry import RegistryError


@pytest.fixture(scope="module")
def store_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the module: creating MLflow's tables takes seconds."""
    return tmp_path_factory.mktemp("registry-home")


@pytest.fixture
def home(ephemeral_home: Path, store_home: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Path:
    monkeypatch.setenv("EPHEMERAL_HOME", str(store_home))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", *registry.SECRET_ENV):
        monkeypatch.delenv(var, raising=False)
    return store_home


def client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=registry.tracking_uri(),
                        registry_uri=registry.tracking_uri())


def two_versions(name: str) -> tuple[str, str]:
    v1 = registry.register(name, model_uri=f"file:///models/{name}/1")
    v2 = registry.register(name, model_uri=f"file:///models/{name}/2")
    return v1, v2


def test_the_store_is_embedded_under_ephemeral_home_unless_a_server_is_named(
        ephemeral_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri() == f"sqlite:///{ephemeral_home}/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ci:s3cret@mlflow.example:5000/x")
    assert registry.tracking_uri() == "https://ci:s3cret@mlflow.example:5000/x"
    assert registry.display_uri(registry.tracking_uri()) == "https://***@mlflow.example:5000/x"
    assert registry.display_uri("s3://bucket/m") == "s3://bucket/m"


def test_mlflow_tracking_uri_picks_another_store(ephemeral_home: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    version = registry.register("reg-elsewhere", model_uri="file:///models/e/1")
    registry.promote("reg-elsewhere", version)
    assert db.is_file()
    assert (db.parent / ".lock").is_file()  # writes to a SQLite store are serialized
    assert not (ephemeral_home / "mlflow").exists()
    assert registry.champion("reg-elsewhere") == version
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert registry.champion("reg-elsewhere") is None  # the embedded store knows nothing of it


def test_a_trial_is_logged_once_per_run_name(home: Path) -> None:
    args: dict[str, Any] = {
        "experiment": "trials", "run_name": "t0", "params": {"lr": 0.1, "layers": 2},
        "metrics": {"accuracy": 0.91, "f1": 0.88}, "artifact_uri": "file:///models/t0",
        "tags": {"dag_run": "manual__1"}}
    run_id = registry.log_trial(**args)
    assert registry.log_trial(**args) == run_id  # a task retry
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "t0"
    assert run.data.params == {"lr": "0.1", "layers": "2"}
    assert run.data.metrics == {"accuracy": 0.91, "f1": 0.88}
    assert run.data.tags["ephemeral.artifact_uri"] == "file:///models/t0"
    assert run.data.tags["dag_run"] == "manual__1"
    experiment = client().get_experiment_by_name("trials")
    assert len(client().search_runs([experiment.experiment_id])) == 1
    # Embedded artifacts stay under EPHEMERAL_HOME, not in ./mlruns of the working directory.
    assert experiment.artifact_location == (home / "mlflow" / "artifacts").as_uri()


def test_a_try_that_died_half_way_is_logged_afresh(home: Path) -> None:
    registry.log_trial(experiment="dying", run_name="t-seed", params={}, metrics={},
                       artifact_uri="file:///models/seed")
    experiment_id = client().get_experiment_by_name("dying").experiment_id
    dead = client().create_run(experiment_id, run_name="t-dead",  # never finished
                               tags={registry.ARTIFACT_TAG: "file:///models/d"}).info.run_id
    run_id = registry.log_trial(experiment="dying", run_name="t-dead", params={},
                                metrics={"accuracy": 0.5}, artifact_uri="file:///models/d")
    assert run_id != dead
    assert client().get_run(dead).info.lifecycle_stage == "deleted"
    assert client().get_run(run_id).data.metrics == {"accuracy": 0.5}


def test_register_promote_and_roll_back(home: Path) -> None:
    name = "reg-basic"
    assert registry.champion(name) is None
    run_id = registry.log_trial(experiment="reg-basic", run_name="t1", params={},
                                metrics={"accuracy": 0.9}, artifact_uri="file:///models/b1")
    v1 = registry.register(name, model_uri="file:///models/b1", run_id=run_id,
                           metrics={"accuracy": 0.9}, tags={"gate": "passed"})
    assert registry.register(name, model_uri="file:///models/b1", run_id=run_id) == v1  # retry
    v2 = registry.register(name, model_uri="s3://bucket/models/b2")
    assert (v1, v2) == ("1", "2")
    version = client().get_model_version(name, v1)
    assert version.run_id == run_id
    assert version.tags == {"metric.accuracy": "0.9", "gate": "passed"}

    assert registry.promote(name, v1) is None
    assert registry.promote(name, v2) == v1
    assert registry.promote(name, v2) == v2  # a retried promotion changes nothing
    assert registry.champion(name) == v2
    # What a serving system reads.
    assert client().get_model_version_by_alias(name, "champion").source == \
        "s3://bucket/models/b2"
    shown = registry.describe(name)
    assert (shown["champion"], shown["previous"], shown["history"]) == (v2, v1, [v1])

    assert registry.rollback(name) == (v2, v1)
    assert registry.champion(name) == v1
    assert client().get_model_version_by_alias(name, "champion").source == "file:///models/b1"
    with pytest.raises(RegistryError, match=r"model 'reg-basic' has no previous champion"):
        registry.rollback(name)
    assert registry.champion(name) == v1  # a refused rollback changes nothing


def test_rolling_back_twice_goes_two_promotions_back(home: Path) -> None:
    name = "reg-deep"
    v1, v2 = two_versions(name)
    v3 = registry.register(name, model_uri=f"file:///models/{name}/3")
    for v in (v1, v2, v3):
        registry.promote(name, v)
    assert registry.rollback(name) == (v3, v2)
    assert registry.rollback(name) == (v2, v1)
    with pytest.raises(RegistryError, match="reg-deep"):
        registry.rollback(name)
    # A new promotion after rollbacks: the way back is the champion it replaced.
    registry.promote(name, v3)
    assert registry.rollback(name) == (v3, v1)


def test_a_deleted_previous_version_is_skipped(home: Path) -> None:
    name = "reg-deleted"
    v1, v2 = two_versions(name)
    v3 = registry.register(name, model_uri=f"file:///models/{name}/3")
    for v in (v1, v2, v3):
        registry.promote(name, v)
    client().delete_model_version(name, v2)
    assert registry.describe(name)["previous"] == v1
    assert registry.rollback(name) == (v3, v1)


def test_bad_requests_name_the_model(home: Path) -> None:
    with pytest.raises(RegistryError, match=r"no registered model 'nope'"):
        registry.rollback("nope")
    name = "reg-unpromoted"
    two_versions(name)
    with pytest.raises(RegistryError, match=r"model 'reg-unpromoted' has no champion"):
        registry.rollback(name)
    with pytest.raises(RegistryError, match="reg-unpromoted"):
        registry.promote(name, "9")
    assert registry.champion(name) is None
    with pytest.raises(RegistryError, match="run_name"):
        registry.log_trial(experiment="x", run_name="it's", params={}, metrics={},
                           artifact_uri="file:///m")


def test_secrets_stay_out_of_the_registry(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123456")
    with pytest.raises(RegistryError, match=r"has credentials in its URL") as caught:
        registry.register("reg-secret", model_uri="https://u:hunter2@store.example/m")
    assert "hunter2" not in str(caught.value)
    run_id = registry.log_trial(
        experiment="secrets", run_name="t", metrics={},
        params={"data": "postgresql://etl:hunter2@db/features", "note": "token tok-123456"},
        tags={"auth": "Bearer tok-123456"}, artifact_uri="file:///models/s")
    data = client().get_run(run_id).data
    stored = json.dumps([data.params, data.tags])
    assert "hunter2" not in stored
    assert "tok-123456" not in stored
    assert data.params["data"] == "postgresql://***@db/features"


def test_an_unreachable_server_is_retryable_and_its_password_stays_out(
        ephemeral_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own message names the URL with its password: ours masks it and does not chain
    the original (task logs print chained tracebacks)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ci:hunter2@127.0.0.1:9")  # refused
    with pytest.raises(RegistryError, match=r"model 'm'.*http://\*\*\*@127.0.0.1:9") as e:
        registry.champion("m")
    assert e.value.retryable
    assert "hunter2" not in str(e.value)
    assert e.value.__cause__ is None


def test_the_cli_shows_and_rolls_back(home: Path) -> None:
    name = "reg-cli"
    v1, v2 = two_versions(name)
    registry.promote(name, v1)
    registry.promote(name, v2)
    runner = CliRunner()
    shown = runner.invoke(app, ["model", "show", name, "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert (doc["champion"], doc["previous"]) == (v2, v1)
    assert [v["version"] for v in doc["versions"]] == [v2, v1]
    assert doc["versions"][0]["aliases"] == ["champion"]
    assert doc["serving_uri"] == f"models:/{name}@champion"

    # The installed entry point, in its own process.
    env = {**os.environ, "EPHEMERAL_HOME": str(home)}
    exe = Path(sys.executable).parent / "ephemeral"
    done = subprocess.run([str(exe), "model", "rollback", name], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{name}: champion {v2} -> {v1}" in done.stderr
    assert registry.champion(name) == v1

    again = runner.invoke(app, ["model", "rollback", name])
    assert again.exit_code == 1
    assert f"model {name!r} has no previous champion" in again.stderr
    human = runner.invoke(app, ["model", "show", name])
    assert human.exit_code == 0
    assert f"{name}  champion {v1}  previous -" in human.stdout


@pytest.mark.parametrize("name", ["", "it's", "a/b", "a:b"])
def test_the_cli_refuses_a_name_no_model_can_have(home: Path, name: str) -> None:
    """Exit 2, as every refused input: a quote breaks the store's search filter, '/' and ':'
    MLflow refuses in a model's name."""
    registry.register("reg-named", model_uri="file:///models/reg-named/1")  # the store exists
    for command in ("show", "rollback"):
        done = CliRunner().invoke(app, ["model", command, name, "--json"])
        assert done.exit_code == 2, done.output
        assert json.loads(done.stdout)["message"]


def test_showing_a_model_on_a_new_machine_makes_no_store(ephemeral_home: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for command in ("show", "rollback"):
        done = CliRunner().invoke(app, ["model", command, "train_distributed"])
        assert done.exit_code == 1, done.output
        assert "no registered model 'train_distributed'" in done.stderr
    assert not (ephemeral_home / "mlflow").exists()


def test_a_separate_registry_is_where_models_are_looked_for(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFLOW_REGISTRY_URI names the models' store: a tracking store not made yet does not
    mean there is no model."""
    registry.register("reg-elsewhere", model_uri="file:///models/reg-elsewhere/1")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    monkeypatch.setenv("EPHEMERAL_HOME", str(tmp_path / "new"))  # no tracking store here
    done = CliRunner().invoke(app, ["model", "show", "reg-elsewhere", "--json"])
    assert done.exit_code == 0, done.output
    assert [v["version"] for v in json.loads(done.stdout)["versions"]] == ["1"]


def test_the_cli_and_the_library_import_without_mlflow() -> None:
    code = ("import sys, ephemeral.cli.main, ephemeral.registry\n"
            "print('mlflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_parallel_trials_on_a_fresh_store_all_land(ephemeral_home: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The mapped trials of a first run start together: one of them creates the database, the
    others wait for it instead of migrating it twice, and every promotion is in the history."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = ("import sys\n"
            "from ephemeral import registry as r\n"
            "i = sys.argv[1]\n"
            "rid = r.log_trial(experiment='par', run_name='t' + i, params={}, metrics={},\n"
            "                  artifact_uri='file:///m/' + i)\n"
            "r.promote('par', r.register('par', model_uri='file:///m/' + i, run_id=rid))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ)) for i in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    shown = registry.describe("par")
    assert sorted(v["version"] for v in shown["versions"]) == ["1", "2", "3"]
    assert sorted([*shown["history"], shown["champion"]]) == ["1", "2", "3"]


def test_champion_tags_follow_promotions_and_rollbacks(home: Path) -> None:
    assert registry.champion_tags("reg-tags") == {}  # no such model
    first = registry.register("reg-tags", model_uri="file:///m/1", tags={"features_uri": "a"})
    second = registry.register("reg-tags", model_uri="file:///m/2", tags={"features_uri": "b"})
    registry.promote("reg-tags", first)
    registry.promote("reg-tags", second)
    assert registry.champion_tags("reg-tags")["features_uri"] == "b"
    registry.rollback("reg-tags")
    assert registry.champion_tags("reg-tags")["features_uri"] == "a"


@pytest.mark.parametrize("uri", [
    "https://ghp_abc123token@files.example/m/model.pt",
    "https://acct.blob.core.windows.net/c/model.pt?sv=2024&sig=SECRETSIG",
    "s3://bucket/model.pt?X-Amz-Credential=AKIA/x&X-Amz-Signature=deadbeef",
])
def test_a_token_sas_or_presigned_uri_is_refused_and_masked(home: Path, uri: str) -> None:
    """The registry judges URIs by the project's one rule (credentials_problem / masked_uri),
    not only a user:password: a token as the user name, Azure's sig=, S3's signature."""
    for secret in ("ghp_abc123token", "SECRETSIG", "deadbeef"):
        assert secret not in registry.display_uri(uri)
    with pytest.raises(RegistryError, match=r"model_uri: .*has credentials in its URL") as err:
        registry.register("reg-signed", model_uri=uri)
    assert all(s not in str(err.value) for s in ("ghp_abc123token", "SECRETSIG", "deadbeef"))
    with pytest.raises(RegistryError, match="artifact_uri"):
        registry.log_trial(experiment="signed", run_name="t", params={}, metrics={},
                           artifact_uri=uri)
    version = registry.register("reg-signed", model_uri="file:///models/ok",
                                tags={"source": uri})
    stored = client().get_model_version("reg-signed", version).tags["source"]
    assert all(s not in stored for s in ("ghp_abc123token", "SECRETSIG", "deadbeef"))


def test_a_trial_run_of_another_deployment_is_never_reused(home: Path) -> None:
    """Scheduled run ids are the same in every deployment sharing the tracking store: a run of
    the same name that logged another artifact (or other params) is refused, not returned."""
    run = "scheduled__2026-12-01T00:00:00+00:00/trial-lr-0.02"
    prod = registry.log_trial(experiment="shared", run_name=run, params={"rows": 5000},
                              metrics={"loss": 0.3},
                              artifact_uri="file:///root/prod/train_distributed/r/model.pt")
    with pytest.raises(RegistryError, match=r"another trial .*artifact .*staging"):
        registry.log_trial(experiment="shared", run_name=run, params={"rows": 5000},
                           metrics={"loss": 0.9},
                           artifact_uri="file:///root/staging/train_distributed/r/model.pt")
    with pytest.raises(RegistryError, match=r"other params \(rows\)"):
        registry.log_trial(experiment="shared", run_name=run, params={"rows": 900000},
                           metrics={"loss": 0.9},
                           artifact_uri="file:///root/prod/train_distributed/r/model.pt")
    assert registry.log_trial(experiment="shared", run_name=run, params={"rows": 5000},
                              metrics={"loss": 0.3},
                              artifact_uri="file:///root/prod/train_distributed/r/model.pt") \
        == prod  # the same trial's retry


def test_train_distributed_names_its_trial_runs_by_instance() -> None:
    import inspect

    from tests.conftest import dag_file_module

    td = dag_file_module("train_distributed", "registry_train_distributed")
    source = inspect.getsource(td.dag.get_task("train.pick_best").python_callable)
    assert 'run_name=f"{instance}/{dag_run.run_id}/trial-{name}"' in source


def test_a_rollback_interleaved_with_a_promotion_fails_instead_of_losing_it(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a server no lock serialises writers (simulated: _writing does nothing): a promotion
    landing between a rollback's read and its write was silently undone, both reporting
    success. The rollback now finds another writer's token after writing and fails."""
    import contextlib

    name = "reg-race"
    v1, v2 = two_versions(name)
    v3 = registry.register(name, model_uri=f"file:///models/{name}/3")
    registry.promote(name, v1)
    registry.promote(name, v2)
    monkeypatch.setattr(registry, "_writing", contextlib.nullcontext)
    shared = registry._client()
    write = shared.set_registered_model_alias
    interleaved = []

    def slow_write(model: str, alias: str, version: str) -> None:
        if not interleaved:  # the rollback's write; the training run's gate passes meanwhile
            interleaved.append("promoting")
            interleaved.append(registry.promote(name, v3))
        write(model, alias, version)

    monkeypatch.setattr(shared, "set_registered_model_alias", slow_write)
    with pytest.raises(RegistryError, match="another promotion or rollback changed it while "
                                            "rolling back"):
        registry.rollback(name)
    assert interleaved == ["promoting", v2]  # the promotion confirmed its own write
    monkeypatch.setattr(shared, "set_registered_model_alias", write)
    registry.promote(name, v3)  # repaired, one at a time
    assert registry.champion(name) == v3
