"""What ran on a cluster, and when, as its engines tell it: asked by the teardown just before
it deletes the cluster, through the HTTP APIs the backend gives access to (the same endpoints
``ephemeral.activity`` reads; no Ray or Spark import, so the teardown stays fast).

- Ray: every submitted job in the Jobs API (``GET /api/jobs/``), with start and end times,
  whichever task or person submitted it, failed attempts included: the GPUs were held.
- Spark: every application on the master (``GET /json/``, active and completed), other than
  the cluster's own Spark Connect server, whose life is the cluster's; and the work that
  server ran (its operations: queries and commands of the sessions of ``@task.spark_connect``
  and other clients), read from its UI by the idle rule's reader
  (``activity.connect_server``, at the backend's ``Access.connect_ui``). In Kubernetes'
  operator mode there is no master: the Connect server's work is all there is.

An API that does not answer gives None: the report falls back to the jobs' own results.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ephemeral.backends.base import Access, ClusterBackend, ClusterHandle
from ephemeral.backends.http import get_json
from ephemeral.report.model import JobFacts

TIMEOUT = 3.0
SPELL_GAP = 1.0  # seconds between a session's operations that still count as one busy spell
log = logging.getLogger(__name__)


def _s(ms: Any) -> float | None:
    return ms / 1000 if isinstance(ms, int | float) and ms > 0 else None


def ray_jobs(dashboard: str, headers: dict[str, str], *, verify: bool | str = True,
             proxy: str | None = None) -> list[JobFacts] | None:
    body = get_json(f"{dashboard}/api/jobs/", timeout=TIMEOUT, headers=headers, verify=verify,
                    proxy=proxy)
    if not isinstance(body, list):
        return None
    now = time.time()
    out = []
    for job in body:
        if not isinstance(job, dict) or not job.get("submission_id"):
            continue  # a driver of a submitted job, or a bare ray.init: not a job of ours
        start = _s(job.get("start_time"))
        status = str(job.get("status", ""))
        end = _s(job.get("end_time")) or (now if start is not None else None)
        out.append(JobFacts(job_id=str(job["submission_id"]), engine="ray", status=status,
                            start=start, end=end, source="ray jobs api"))
    return out


def spark_apps(spark_ui: str, headers: dict[str, str], handle: ClusterHandle, *,
               verify: bool | str = True, proxy: str | None = None) -> list[JobFacts] | None:
    body = get_json(f"{spark_ui}/json/", timeout=TIMEOUT, headers=headers, verify=verify,
                    proxy=proxy)
    if not isinstance(body, dict):
        return None
    connect = {f"{handle.name}-connect", "ephemeral-connect"}
    now = time.time()
    out = []
    for key in ("activeapps", "completedapps"):
        for app in body.get(key) or []:
            if not isinstance(app, dict) or app.get("name") in connect or not app.get("id"):
                continue
            start = _s(app.get("starttime"))
            duration = app.get("duration")
            end = (start + duration / 1000 if start is not None and key == "completedapps"
                   and isinstance(duration, int | float) else now if start is not None else None)
            out.append(JobFacts(job_id=str(app["id"]), engine="spark",
                                status=str(app.get("state", "")), start=start, end=end,
                                source="spark master"))
    return out


def connect_work(access: Access) -> list[JobFacts] | None:
    """Each Connect session's busy spells: its operations' times, merged where they touch.
    One row per spell rather than per operation (a pipeline runs hundreds). None when the
    Connect server's UI cannot be read."""
    from ephemeral.activity import connect_server

    try:
        _, _, operations = connect_server(access)
    except LookupError:
        return None
    now = time.time()
    spells: dict[str, list[list[float]]] = {}
    for op in sorted(operations, key=lambda o: o.get("startTimestamp") or 0):
        start = _s(op.get("startTimestamp"))
        if start is None:
            continue
        end = _s(op.get("finishTimestamp")) or _s(op.get("closeTimestamp")) or now
        mine = spells.setdefault(str(op.get("sessionId") or "?"), [])
        if mine and start <= mine[-1][1] + SPELL_GAP:
            mine[-1][1] = max(mine[-1][1], end)
        else:
            mine.append([start, end])
    return [JobFacts(job_id=f"connect-{session[:8]}-{i}", engine="spark", status="CONNECT",
                     start=start, end=end, source="spark connect")
            for session, found in spells.items() for i, (start, end) in enumerate(found)]


def engine_jobs(backend: ClusterBackend, handle: ClusterHandle, *,
                connect: bool = True) -> list[JobFacts] | None:
    """The cluster's jobs with their times, or None when its engine cannot be asked. Never
    raises: a teardown calls it before deleting. ``connect=False`` leaves out a Spark Connect
    server's work, whose UI may take seconds to answer: for a deleter that must not wait."""
    try:
        access = backend.access(handle)
        headers = dict(access.headers)
        # The TLS trust and the proxy the backend gives (an API server's private CA, the
        # Kubernetes client's proxy, through its service proxy).
        if handle.engine == "ray" and access.dashboard:
            return ray_jobs(access.dashboard, headers, verify=access.verify,
                            proxy=access.proxy)
        if handle.engine == "spark" and access.spark_ui:
            from ephemeral.backends.kubernetes.render.spark_operator import is_operator

            if is_operator(handle):  # no master: its Connect server's work is all it ran
                return connect_work(access) if connect else None
            apps = spark_apps(access.spark_ui, headers, handle, verify=access.verify,
                              proxy=access.proxy)
            if apps is None or not connect or not handle.endpoints.spark_connect:
                return apps
            return apps + (connect_work(access) or [])
    except Exception:  # unknown, not fatal: the report falls back to the results
        log.warning("could not list the jobs of %s", handle.name, exc_info=True)
    return None
