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
ENDED = {"success", "failed", "upstream_failed", "skipped", "removed"}  # a task's last states


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
        from ephemeral.backends.http import open_no_redirect, plain_http_problem

        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        elif body is not None and "password" in body and (
                problem := plain_http_problem(self.url, "the stack's url",
                                              "the admin user's password")):
            raise RuntimeError(problem)
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:  # never after a redirect: it would carry the token to wherever it points
            with open_no_redirect(req, timeout=timeout) as resp:
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

    def check_alive(self) -> None:
        """Raise when the deployment's processes died (a launcher knows them; a bare client
        does not): waits call it so a crashed component fails them at once."""

    def logs(self, *names: str, tail: int = 30) -> str:
        """The tails of the components' logs, for an error message (a launcher has them)."""
        del names, tail
        return ""

    def healthy(self) -> bool:
        try:
            status, _ = self.request("GET", "/api/v2/monitor/health", auth=False, timeout=5)
        except OSError:
            return False
        return status == 200

    def wait_parsed(self, dag_id: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.request("GET", f"/api/v2/dags/{dag_id}")[0] == 200:
                return
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout}s\n" + self.logs())

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

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.run(dag_id, run_id)["state"])

    def wait_finished(self, dag_id: str, run_id: str, timeout: float = 600.0) -> str:
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            self.check_alive()
            state = self.run_state(dag_id, run_id)
            if state in FINISHED:
                return state
            time.sleep(2)
        raise TimeoutError(f"{dag_id}/{run_id} still {state} after {timeout}s: "
                           + json.dumps(self.task_instances(dag_id, run_id), indent=1)
                           + "\n" + self.logs())

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

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        status, body = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}"
                   f"/xcomEntries/{key}?deserialize=true")
        if status != 200:
            raise RuntimeError(f"xcom {task_id}.{key}: HTTP {status} {body}")
        return body["value"]

    def task_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        status, body = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}")
        if status != 200:
            raise RuntimeError(f"task {dag_id}/{run_id}/{task_id}: HTTP {status} {body}")
        return None if body["state"] is None else str(body["state"])

    def wait_task(self, dag_id: str, run_id: str, task_id: str, states: set[str],
                  timeout: float = 300.0, every: float = 0.2) -> str:
        """Until the task is in one of ``states``; a task that ends elsewhere fails at once."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            self.check_alive()
            state = self.task_state(dag_id, run_id, task_id)
            if state in states:
                return state
            if state in ENDED - states:  # it will not get there: fail now, not at the timeout
                raise RuntimeError(f"{dag_id}/{run_id}/{task_id} ended {state} before reaching "
                                   f"{states}:\n" + json.dumps(self.task_instances(
                                       dag_id, run_id), indent=1)[:4000])
            time.sleep(every)
        raise TimeoutError(f"{dag_id}/{run_id}/{task_id} still {state}, not in {states} after "
                           f"{timeout}s\n" + self.logs())

    def _patch(self, path: str, body: dict[str, Any], what: str) -> None:
        """A PATCH as a user clicking again does it: SQLite under a busy host sometimes answers
        "database is locked" (HTTP 500) when four components write at once."""
        for _ in range(3):
            status, answer = self.request("PATCH", path, body)
            if status != 500:
                break
            time.sleep(0.5)
        if status != 200:
            raise RuntimeError(f"{what}: HTTP {status} {answer}")

    def mark_run(self, dag_id: str, run_id: str, state: str) -> None:
        """What the UI's "mark run as failed/success" does."""
        self._patch(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}", {"state": state},
                    f"mark {dag_id}/{run_id} {state}")

    def mark_task(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        self._patch(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}",
                    {"new_state": state}, f"mark {dag_id}/{run_id}/{task_id} {state}")
