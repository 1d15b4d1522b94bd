"""The clients that send Airflow credentials (the reaper's ``AirflowApiLookup``, the dev stack's
``AirflowApi``) send them only to the configured URL: a redirect to another host is refused,
not followed (urllib's default handler copies ``Authorization`` along), and a URL that would
carry them in clear text off this host is refused before any request, naming the setting."""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ephemeral.devstack.api import AirflowApi
from ephemeral.errors import EphemeralError
from ephemeral.reaper import AirflowApiLookup
from tests.json_http import serving

Seen = list[tuple[str, str, str | None]]


@pytest.fixture
def redirecting() -> Iterator[tuple[str, Seen]]:
    """An API that answers every request with a 302 to a collector on another address, which
    records what reaches it."""
    seen: Seen = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            body = json.dumps({"access_token": "T", "state": "success"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _any

        def log_message(self, *_args: Any) -> None:
            pass

    with serving(Collector, "127.0.0.2") as target:

        class Api(http.server.BaseHTTPRequestHandler):
            collector = target

            def _any(self) -> None:
                self.send_response(302)
                self.send_header("Location", f"{self.collector}/steal{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _any

            def log_message(self, *_args: Any) -> None:
                pass

        with serving(Api) as api:
            yield api, seen


def test_the_reapers_token_does_not_follow_a_redirect(redirecting: tuple[str, Seen]) -> None:
    api, seen = redirecting
    lookup = AirflowApiLookup(api, token="REAPER-JWT-abc123")
    with pytest.raises(EphemeralError, match="redirect") as exc:
        lookup("train", "r1")
    assert "REAPER-JWT" not in str(exc.value)
    assert seen == []


def test_the_reapers_password_does_not_follow_a_redirect(redirecting: tuple[str, Seen]) -> None:
    api, seen = redirecting
    lookup = AirflowApiLookup(api, username="reaper", password="PW-123")
    with pytest.raises(EphemeralError, match="redirect"):
        lookup("train", "r1")
    assert seen == []


def test_the_dev_stacks_client_does_not_follow_a_redirect(redirecting: tuple[str, Seen]) -> None:
    api, seen = redirecting

    class Client(AirflowApi):
        url = api  # type: ignore[assignment]
        password = "admin-pw"  # type: ignore[assignment]

    client = Client()
    client._token = "STACK-JWT"
    status, _ = client.request("GET", "/api/v2/dags/x")
    assert status == 302
    assert seen == []


@pytest.mark.parametrize("url", ["http://airflow:8080", "http://10.0.0.5:8080"])
@pytest.mark.parametrize("credentials", [{"token": "JWT-SECRET"},
                                         {"username": "reaper", "password": "PW-SECRET"}])
def test_credentials_in_clear_text_off_this_host_are_warned_of(
        url: str, credentials: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    """Warned, not refused: the reaper CronJob reaches Airflow through an in-cluster Service,
    plain http by design; the warning names the setting, never the secret."""
    import logging

    with caplog.at_level(logging.WARNING, logger="ephemeral.reaper"):
        assert AirflowApiLookup(url, **credentials).base_url == url
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "EPHEMERAL_AIRFLOW_URL" in said
    assert "https" in said
    assert "SECRET" not in said


@pytest.mark.parametrize("url", ["https://airflow.example.com", "http://127.0.0.1:8080",
                                 "http://localhost:8080", "http://[::1]:8080"])
def test_https_or_this_host_carries_credentials(url: str) -> None:
    assert AirflowApiLookup(url, token="JWT").base_url == url


def test_without_credentials_any_url_is_asked() -> None:
    assert AirflowApiLookup("http://airflow:8080").base_url == "http://airflow:8080"


def test_the_stack_refuses_to_send_its_password_off_this_host() -> None:
    class Client(AirflowApi):
        url = "http://airflow.example.com:8080"  # type: ignore[assignment]
        password = "admin-PW-SECRET"  # type: ignore[assignment]

    with pytest.raises(RuntimeError, match="https") as exc:
        Client().token()
    assert "SECRET" not in str(exc.value)
