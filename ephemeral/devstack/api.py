"""Airflow's REST API v2 as the local stack's users and tests call it: a JWT from the simple
auth manager's ``/auth/token``, then bearer requests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

FINISHED = {"success", "failed"}


class AirflowApi:
    """A client for one api-server; subclasses give ``url``, ``username`` and ``password``."""

    _token: str | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    username: str = "admin"

    @property
    def password(self) -> str:
        raise NotImplementedError

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                auth: bool = True, timeout: float = 120) -> tuple[int, Any]:
        """One call; a GET that times out is tried again once (a busy machine's api-server
        answers late, not wrongly)."""
        try:
            return self._request(method, path, body, auth, timeout)
        except TimeoutError:
            if method != "GET":
                raise
            return self._request(method, path, body, auth, timeout)

    def _request(self, method: str, path: str, body: dict[str, Any] | None, auth: bool,
                 timeout: float) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def token(self) -> str:
        """A JWT for the admin user (valid for ``[api_auth] jwt_expiration_time``, a day)."""
        if self._token is None:
            status, body = self.request("POST", "/auth/token",
                                        {"username": self.username, "password": self.password},
                                        auth=False)
            if status not in (200, 201):
                raise RuntimeError(f"Airflow refused the login: HTTP {status} {body}")
            self._token = str(body["access_token"])
        return self._token

    def healthy(self) -> bool:
        try:
            status, _ = self.request("GET", "/api/v2/monitor/health", auth=False, timeout=5)
        except OSError:
            return False
        return status == 200

    def wait_parsed(self, dag_id: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.request("GET", f"/api/v2/dags/{dag_id}")[0] == 200:
                return
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout}s")

    def unpause(self, dag_id: str) -> None:
        status, body = self.request("GET", f"/api/v2/dags/{dag_id}")
        if status == 200 and body.get("is_paused") is False:
            return
        status, body = self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        if status != 200:
            raise RuntimeError(f"unpause {dag_id}: HTTP {status} {body}")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None,
                logical_date: str | None = None) -> str:
        """Unpause the DAG and start a run (what the trigger form does); the run's id.
        ``logical_date="now"`` gives the run the current time as its logical date, as the
        form does by default (templates that use ``ts``/``ds`` need one)."""
        if logical_date == "now":
            logical_date = datetime.now(UTC).isoformat()
        self.wait_parsed(dag_id)
        self.unpause(dag_id)
        status, body = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                                    {"logical_date": logical_date, "conf": conf or {}})
        if status != 200:
            raise RuntimeError(f"trigger {dag_id}: HTTP {status} {body}")
        return str(body["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}")
        if status != 200:
            raise RuntimeError(f"run {dag_id}/{run_id}: HTTP {status} {body}")
        return dict(body)

    def wait_finished(self, dag_id: str, run_id: str, timeout: float = 600.0) -> str:
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state = str(self.run(dag_id, run_id)["state"])
            if state in FINISHED:
                return state
            time.sleep(2)
        raise TimeoutError(f"{dag_id}/{run_id} still {state} after {timeout}s: "
                           + json.dumps(self.task_instances(dag_id, run_id), indent=1))

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """Task instances by task id (``id[i]`` for map index i)."""
        status, body = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances")
        if status != 200:
            raise RuntimeError(f"task instances: HTTP {status} {body}")
        return {ti["task_id"] + ("" if ti["map_index"] < 0 else f"[{ti['map_index']}]"): ti
                for ti in body["task_instances"]}

    def tries(self, dag_id: str, run_id: str, task_id: str,
              map_index: int = -1) -> list[dict[str, Any]]:
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}"
                + (f"/{map_index}" if map_index >= 0 else "") + "/tries")
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"tries: HTTP {status} {body}")
        return list(body["task_instances"])

    def links(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        status, body = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}/links")
        if status != 200:
            raise RuntimeError(f"links: HTTP {status} {body}")
        return dict(body["extra_links"])
