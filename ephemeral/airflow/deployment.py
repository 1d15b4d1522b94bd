"""``GET <api-server>/ephemeral/deployment``: which deployment instance this Airflow is.

The reaper (``ephemeral reap``, the CronJob) deletes the clusters of runs its Airflow says ended.
Pointed at another Airflow with the same DAGs (staging's URL in production's CronJob), it was
told of runs with the same ids that ended, and deleted running clusters. It now asks this first
and refuses an Airflow that is another instance's (``reaper.AirflowApiLookup``).

A bare ASGI app, mounted by the plugin in the api-server only: no framework import in the other
components, which load the plugin too. It tells only the instance id, which every cluster
carries as a label anyway.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

PATH = "/deployment"
URL_PREFIX = "/ephemeral"
Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def describe() -> tuple[int, dict[str, str]]:
    """The answer: this process's instance (``settings.instance_of``), or why it has none."""
    from ephemeral.errors import EphemeralError
    from ephemeral.settings import instance_of

    try:
        return 200, {"instance": instance_of()}
    except EphemeralError as err:  # a refused EPHEMERAL_INSTANCE: the reaper reports it
        return 500, {"error": str(err)}


async def app(scope: Scope, _receive: Callable[[], Awaitable[Any]], send: Send) -> None:
    if scope.get("type") != "http":
        return
    path = str(scope.get("path", "")).rstrip("/")
    status, body = describe() if path.endswith(PATH) and scope.get("method") == "GET" else (
        404, {"error": f"only GET {URL_PREFIX}{PATH} is served here"})
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
