"""Provision and tear down clusters: the rules that hold whoever calls (CLI, Airflow, tests).

``provision`` creates and waits, and on any failure after creation started (readiness timeout,
a node that died, an interrupt) deletes what it made before re-raising: a failed setup must never
leave a cluster behind, because nothing downstream will delete it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ephemeral.backends.base import ClusterBackend, ClusterHandle, ClusterStatus, Phase
from ephemeral.errors import ClusterFailed, EphemeralError
from ephemeral.specs.identity import ClusterIdentity
from ephemeral.specs.resolve import ResolvedSpec

DEFAULT_READY_TIMEOUT = 600.0
ProgressFn = Callable[[ClusterStatus], None]


@dataclass(frozen=True)
class Provisioned:
    handle: ClusterHandle
    status: ClusterStatus
    seconds_to_ready: float


def provision(
    backend: ClusterBackend,
    spec: ResolvedSpec,
    identity: ClusterIdentity,
    *,
    timeout: float = DEFAULT_READY_TIMEOUT,
    on_progress: ProgressFn | None = None,
    poll: float = 0.5,
) -> Provisioned:
    """Create the cluster and wait until usable; delete it again if that fails."""
    started = time.monotonic()
    handle = backend.create(spec, identity=identity)
    try:
        deadline = started + timeout
        while True:
            status = backend.wait_ready(handle, timeout=0)
            if on_progress:
                on_progress(status)
            if status.phase is Phase.READY:
                return Provisioned(handle, status, time.monotonic() - started)
            if status.phase in (Phase.GONE, Phase.DELETING):
                raise ClusterFailed(f"cluster {handle.name} is {status.phase.value} while waiting "
                                    "for it to be ready")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # One last waiting call so the backend raises its own timeout with log tails.
                status = backend.wait_ready(handle, timeout=min(poll, 1.0))
                return Provisioned(handle, status, time.monotonic() - started)
            time.sleep(min(poll, remaining))
    except BaseException as err:
        _delete_after_failure(backend, handle, err)
        raise


def _delete_after_failure(backend: ClusterBackend, handle: ClusterHandle, err: BaseException) -> None:
    try:
        backend.delete(handle, wait=True)
    except EphemeralError as cleanup:
        # Keep the original failure as the error; say what could not be cleaned up next to it.
        err.add_note(f"cleanup after the failure also failed: {cleanup}")


def teardown(
    backend: ClusterBackend, target: ClusterHandle | ClusterIdentity | str
) -> float:
    """Delete and wait until nothing is left; return the seconds it took."""
    started = time.monotonic()
    backend.delete(target, wait=True)
    return time.monotonic() - started
