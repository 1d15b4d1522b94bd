"""An in-memory backend that keeps the contract, for testing the layers above without processes.

A test double only: its clusters live in one process's memory, so it cannot serve anything that
spans processes (CLI commands one after another, an Airflow task and its triggerer). The CLI
refuses it and so do the triggers (``refuse_across_processes``). It ships in the library (as
Ray's fake node provider does) so users can test their DAGs' wiring in one process, e.g. with
``dag.test()`` and ``backend="fake", deferrable=False``.
Readiness takes ``ready_after_probes`` probes; ``fail_nodes`` makes a cluster fail to start.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass

from ephemeral.backends.base import (
    ClusterBackend,
    ClusterHandle,
    ClusterStatus,
    Deletion,
    Endpoints,
    OwnerSelector,
    Phase,
    check_adoptable,
    make_handle,
    newer_life,
    same_life,
)
from ephemeral.errors import BackendUnavailable, ClusterFailed
from ephemeral.specs.identity import ClusterIdentity
from ephemeral.specs.models import RaySpec
from ephemeral.specs.resolve import ResolvedSpec

log = logging.getLogger(__name__)
NAME = "fake"
REAL_BACKENDS = ("local", "kubernetes")


def refuse_across_processes(backend: str | None, where: str) -> None:
    """Raise when ``backend`` is the fake one, for ``where`` (the CLI, a trigger) that would
    meet it in a process holding none of its clusters."""
    if backend == NAME:
        raise BackendUnavailable(
            f"{where}: the {NAME!r} backend is a test double whose clusters live in one "
            "process's memory, so here it would find none; use one of the real backends: "
            + ", ".join(REAL_BACKENDS))


@dataclass
class _Record:
    handle: ClusterHandle
    nodes: int
    probes: int = 0
    failed: bool = False


@functools.cache
def process_backend() -> InMemoryBackend:
    """The one in-memory backend of this process, what ``backend="fake"`` names: every task of
    a ``dag.test()`` run finds the clusters its setups made, as on a real backend (the
    teardown deletes only what its backend records)."""
    return InMemoryBackend()


class InMemoryBackend(ClusterBackend):
    name = NAME

    def __init__(self, *, ready_after_probes: int = 2, fail_nodes: bool = False) -> None:
        self.ready_after_probes = ready_after_probes
        self.fail_nodes = fail_nodes
        self._clusters: dict[str, _Record] = {}
        self._lock = threading.Lock()
        self.created_total = 0

    def create(self, spec: ResolvedSpec, *, identity: ClusterIdentity) -> ClusterHandle:
        with self._lock:
            existing = self._clusters.get(identity.name)
            if existing:
                check_adoptable(existing.handle, spec.ref, spec.hash, identity)
                return existing.handle.model_copy(update={"adopted": True})
            host = f"{identity.name}.fake"
            s = spec.spec
            if isinstance(s, RaySpec):
                ep = Endpoints(dashboard=f"http://{host}:8265", ray_client=f"ray://{host}:10001",
                               gcs=f"{host}:6379")
                nodes = 1 + sum(g.replicas for g in s.worker_groups)
            else:
                ep = Endpoints(spark_master=f"spark://{host}:7077", spark_ui=f"http://{host}:8080",
                               spark_connect=f"sc://{host}:15002")
                nodes = 1 + s.workers.replicas
            handle = make_handle(spec, identity, backend=self.name, endpoints=ep)
            self._clusters[identity.name] = _Record(handle, nodes, failed=self.fail_nodes)
            self.created_total += 1
            return handle

    def probe(self, handle: ClusterHandle) -> ClusterStatus:
        with self._lock:
            rec = self._clusters.get(handle.name)
            if rec is None:
                return ClusterStatus(phase=Phase.GONE, message="no such cluster")
            rec.probes += 1
            if rec.failed:
                raise ClusterFailed(f"cluster {handle.name!r} failed to start",
                                    "node worker-0: exit 1")
            ready = rec.probes >= self.ready_after_probes
            return ClusterStatus(
                phase=Phase.READY if ready else Phase.STARTING,
                nodes_ready=rec.nodes if ready else 1,
                nodes_expected=rec.nodes,
            )

    def endpoints(self, handle: ClusterHandle) -> Endpoints:
        return handle.endpoints

    def delete(self, target: ClusterHandle | ClusterIdentity | str, *, wait: bool = True) -> bool:
        del wait  # nothing here takes time to go away
        name = self.target_name(target)
        with self._lock:
            rec = self._clusters.get(name)
            if rec is not None and isinstance(target, ClusterHandle) and \
                    not same_life(rec.handle, target):
                log.warning("%s", newer_life(rec.handle, target))
                return False
            self._clusters.pop(name, None)
        return True

    def start_delete(self, target: ClusterHandle | ClusterIdentity | str) -> Deletion | None:
        """Done at once: nothing is left to wait for."""
        return Deletion(self.target_name(target)) if self.delete(target) else None

    def list_owned(self, selector: OwnerSelector | None = None) -> list[ClusterHandle]:
        selector = selector or OwnerSelector()
        with self._lock:
            return [r.handle for r in self._clusters.values() if selector.admits(r.handle)]
