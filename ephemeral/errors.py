"""The one exception tree of ephemeral.

Only these types escape a backend, the lifecycle or the CLI; a foreign exception (a subprocess
error, an HTTP error, a Kubernetes ApiException) is chained as ``__cause__``. Whether retrying can
help is part of the type (``retryable``), so an Airflow task or a caller can decide without
parsing messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def field_problems(exc: Any, whole: str = "<root>") -> str:
    """A pydantic ValidationError as ``field.path: problem; ...`` (``whole`` names the root),
    naming fields only: pydantic would echo input values, a secret among them."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}"
                     for e in exc.errors(include_input=False))


def first_line(error: BaseException) -> str:
    """An error's first line for a log or a table cell; its type's name when it says nothing."""
    return (str(error).splitlines() or [type(error).__name__])[0]


class EphemeralError(Exception):
    """Root of every error ephemeral raises on purpose."""

    retryable: bool = False
    refused: bool = False
    """Refused input (a spec, an option, a setting, a job's request): nothing was made or
    submitted, and the same input fails the same (the CLI's exit code 2)."""


class SpecError(EphemeralError):
    """A cluster spec, a reference to one or a profile/override is invalid. Nothing was created.

    ``source`` names the file (or "overrides"), ``problems`` are (field path, message) pairs.
    """

    refused = True

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: invalid cluster spec"]
        lines += [f"  {path or '<root>'}: {msg}" for path, msg in self.problems]
        super().__init__("\n".join(lines))

    @property
    def fields(self) -> list[str]:
        return [path for path, _ in self.problems]


class SettingError(SpecError):
    """A setting (``$EPHEMERAL_*``, Airflow's ``[ephemeral]`` section) has a value that is
    refused; ``source`` names it. A SpecError (bad input, final, CLI exit code 2) with its own
    wording: it is no cluster spec."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__(source, problems)
        lines = [f"{source}: invalid setting"]
        lines += [f"  {path or '<root>'}: {msg}" for path, msg in self.problems]
        self.args = ("\n".join(lines),)


class SpecNotFound(SpecError):
    """A spec reference names no spec file, or a version that the file is not at."""


class BackendError(EphemeralError):
    """Something went wrong in a backend while creating, probing or deleting a cluster."""


class BackendUnavailable(BackendError):
    """The backend cannot be reached or is missing something it needs (a binary, an API)."""

    retryable = True


class BackendMisconfigured(BackendUnavailable):
    """The backend's settings (``EPHEMERAL_K8S_*``, a connection) cannot work as given: nothing
    was made, and a retry, a task's or the CLI's, fails the same."""

    retryable = False
    refused = True


class InstanceRequired(BackendError):
    """The backend needs this deployment's instance set, not derived: what it would create or
    reap could be another deployment's. A retry fails the same."""


class IdentityConflict(BackendError):
    """A cluster with this identity exists but was created from a different spec hash (or for
    another owner): a retry meets the same cluster, unless someone deletes it."""


class ClusterExpired(IdentityConflict):
    """A cluster with this identity exists past its TTL: never adopted; the reaper or the run's
    end deletes it, and a later try can then make it anew."""


class ClusterNotFound(BackendError):
    """No cluster exists under the given name or identity."""


class ClusterFailed(BackendError):
    """A cluster (or one of its nodes) failed to start or died; ``details`` holds log tails."""

    def __init__(self, message: str, details: str = "") -> None:
        self.details = details
        super().__init__(f"{message}\n{details}" if details else message)


class ReadinessTimeout(BackendError):
    """The cluster did not become usable in time. Retrying with a longer timeout may help."""

    retryable = True

    def __init__(self, message: str, details: str = "") -> None:
        self.details = details
        super().__init__(f"{message}\n{details}" if details else message)


class ListingIncomplete(BackendError):
    """A listing could not see every kind a cluster may be (a Role without one of its rules):
    ``found`` holds the clusters of the kinds it could list. A caller that deletes (the reaper,
    run-end, a teardown) acts on those and fails naming this; a mere listing fails, since the
    clusters it cannot see would otherwise be neither shown nor deleted."""

    def __init__(self, message: str, found: Sequence[Any]) -> None:
        self.found = list(found)
        super().__init__(message)


class TeardownIncomplete(BackendError):
    """Deletion was asked for, but something of the cluster is still there (named in ``leftover``)."""

    retryable = True

    def __init__(self, cluster: str, leftover: Sequence[str]) -> None:
        self.cluster = cluster
        self.leftover = list(leftover)
        super().__init__(
            f"cluster {cluster!r} was not fully deleted; still present: " + ", ".join(self.leftover)
        )


class JobError(EphemeralError):
    """Submitting, following or stopping a job went wrong."""


class JobSubmissionFailed(JobError):
    """The cluster did not take the job (its Jobs API or master could not be reached)."""

    retryable = True


class JobRefused(JobSubmissionFailed):
    """A job's request is refused before anything was submitted or started (a reserved or
    secret variable, a secret on a command line, a runtime_env Ray cannot take): a retry fails
    the same."""

    retryable = False
    refused = True


class JobFailed(JobError):
    """The job ran and ended FAILED or STOPPED; ``log_tail`` holds its last log lines,
    ``exit_code`` its driver's exit code where the engine recorded one (Ray's
    ``driver_exit_code``, spark-submit's), and ``streamed`` whether all its logs were already
    shown as they came (a caller that shows them need not show the tail again)."""

    def __init__(self, job_id: str, status: str, log_tail: str = "", *,
                 exit_code: int | None = None, streamed: bool = False) -> None:
        self.job_id = job_id
        self.status = status
        self.log_tail = log_tail
        self.exit_code = exit_code
        self.streamed = streamed
        self.ended = f"job {job_id} ended {status}" + (
            "" if exit_code is None else f" (exit code {exit_code})")
        super().__init__(f"{self.ended}; last log lines:\n{log_tail}" if log_tail
                         else self.ended)

    @property
    def facts(self) -> dict[str, Any]:
        """What a machine reads of it, beside its message (the CLI's --json error)."""
        return {"job_id": self.job_id, "status": self.status, "exit_code": self.exit_code}


class JobTimeout(JobError):
    """The job did not finish in time: stopped when its waiter submitted it, else left
    running (the message says which)."""
