"""What a finished job leaves behind for the orchestrator: small enough for XCom."""

from __future__ import annotations

import enum
import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


class JobResult(BaseModel):
    """Job id, status and the job's own one-line JSON result (artifact URIs, a few metrics)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    cluster: str
    engine: str
    status: JobStatus
    seconds: float
    result: dict[str, Any] = {}

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.SUCCEEDED


def parse_result_line(logs: str) -> dict[str, Any]:
    """The last line of the logs that is a JSON object: the job's declared result."""
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}


def submission_id(cluster: str, task_key: str, attempt: int) -> str:
    """Deterministic per (cluster, task, attempt): a retry can look for its earlier attempts."""
    digest = hashlib.sha256(f"{cluster}\x1f{task_key}".encode()).hexdigest()[:16]
    return f"eph-{digest}-a{attempt}"


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
