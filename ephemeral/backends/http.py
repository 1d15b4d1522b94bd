"""A tiny JSON GET for readiness probes of every backend (the Ray dashboard, the Spark master
UI): None when the endpoint does not answer (yet), so a probe reads "not ready", never fails."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any


def get_json(url: str, *, timeout: float = 3.0, headers: Mapping[str, str] | None = None) -> Any:
    """GET ``url`` (with ``headers``, e.g. credentials) and parse JSON; None when it does not
    answer with 200 and JSON (yet)."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if resp.status != 200:
                return None
            return json.loads(resp.read() or b"null")
    except (urllib.error.URLError, OSError, ValueError):
        return None
