"""Waiting until a cluster is usable: the one loop the CLI, the operators, the triggers and the
backends' own ``wait_ready`` share, so a cluster that goes away, a passing API error and a
deadline are treated the same way wherever somebody waits.

``Readiness.step`` probes once and either returns the status (ready, or not yet) or raises;
``pause`` says how long to wait before the next step. The sync ``wait`` and the triggerer's
async loop only differ in how they sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ephemeral.errors import ClusterFailed, EphemeralError, ReadinessTimeout

if TYPE_CHECKING:
    from ephemeral.backends.base import ClusterBackend, ClusterHandle, ClusterStatus


def backoff(ceiling: float, first: float = 0.25) -> Iterator[float]:
    """Pauses between probes: short at first, since a cluster that is nearly ready idles (and
    costs) for every second it goes unnoticed, then growing to ``ceiling``."""
    pause = min(first, ceiling)
    while True:
        yield pause
        pause = min(pause * 2, ceiling)


class Readiness:
    """One wait for one cluster, until ``deadline`` (``time.time()`` seconds, so that a wait
    resumed in another process, a restarted triggerer, keeps the first one's deadline)."""

    def __init__(self, backend: ClusterBackend, handle: ClusterHandle, *, deadline: float,
                 poll_interval: float | None = None) -> None:
        self.backend = backend
        self.handle = handle
        self.deadline = deadline
        self.timeout = max(0.0, deadline - time.time())
        self._pauses = backoff(poll_interval or backend.probe_interval)
        self.last = ""

    @classmethod
    def within(cls, backend: ClusterBackend, handle: ClusterHandle, *, timeout: float,
               poll_interval: float | None = None) -> Readiness:
        return cls(backend, handle, deadline=time.time() + timeout, poll_interval=poll_interval)

    def step(self) -> ClusterStatus:
        """Probe once. Raises ``ClusterFailed`` when the cluster failed, is gone or is being
        deleted, and ``ReadinessTimeout`` (with the backend's diagnosis) past the deadline; an
        error that says retrying can help (an API server's 503 while images pull) is retried
        until then."""
        from ephemeral.backends.base import ClusterStatus, Phase

        try:
            status = self.backend.probe(self.handle)
        except EphemeralError as err:
            if not err.retryable or isinstance(err, ReadinessTimeout):
                raise
            status = ClusterStatus(phase=Phase.STARTING,
                                   message=f"retrying after {type(err).__name__}: {err}")
        if status.ready:
            return status
        if status.phase in (Phase.GONE, Phase.DELETING, Phase.FAILED):
            raise ClusterFailed(f"cluster {self.handle.name!r} is {status.phase.value} while "
                                f"waiting for it to be ready: {status.message}")
        self.last = (f"{status.nodes_ready}/{status.nodes_expected} nodes ready; "
                     f"{status.message}")
        if time.time() >= self.deadline:
            raise ReadinessTimeout(
                f"cluster {self.handle.name!r} not ready after {round(self.timeout, 1):.10g}s "
                f"({self.last})", self._diagnosis())
        return status

    def pause(self) -> float:
        return max(0.0, min(next(self._pauses), self.deadline - time.time()))

    def wait(self, on_progress: Callable[[ClusterStatus], None] | None = None) -> ClusterStatus:
        while not (status := self.step()).ready:
            if on_progress:
                on_progress(status)
            time.sleep(self.pause())
        return status

    def _diagnosis(self) -> str:
        try:
            return self.backend.diagnose(self.handle)
        except Exception as err:  # noqa: BLE001 - the timeout matters more than its diagnosis
            return f"(no diagnosis: {type(err).__name__}: {err})"
