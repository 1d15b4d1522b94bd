"""`ephemeral reap` and Airflow: the API's URL is refused before any cluster is listed when it
is no http(s) URL with a host or has credentials in it (they were printed on every decision
line); a pass that cannot ask Airflow keeps the cluster and fails (a reaper CronJob stayed
green while nothing run-ended was deleted)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ephemeral.backends.base import OwnerSelector
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.cli import main as cli_main
from ephemeral.errors import SettingError
from ephemeral.reaper import AirflowApiLookup
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import current_instance
from tests.conftest import small

RAY = small("ray/adhoc-cpu", replicas=1)


class Listing(InMemoryBackend):
    listed = 0

    def list_owned(self, selector=None):  # type: ignore[no-untyped-def]
        self.listed += 1
        return super().list_owned(selector)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Listing:
    backend = Listing(ready_after_probes=1)
    backend.create(RAY, identity=ClusterIdentity(spec_name=RAY.spec.name, dag_id="d",
                                                 run_id="r", task_id="t",
                                                 instance=current_instance()))
    backend.listed = 0
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)
    return backend


@pytest.mark.parametrize("url", ["http://admin:S3cretPass@127.0.0.1:1",
                                 "http://127.0.0.1:1/?token=abcdef0123456789abcdef"])
@pytest.mark.parametrize("how", ["option", "env"])
def test_credentials_in_the_airflow_url_are_refused_masked(fake: Listing, url: str,
                                                           how: str) -> None:
    args = ["reap", "--dry-run", "--json"]
    env = {"EPHEMERAL_AIRFLOW_URL": url} if how == "env" else None
    result = CliRunner().invoke(cli_main.app, args + (["--airflow-url", url] if how == "option"
                                                      else []), env=env)
    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    assert doc["error"] == "SettingError"
    assert "EPHEMERAL_AIRFLOW_URL" in doc["message"]
    assert "credentials" in doc["message"]
    assert "S3cretPass" not in result.output
    assert "abcdef0123456789abcdef" not in result.output
    assert fake.listed == 0


@pytest.mark.parametrize("url", ["notaurl", "ftp://x", "http://", "http:///path",
                                 "http://host:notaport"])
def test_an_airflow_url_that_is_none_is_refused_before_listing(fake: Listing, url: str) -> None:
    result = CliRunner().invoke(cli_main.app, ["reap", "--airflow-url", url, "--json"])
    assert result.exit_code == 2, result.output
    assert "http:// or https:// and a host" in json.loads(result.stdout)["message"]
    assert fake.listed == 0


def test_the_lookup_itself_refuses_credentials() -> None:
    with pytest.raises(SettingError, match="airflow_url"):
        AirflowApiLookup("https://u:p@airflow.example.com", token="JWT")


def test_messages_show_the_url_masked(caplog: pytest.LogCaptureFixture) -> None:
    url = "http://airflow:8080/?key=abc"  # a short key: masked, not refused
    lookup = AirflowApiLookup(url, token="JWT")
    assert "abc" not in lookup.shown
    with caplog.at_level(logging.WARNING, logger="ephemeral.reaper"):
        AirflowApiLookup(url, token="JWT")
    assert "EPHEMERAL_AIRFLOW_URL" in caplog.text
    assert "key=abc" not in caplog.text


def test_a_pass_that_cannot_ask_airflow_keeps_the_cluster_and_fails(fake: Listing) -> None:
    result = CliRunner().invoke(cli_main.app, ["reap", "--airflow-url", "http://127.0.0.1:1",
                                               "--json"])
    assert result.exit_code == 1, result.output
    [decision] = json.loads(result.stdout)
    assert decision["delete"] is False
    assert "could not ask Airflow" in decision["reason"]
    assert "unreachable" in decision["error"]
    assert len(fake.list_owned()) == 1


class Hanging(InMemoryBackend):
    """Its first cluster expired and its deletion never finishes; its second listed as being
    deleted since an hour (someone's earlier delete)."""

    def list_owned(self, selector=None):  # type: ignore[no-untyped-def]
        from ephemeral.backends.base import Deleting

        first, second = super().list_owned(selector)
        return [first.model_copy(update={"expires_at": "2026-01-01T00:00:00Z"}),
                second.model_copy(update={"deleting": Deleting(
                    since="2026-01-01T00:00:00Z", finalizers=("example.com/hold",))})]

    def owned(self, handle, selector):  # type: ignore[no-untyped-def]
        return handle

    def start_delete(self, target):  # type: ignore[no-untyped-def]
        from ephemeral.backends.base import Deletion
        from ephemeral.errors import TeardownIncomplete

        def hang(deadline: float) -> None:
            raise TeardownIncomplete(target.name, ["RayCluster/x (terminating)"])
        return Deletion(target.name, hang)


def test_a_deletion_not_done_within_the_budget_fails_the_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Hanging()
    for run in ("r1", "r2"):
        backend.create(RAY, identity=ClusterIdentity(spec_name=RAY.spec.name, dag_id="d",
                                                     run_id=run, task_id="t",
                                                     instance=current_instance()))
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)
    result = CliRunner().invoke(cli_main.app, ["reap", "--delete-budget", "0"])
    assert result.exit_code == 1, result.output
    failed, deleting = result.stdout.splitlines()
    assert failed.startswith("FAILED to delete")
    assert "not gone within the pass's 0s" in failed
    assert deleting.startswith("deleting")
    assert "finalizers example.com/hold" in deleting
    assert "is a finalizer stuck?" in deleting


@pytest.mark.parametrize("budget", ["nan", "-1", "inf"])
def test_a_delete_budget_that_is_no_duration_is_refused(fake: Listing, budget: str) -> None:
    result = CliRunner().invoke(cli_main.app, ["reap", "--delete-budget", budget, "--json"])
    assert result.exit_code == 2, result.output
    assert "--delete-budget" in json.loads(result.stdout)["message"]
    assert fake.listed == 0


@pytest.mark.parametrize(("backend_name", "root", "warned"), [
    ("kubernetes", "file:///tmp/ephemeral/artifacts", True),
    ("kubernetes", "s3://bucket/ephemeral", False),
    ("local", "file:///tmp/ephemeral/artifacts", False),
])
def test_a_kubernetes_reaper_on_its_own_disk_warns(fake: Listing, backend_name: str, root: str,
                                                   warned: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaper pod without the deployment's artifact store records reaped clusters' report
    parts, and links them in notifications, on a disk that dies with the pod: it says so."""
    monkeypatch.setattr(fake, "name", backend_name)
    result = CliRunner().invoke(cli_main.app, ["reap", "--dry-run"],
                                env={"EPHEMERAL_ARTIFACT_ROOT": root,
                                     "EPHEMERAL_AIRFLOW_URL": ""})
    assert result.exit_code == 0, result.output
    assert ("warning: EPHEMERAL_ARTIFACT_ROOT is" in result.stderr) is warned
    assert "would delete" not in result.stdout


@pytest.mark.parametrize(("airflow_ran", "explicit", "code"), [
    (False, False, 1),  # a cron reaper without the deployment's $AIRFLOW_HOME
    (True, False, 0),  # another Airflow home sharing this ephemeral home: each its own reaper
    (False, True, 0),  # an instance someone set is a deployment's
])
def test_a_reaper_of_no_instance_says_whose_clusters_it_passed_over(
        airflow_ran: bool, explicit: bool, code: int, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another instance's expired cluster and none of this one's: "no clusters" with exit 0
    let a cron reaper that derived an instance of no deployment reap nothing, for good."""
    backend = InMemoryBackend()
    backend.create(RAY, identity=ClusterIdentity(spec_name=RAY.spec.name, dag_id="d",
                                                 run_id="r", task_id="t", instance="prod"))
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)
    home = tmp_path / "airflow"
    home.mkdir()
    if airflow_ran:
        (home / "airflow.cfg").write_text("[core]\n")
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    monkeypatch.delenv("AIRFLOW_CONFIG", raising=False)
    if explicit:
        monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    for args in (["reap", "--dry-run"], ["reap", "--dry-run", "--json"]):
        result = CliRunner().invoke(cli_main.app, args, env={"EPHEMERAL_AIRFLOW_URL": ""})
        assert result.exit_code == code, result.output
        assert "prod has some here" in result.stderr
        assert (f"derived from the Airflow home {home}" in result.stderr) is (code == 1)
    assert len(backend.list_owned(OwnerSelector(all_instances=True))) == 1
