"""What a finished job leaves behind for the orchestrator: small enough for XCom."""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from ephemeral.errors import JobError

RESULT_FILE_ENV = "EPHEMERAL_RESULT_FILE"
"""Where a job writes its result when the submitter gives it a file (spark-submit's driver runs
here): a channel no other process writes to, unlike the driver's output, which spark-submit
merges with the JVM's log4j lines (see ``spark_jobs.spark_submit``)."""


class ResultUnreadable(JobError):
    """The job succeeded and declared a result that cannot be read. Pushing ``{}`` instead would
    only fail its consumers later, with an error that points at them rather than at the job."""

    def __init__(self, job_id: str, why: str, evidence: str = "") -> None:
        self.job_id = job_id
        msg = f"job {job_id} succeeded but its result cannot be read: {why}"
        super().__init__(f"{msg}\n{evidence}" if evidence else msg)


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
    submitted_at: float | None = None
    """When the job was handed over (epoch seconds) where the engine counts later: a Spark
    application starts on the master when its driver registers, seconds after spark-submit
    started it. The run report shows it; the wait stays idle time."""
    cluster_created_at: str | None = None
    """The ``created_at`` of the cluster life it ran on: a cleared setup makes the name anew,
    and the run report counts a job on its own life only. None in results of older code."""

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.SUCCEEDED

    @field_validator("result")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The one gate every job path passes (operators, triggers, the release record, the
        # CLI): what the job declared goes to XCom, the task log and lineage facets as it is.
        masked: list[str] = []
        clean = without_secrets(value, masked)
        if masked:
            logging.getLogger(__name__).warning(
                "the job's result holds credentials, masked as *** before it is returned, "
                "logged or recorded: %s. Report artifacts without them (no user:password@ "
                "nor signed URLs; a secret is no result)", ", ".join(masked))
        return clean  # type: ignore[no-any-return]


def without_secrets(value: Any, masked: list[str], path: str = "") -> Any:
    """``value`` (a job's declared result, or a part of it) with every secret masked: values
    under a name that says secret (``secret_name``: ``token``, ``spark.authenticate.secret``)
    and credentials in any text (``shown_uri``: URL user-info, signed-URL parameters, tokens
    by their shape, PEM blocks). Appends the path of each masked value to ``masked``."""
    from ephemeral.specs.models import MASK, secret_name, shown_uri

    if isinstance(value, dict):
        clean: dict[Any, Any] = {}
        for key, item in value.items():
            # Whatever it holds under such a name (a number, a list, an object of them) is the
            # secret; only nothing at all (and a flag) is none.
            if item not in (None, "", MASK, [], {}) and not isinstance(item, bool) \
                    and secret_name(str(key)):
                masked.append(f"{path}{key}")
                clean[key] = MASK
            else:
                clean[key] = without_secrets(item, masked, f"{path}{key}.")
        return clean
    if isinstance(value, list):
        return [without_secrets(v, masked, f"{path.rstrip('.')}[{i}].")
                for i, v in enumerate(value)]
    if isinstance(value, str) and (shown := shown_uri(value)) != value:
        masked.append(path.rstrip(".") or "(the value)")
        return shown
    return value


def parse_result_line(logs: str, job_id: str = "") -> dict[str, Any]:
    """The job's declared result: the last line of the logs that starts with a JSON object
    (``{}`` when no line does: the job declared none).

    A result line can share its line with another writer's output when two streams are merged
    (the object, then a log line that arrived before its newline): the object is still read.
    A line that starts like a JSON object (``{"``) but is none is a result that was cut or
    interleaved: that raises ``ResultUnreadable`` rather than passing an earlier line or ``{}``
    off as the result."""
    decoder = json.JSONDecoder()
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value, _ = decoder.raw_decode(line)
        except ValueError as err:
            if line.startswith('{"'):
                raise ResultUnreadable(job_id or "?", "its result line is not one JSON object "
                                       "(cut or interleaved with other output)",
                                       line[:500]) from err
            continue
        if isinstance(value, dict):
            return value
    return {}


def read_result_file(path: Path, job_id: str) -> dict[str, Any] | None:
    """The result the job wrote to ``path`` (``RESULT_FILE_ENV``), or None when it wrote none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ResultUnreadable(job_id, f"its result file is not JSON ({err})", text[:500]) from err
    if not isinstance(value, dict):
        raise ResultUnreadable(job_id, "its result file holds no JSON object", text[:500])
    return value


def submission_id(cluster: str, task_key: str, attempt: int) -> str:
    """Deterministic per (cluster, task, attempt): a retry can look for its earlier attempts."""
    digest = hashlib.sha256(f"{cluster}\x1f{task_key}".encode()).hexdigest()[:16]
    return f"eph-{digest}-a{attempt}"


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
