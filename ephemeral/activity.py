"""Is a cluster busy? What its engines say, through the HTTP APIs its backend gives access to.

Busy means any of:

- Ray: a job PENDING or RUNNING in the Jobs API list (``GET /api/jobs/``: submitted jobs and
  drivers connected with ``ray.init``);
- Spark: an application or driver other than the Connect server active on the master
  (``GET /json/``: ``activeapps``, ``activedrivers``); and an open Connect session other than
  the readiness probe's, or a Connect operation not yet finished, from the Connect server's own
  UI (Spark 4's REST API ``/api/v1/applications/<id>/connect/sessions`` and ``/operations``).
  The backend gives that UI (``Access.connect_ui``: on the local backend the server's next
  port, on Kubernetes the ``<name>-connect`` Service's 4040, reached as the master UI is). In
  operator mode (a spark-operator SparkConnect: no master) that UI is the cluster's Spark UI
  and those sessions and operations are all its work (spark-submit has nowhere to go); the
  server's application start is when it became ready. The executors a Connect server holds
  are no sign of work: it keeps them 30 s after their last task, longer with shuffle data.

With it the engines report when the work they know of last ended (a Ray job's ``end_time``, a
Spark application's start plus duration, a Connect session's or operation's end) and when the
cluster became ready (Ray: its last node's start, the state API's ``start_time_ms``; Spark with
Connect: the Connect server's registration with the master): the reaper starts the idle clock
from these. An API that does not answer (a Connect UI included, or one the backend gives no
way to) makes the answer unknown, never idle; so does a cluster that has run nothing yet and
is not known to be up (Ray: no node start from the state API; Spark: fewer ALIVE workers at
the master than it has), since nothing but its creation would then say when it became ready.
Work listed without an end (a finished Ray job without ``end_time``) leaves the clock to the
reaper's sightings (``sightings_only``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ephemeral.backends.base import Access, ClusterBackend, ClusterHandle
from ephemeral.backends.http import get_json

RAY_BUSY = {"PENDING", "RUNNING"}
CONNECT_DONE = {"FINISHED", "CLOSED", "CANCELED", "FAILED", "TIMEDOUT"}
PROBE_USER = "ephemeral-probe"  # the readiness probes' Connect sessions are not work
TIMEOUT = 5.0
CONNECT_TIMEOUT = 20.0  # the Connect server's first REST call starts Jersey: seconds on a busy host


@dataclass(frozen=True)
class Activity:
    busy: bool | None
    """None: the cluster's APIs did not answer, so it cannot be called idle."""
    what: str
    """What was found: "1 Ray job running", "no Ray job running", ..."""
    last_end: datetime | None = None
    """When the last piece of work the engines know of ended."""
    nodes_up: datetime | None = None
    """When the last node of the cluster started (Ray), a lower bound of its readiness."""
    details: list[str] = field(default_factory=list)
    sightings_only: bool = False
    """Some work tells no end (a Ray job listed without ``end_time``): neither ``last_end`` nor
    the cluster's age says how long it has been idle, only the reaper's own sightings do."""
    nodes_alive: int | None = None
    """How many of the cluster's nodes are ALIVE (Ray's state API); None when not asked."""
    history_from: datetime | None = None
    """Since when the engine knows its work: its head's start (Ray's state API). A head that
    restarted (GCS without fault tolerance) lost the jobs before, so the idle clock starts
    there at the earliest, whatever readiness said: a job that died with the old head was
    work the reaper may never have seen."""


def _ms(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, UTC) if isinstance(value, int | float) and \
        value > 0 else None


def _latest(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return max(known) if known else None


def ray_activity(access: Access) -> Activity:
    """Busy while a Ray job is pending or running."""
    jobs = get_json(f"{access.dashboard}/api/jobs/", timeout=TIMEOUT, headers=access.headers,
                    verify=access.verify, proxy=access.proxy)
    if not isinstance(jobs, list):
        return Activity(None, "the Ray Jobs API did not answer")
    running = [j for j in jobs if isinstance(j, dict) and j.get("status") in RAY_BUSY]
    last_end = _latest(*(_ms(j.get("end_time")) for j in jobs if isinstance(j, dict)))
    nodes = get_json(f"{access.dashboard}/api/v0/nodes?limit=1000&detail=true", timeout=TIMEOUT,
                     headers=access.headers, verify=access.verify, proxy=access.proxy)
    rows = (((nodes or {}).get("data") or {}).get("result") or {}).get("result") \
        if isinstance(nodes, dict) else None
    nodes_up = _latest(*(_ms(n.get("start_time_ms")) for n in rows or []
                         if isinstance(n, dict) and n.get("state") == "ALIVE"))
    listed = [j for j in jobs if isinstance(j, dict)]
    if not listed and nodes_up is None:
        # Nothing ran and no node start is known: its age would be all the reaper could count.
        return Activity(None, "no Ray job ran yet and the state API gave no node start")
    # A finished job without an end time says nothing of when the cluster fell idle.
    unended = any(j.get("status") not in RAY_BUSY and _ms(j.get("end_time")) is None
                  for j in listed)
    what = (f"{len(running)} Ray job(s) pending or running" if running
            else "no Ray job pending or running")
    ids = [str(j.get("submission_id") or j.get("job_id")) for j in running]
    alive = [n for n in rows or [] if isinstance(n, dict) and n.get("state") == "ALIVE"]
    head_up = _latest(*(_ms(n.get("start_time_ms")) for n in alive if n.get("is_head_node")))
    return Activity(bool(running), what, last_end, nodes_up, ids, sightings_only=unended,
                    nodes_alive=len(alive) if rows is not None else None,
                    history_from=head_up)


Records = list[dict[str, Any]]


def connect_server(access: Access) -> tuple[dict[str, Any], Records, Records]:
    """The Connect server's application, sessions and operations (the readiness probes'
    excluded), from the REST API of its UI (``access.connect_ui``): the one reader of them, for
    the idle rule and the run report. Raises LookupError when the backend gives no way to that
    UI or it does not answer."""
    ui = access.connect_ui
    if ui is None:
        raise LookupError("the backend gives no way to the Spark Connect server's UI")
    headers = dict(access.headers)

    def ask(path: str) -> Any:
        return get_json(f"{ui}{path}", timeout=CONNECT_TIMEOUT, headers=headers,
                        verify=access.verify, proxy=access.proxy)

    apps = ask("/api/v1/applications")
    if not isinstance(apps, list) or not apps or not isinstance(apps[0], dict) \
            or not apps[0].get("id"):
        raise LookupError(f"the Spark Connect UI at {ui} did not answer")
    base = f"/api/v1/applications/{apps[0]['id']}/connect"
    sessions, operations = ask(f"{base}/sessions"), ask(f"{base}/operations")
    if not isinstance(sessions, list) or not isinstance(operations, list):
        raise LookupError(f"the Spark Connect UI at {ui} did not list sessions")
    return (apps[0],
            [s for s in sessions if isinstance(s, dict) and s.get("userId") != PROBE_USER],
            [o for o in operations if isinstance(o, dict) and o.get("userId") != PROBE_USER])


def _app_start(app: dict[str, Any]) -> datetime | None:
    """When a Spark UI's application started (its first attempt's ``startTimeEpoch``)."""
    attempts = [a for a in app.get("attempts") or [] if isinstance(a, dict)]
    return _ms(attempts[0].get("startTimeEpoch")) if attempts else None


def _connect_sessions(access: Access) -> tuple[list[str], datetime | None, datetime | None]:
    """(open sessions and unfinished operations, when the last of them ended, when the server
    started); raises LookupError as ``connect_server``."""
    app, sessions, operations = connect_server(access)
    active = [f"Connect session {s.get('sessionId')}" for s in sessions
              if not s.get("finishTimestamp")]
    active += [f"Connect operation {o.get('operationId')} {o.get('state')}" for o in operations
               if o.get("state") not in CONNECT_DONE]
    last_end = _latest(*(_ms(s.get("finishTimestamp")) for s in sessions),
                       *(_ms(o.get("closeTimestamp")) or _ms(o.get("finishTimestamp"))
                         for o in operations))
    return active, last_end, _app_start(app)


def operator_activity(access: Access) -> Activity:
    """Operator mode: busy while the Connect server, whose UI is the cluster's Spark UI, has a
    session open or an operation running. Its executors are no sign of work: it releases them
    30 s after their last task."""
    try:
        busy, last_end, started = _connect_sessions(access)
    except LookupError as err:
        return Activity(None, str(err))
    return Activity(bool(busy), _what(busy), last_end, started, busy)


def spark_activity(access: Access, handle: ClusterHandle) -> Activity:
    """Busy while an application (other than the Connect server) runs on the master, or
    Connect runs work or has a session open."""
    from ephemeral.backends.kubernetes.render.spark_operator import is_operator

    if is_operator(handle):
        return operator_activity(access)
    master = get_json(f"{access.spark_ui}/json/", timeout=TIMEOUT, headers=access.headers,
                      verify=access.verify, proxy=access.proxy)
    if not isinstance(master, dict):
        return Activity(None, "the Spark master UI did not answer")
    connect_names = {f"{handle.name}-connect", "ephemeral-connect"} \
        if handle.endpoints.spark_connect else set()
    active = [a for a in master.get("activeapps") or [] if isinstance(a, dict)]
    apps = [a for a in active if a.get("name") not in connect_names]
    connect = [a for a in active if a.get("name") in connect_names]
    busy = [f"Spark application {a.get('id')} ({a.get('name')})" for a in apps]
    busy += [f"Spark driver {d.get('id')}" for d in master.get("activedrivers") or []
             if isinstance(d, dict)]
    ends = [_ms((a.get("starttime") or 0) + (a.get("duration") or 0))
            for a in master.get("completedapps") or [] if isinstance(a, dict)]
    last_end = _latest(*ends)
    # The Connect server registers once it runs: with Connect, the cluster's readiness.
    started = _latest(*(_ms(a.get("starttime")) for a in connect))
    if handle.endpoints.spark_connect:
        try:
            sessions, connect_end, _ = _connect_sessions(access)
        except LookupError as err:
            return Activity(None, str(err))
        busy += sessions
        last_end = _latest(last_end, connect_end)
    if not busy and last_end is None and started is None:
        # Nothing ever ran and no engine time says when it became ready: the reaper counts
        # from its creation, so it must be up, all its workers registered (not still starting).
        alive = sum(1 for w in master.get("workers") or []
                    if isinstance(w, dict) and w.get("state") == "ALIVE")
        groups = [g for g in handle.groups if g.role == "worker"]
        wanted = sum(g.replicas for g in groups) if groups else 1  # older handles: no groups
        if alive < wanted:
            return Activity(None, f"still starting: {alive} of {wanted} workers ALIVE")
    return Activity(bool(busy), _what(busy), last_end, started, busy)


def _what(busy: list[str]) -> str:
    return (f"{len(busy)} running: {'; '.join(busy[:3])}" if busy
            else "no Spark application, Connect session or operation running")


def cluster_activity(backend: ClusterBackend, handle: ClusterHandle) -> Activity:
    """Whether ``handle``'s cluster is busy, asked through ``backend``'s access to it."""
    access = backend.access(handle)
    if handle.engine == "ray" and access.dashboard:
        return ray_activity(access)
    if handle.engine == "spark" and access.spark_ui:
        return spark_activity(access, handle)
    return Activity(None, f"no HTTP API to ask about a {handle.engine} cluster")
