"""The reaper asks the Airflow it is given which deployment it is (``GET /ephemeral/deployment``,
served by this package's plugin) before it takes that Airflow's word that a run ended: staging's
URL in production's reaper told of runs with production's ids (scheduled runs share them) that
ended, and the reaper deleted production's running clusters."""

from __future__ import annotations

import asyncio
import http.server
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pytest
from typer.testing import CliRunner

from ephemeral.airflow import deployment
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.cli import main as cli_main
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import current_instance
from tests.conftest import small
from tests.json_http import serving

RAY = small("ray/adhoc-cpu", replicas=1)
RUN = ("train", "scheduled__2026-11-30T00:00:00+00:00")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> InMemoryBackend:
    backend = InMemoryBackend(ready_after_probes=1)
    backend.create(RAY, identity=ClusterIdentity(spec_name=RAY.spec.name, dag_id=RUN[0],
                                                 run_id=RUN[1], task_id="create",
                                                 instance=current_instance()))
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)
    return backend


def airflow(deployment_answer: tuple[int, dict[str, str]]) -> Iterator[str]:
    """An Airflow API whose every run ended an hour ago, and whose deployment endpoint gives
    ``deployment_answer``."""
    ended = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/ephemeral/deployment" and deployment_answer[0] == 299:
                page = b"<!doctype html><title>Airflow</title>"  # the UI's catch-all route
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            if self.path == "/ephemeral/deployment":
                status, body = deployment_answer
            elif "/dagRuns/" in self.path:  # (Airflow names the run it answers for)
                dag_id, run_id = (unquote(p) for p in self.path.split("/")[4::2])
                status, body = 200, {"dag_id": dag_id, "dag_run_id": run_id, "state": "success",
                                     "end_date": ended}
            else:
                status, body = 200, {"dag_id": unquote(self.path.split("/")[4]),
                                     "is_paused": False}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: Any) -> None:
            pass

    with serving(Api) as url:
        yield url


def reap(url: str) -> tuple[int, list[dict[str, Any]]]:
    result = CliRunner().invoke(cli_main.app, ["reap", "--airflow-url", url, "--grace", "0",
                                               "--json"], env={"AIRFLOW_API_TOKEN": "JWT"})
    return result.exit_code, json.loads(result.stdout)


def test_another_deployments_airflow_deletes_nothing_and_fails(fake: InMemoryBackend) -> None:
    for url in airflow((200, {"instance": "staging"})):
        code, decisions = reap(url)
    assert code == 1
    assert fake.list_owned(), "a cluster was deleted on another deployment's word"
    (d,) = decisions
    assert not d["delete"]
    assert "'staging'" in d["error"]
    assert repr(current_instance()) in d["error"]
    assert "EPHEMERAL_AIRFLOW_URL" in d["error"]


def test_this_deployments_airflow_is_believed(fake: InMemoryBackend) -> None:
    for url in airflow((200, {"instance": current_instance()})):
        code, decisions = reap(url)
    assert code == 0, decisions
    assert not fake.list_owned()
    assert decisions[0]["deleted"]


@pytest.mark.parametrize("answer", [(404, {"detail": "Not Found"}), (299, {})],
                         ids=["404", "the UI's page"])
def test_an_airflow_that_cannot_say_is_believed_as_before(fake: InMemoryBackend,
                                                          caplog: pytest.LogCaptureFixture,
                                                          answer: tuple[int, dict[str, str]]
                                                          ) -> None:
    """Without the plugin, Airflow 3.3's UI answers the path with its page (200, HTML)."""
    for url in airflow(answer):
        code, _ = reap(url)
    assert code == 0
    assert not fake.list_owned()
    assert "cannot say which deployment it is" in caplog.text


def test_an_airflow_whose_instance_is_refused_fails_the_pass(fake: InMemoryBackend) -> None:
    for url in airflow((500, {"error": "EPHEMERAL_INSTANCE: 'Prod' must be ..."})):
        code, decisions = reap(url)
    assert code == 1
    assert fake.list_owned()
    assert "EPHEMERAL_INSTANCE" in decisions[0]["error"]


def _call(path: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    asyncio.run(deployment.app({"type": "http", "method": method, "path": path}, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_the_api_server_tells_its_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod-eu")
    assert _call("/ephemeral/deployment") == (200, {"instance": "prod-eu"})
    assert _call("/ephemeral/other")[0] == 404
    assert _call("/ephemeral/deployment", "POST")[0] == 404
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "Not An Instance")
    status, body = _call("/ephemeral/deployment")
    assert status == 500
    assert "EPHEMERAL_INSTANCE" in body["error"]
