"""What the reaper takes from Airflow's REST API as an answer about a cluster's run: only
Airflow saying it has no such run (its own 404, naming the run) makes the run deleted, and only
an answer about the run asked for tells its state. A run id the API cannot route (one with '/',
allowed by a custom ``allowed_run_id_pattern``: ``{"error": "API route not found"}``), a proxy's
page, or an answer about another run is an error: the cluster is kept, the pass fails. A token
the reaper logged in for that expires is renewed with the user's password."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import unquote

import pytest

from ephemeral.errors import EphemeralError
from ephemeral.reaper import AirflowApiLookup
from tests.json_http import JsonHandler, serving

RUNS = "/api/v2/dags/train/dagRuns/"


class Airflow(JsonHandler):
    """Airflow 3.3's answers, as its api-server gives them (uvicorn decodes %2F before routing,
    so a run id with '/' meets no route)."""

    tokens: list[str] = []  # issued; only the newest is accepted (the others expired)

    def _answer(self, status: int, body: object, page: bool = False) -> None:
        if not page:
            return self._send(status, body)
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", "22")
        self.end_headers()
        self.wfile.write(b"<html>Not Found</html>")
        return None

    def do_POST(self) -> None:  # /auth/token
        self.tokens.append(f"jwt-{len(self.tokens) + 1}")
        self._answer(201, {"access_token": self.tokens[-1]})

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.tokens[-1:] and self.tokens[-1]}":
            return self._answer(401, {"detail": "Not authenticated"})
        if not self.path.startswith(RUNS):
            return self._answer(404, {"detail": "Not Found"})
        run_id = unquote(self.path[len(RUNS):])
        if "/" in run_id:
            return self._answer(404, {"error": "API route not found"})
        if run_id == "behind-a-proxy":
            return self._answer(404, None, page=True)
        if run_id.startswith("gone"):
            return self._answer(404, {"detail": "The DagRun with dag_id: `train` and run_id: "
                                                f"`{run_id}` was not found"})
        answered = "scheduled__other" if run_id == "misrouted" else run_id
        return self._answer(200, {"dag_id": "train", "dag_run_id": answered,
                                  "state": "running", "end_date": None})


@pytest.fixture
def airflow() -> Iterator[str]:
    Airflow.tokens = []
    with serving(Airflow) as url:
        yield url


def lookup(url: str) -> AirflowApiLookup:
    found = AirflowApiLookup(url, username="reaper", password="pw", instance="test")
    found._same_deployment = True  # (the plugin's own check: tests/airflow/live)
    return found


@pytest.mark.parametrize("run_id", ["gone", "gone:2026-12-02T10:00:00+00:00", "gone ?#%"])
def test_airflows_own_not_found_is_a_deleted_run(airflow: str, run_id: str) -> None:
    assert lookup(airflow)("train", run_id) is None


@pytest.mark.parametrize(("run_id", "said"), [
    ("team/exp-1", "HTTP 404 for train/team/exp-1: API route not found"),
    ("behind-a-proxy", "HTTP 404 for train/behind-a-proxy"),
    ("misrouted", "another run than train/misrouted: train/scheduled__other")])
def test_any_other_answer_is_no_answer(airflow: str, run_id: str, said: str) -> None:
    with pytest.raises(EphemeralError) as err:
        lookup(airflow)("train", run_id)
    assert said in str(err.value)


def test_a_run_is_read_from_an_answer_about_it(airflow: str) -> None:
    run = lookup(airflow)("train", "manual__x")
    assert run is not None
    assert (run.state, run.end_date) == ("running", None)


def test_an_expired_token_is_renewed_with_the_password(airflow: str) -> None:
    asking = lookup(airflow)
    assert asking("train", "r1") is not None
    Airflow.tokens.append("issued-elsewhere")  # the reaper's token expires
    assert asking("train", "r2") is not None
    assert Airflow.tokens == ["jwt-1", "issued-elsewhere", "jwt-3"]  # logged in once more


def test_a_token_given_alone_says_it_expired(airflow: str) -> None:
    asking = AirflowApiLookup(airflow, token="jwt-old", instance="test")
    asking._same_deployment = True
    with pytest.raises(EphemeralError, match=r"HTTP 401.*AIRFLOW_API_TOKEN expires"):
        asking("train", "r1")


@pytest.mark.parametrize(("given", "said"), [
    ({"username": "reaper"}, "EPHEMERAL_AIRFLOW_USER is set without EPHEMERAL_AIRFLOW_PASSWORD"),
    ({"password": "pw"}, "EPHEMERAL_AIRFLOW_PASSWORD is set without EPHEMERAL_AIRFLOW_USER"),
    ({}, "none are set")])
def test_a_401_without_credentials_does_not_blame_a_token(
        airflow: str, given: dict[str, str], said: str, caplog: pytest.LogCaptureFixture) -> None:
    """Half a user/password pair sent nothing: the refusal says which half is missing, not
    that a token expired."""
    asking = AirflowApiLookup(airflow, instance="test", **given)
    asking._same_deployment = True
    with pytest.raises(EphemeralError) as err:
        asking("train", "r1")
    assert f"HTTP 401 for train/r1: no credentials were sent ({said})" in str(err.value)
    assert "expires" not in str(err.value)
    assert (said in caplog.text) is bool(given)  # warned at once, before any request


def test_credentials_without_an_airflow_are_said_to_do_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaper given a user (and password) but no Airflow URL judges no run's end: it says so
    rather than drop them; given a password without a user, it warns of the half pair."""
    from typer.testing import CliRunner

    from ephemeral.cli import main

    monkeypatch.delenv("EPHEMERAL_AIRFLOW_URL", raising=False)
    monkeypatch.setenv("EPHEMERAL_AIRFLOW_USER", "reaper")
    done = CliRunner().invoke(main.app, ["reap", "--dry-run", "--json"])
    assert done.exit_code == 0, done.output
    assert ("warning: EPHEMERAL_AIRFLOW_USER is set but does nothing: no Airflow URL is set"
            in " ".join(done.stderr.split()))
    done = CliRunner().invoke(main.app, ["reap", "--dry-run", "--json", "--grace", "60"])
    assert "--grace has no effect without --airflow-url" in " ".join(done.stderr.split())
