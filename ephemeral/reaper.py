"""The reaper: the last line of defence against leaked clusters.

Airflow 3.3 never runs the teardown of a failed setup, and skips teardowns when dagrun_timeout
fires or a run is marked failed while its setup runs. The reaper deletes, among the clusters a
backend owns for this deployment instance (and only those):

- every cluster whose ``expires-at`` has passed (the spec's ``lifetime.ttl``);
- a cluster made by a DAG run that has been finished for longer than ``grace`` seconds;
- a cluster whose run cannot be found only at its expiry.

It never deletes a cluster whose run is still running and unexpired. Run states come from a
``RunLookup``: Airflow's REST API (the CLI), or the task SDK inside Airflow (dags/reap_orphans.py).
When a lookup knows a run's state but not when it ended, the reaper remembers when it first saw
it finished (a small JSON file), so the grace period still holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ephemeral.backends.base import ClusterBackend, ClusterHandle
from ephemeral.errors import EphemeralError
from ephemeral.specs.identity import PREFIX, parse_utc, utc_text

FINISHED = {"success", "failed"}
DEFAULT_GRACE_SECONDS = 600


@dataclass(frozen=True)
class RunInfo:
    state: str
    end_date: datetime | None = None


RunLookup = Callable[[str, str], "RunInfo | None"]


@dataclass(frozen=True)
class Decision:
    cluster: str
    delete: bool
    reason: str
    deleted: bool = False
    error: str = ""


class FinishedMemory:
    """When each run was first seen finished, for lookups that do not know end dates."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: dict[str, str] = {}
        if path and path.exists():
            self._seen = json.loads(path.read_text())

    def first_seen(self, key: str, now: datetime) -> datetime:
        if key not in self._seen:
            self._seen[key] = utc_text(now)
        return parse_utc(self._seen[key])

    def forget(self, key: str) -> None:
        """The run is unfinished again (cleared): its grace period starts anew when it ends."""
        self._seen.pop(key, None)

    def save(self, keep: set[str]) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({k: v for k, v in self._seen.items() if k in keep}))
            tmp.replace(self.path)  # atomic: the CLI and the DAG may both reap


def judge(handle: ClusterHandle, *, lookup: RunLookup | None, now: datetime, grace: float,
          memory: FinishedMemory) -> Decision:
    expires = parse_utc(handle.expires_at)
    if now >= expires:
        return Decision(handle.name, True, f"expired at {handle.expires_at} (spec lifetime.ttl)")
    dag_id = handle.annotations.get(PREFIX + "dag-id")
    run_id = handle.annotations.get(PREFIX + "run-id")
    if not dag_id or not run_id:
        return Decision(handle.name, False, f"no owning DAG run; kept until {handle.expires_at}")
    if lookup is None:
        return Decision(handle.name, False, f"run states unknown (no Airflow to ask); kept until "
                                            f"{handle.expires_at}")
    try:
        run = lookup(dag_id, run_id)
    except EphemeralError as err:
        return Decision(handle.name, False, f"could not ask Airflow ({err}); kept")
    if run is None:
        return Decision(handle.name, False, f"run {dag_id}/{run_id} not found; kept until "
                                            f"{handle.expires_at}")
    key = f"{dag_id}\x1f{run_id}"
    if run.state not in FINISHED:
        memory.forget(key)
        return Decision(handle.name, False, f"run {dag_id}/{run_id} is {run.state}")
    ended = run.end_date or memory.first_seen(key, now)
    age = (now - ended).total_seconds()
    if age > grace:
        return Decision(handle.name, True, f"run {dag_id}/{run_id} {run.state} {age:.0f}s ago "
                                           f"(grace {grace:.0f}s)")
    return Decision(handle.name, False, f"run {dag_id}/{run_id} {run.state} {age:.0f}s ago; "
                                        f"within the {grace:.0f}s grace period")


def reap(backend: ClusterBackend, *, lookup: RunLookup | None, grace: float = DEFAULT_GRACE_SECONDS,
         dry_run: bool = False, now: datetime | None = None,
         memory_file: Path | None = None) -> list[Decision]:
    """Judge every owned cluster and delete the orphans (unless ``dry_run``)."""
    now = now or datetime.now(UTC)
    memory = FinishedMemory(memory_file)
    decisions = []
    for handle in backend.list_owned():
        try:
            d = judge(handle, lookup=lookup, now=now, grace=grace, memory=memory)
        except Exception as err:  # noqa: BLE001 - one bad lookup must not stop the others
            decisions.append(Decision(handle.name, False, "could not be judged; kept",
                                      error=f"{type(err).__name__}: {err}"))
            continue
        if d.delete and not dry_run:
            try:
                backend.delete(handle, wait=True)
                d = Decision(d.cluster, True, d.reason, deleted=True)
            except EphemeralError as err:
                d = Decision(d.cluster, True, d.reason, error=str(err))
        decisions.append(d)
    live_runs = {f"{h.annotations.get(PREFIX + 'dag-id')}\x1f{h.annotations.get(PREFIX + 'run-id')}"
                 for h in backend.list_owned()}
    memory.save(live_runs)
    return decisions


class AirflowApiLookup:
    """Run states from Airflow's REST API v2. Credentials come from the environment (a token,
    or a user and password exchanged for one), never from files in the repository."""

    def __init__(self, base_url: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._credentials = (username, password) if username and password else None
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, str] | None = None,
                 auth: bool = True) -> tuple[int, object]:
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if auth and (token := self.token()):
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base_url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body else None)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, None
        except (urllib.error.URLError, OSError) as err:
            raise EphemeralError(f"Airflow API at {self.base_url} unreachable: {err}") from err

    def token(self) -> str | None:
        if self._token is None and self._credentials:
            user, password = self._credentials
            status, body = self._request("POST", "/auth/token",
                                         {"username": user, "password": password}, auth=False)
            if status not in (200, 201) or not isinstance(body, dict):
                raise EphemeralError(f"Airflow API refused the credentials (HTTP {status})")
            self._token = str(body["access_token"])
        return self._token

    def __call__(self, dag_id: str, run_id: str) -> RunInfo | None:
        from urllib.parse import quote

        status, body = self._request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/"
                                            f"{quote(run_id, safe='')}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise EphemeralError(f"Airflow API answered HTTP {status} for {dag_id}/{run_id}")
        end = body.get("end_date")
        ended = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else None
        return RunInfo(state=str(body.get("state")), end_date=ended)
