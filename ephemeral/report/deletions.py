"""A run's cluster deleted where no teardown may record it: by the run-end cleanup (the run
ended with its teardown skipped, failed or never reached), by the reaper (a leak) or by its
last job's task (``delete_cluster_on_success``, and the run may end before its teardown). The
cluster cost its life, so it goes into its run's report as a part, like a teardown's, with the
deleter named in ``released_by``; and a release record, so that a teardown that does come later
(a cleared run) reports these moments, not its own."""

from __future__ import annotations

import logging
import time

from ephemeral.backends.base import ClusterHandle
from ephemeral.report.model import ClusterFacts, JobFacts

log = logging.getLogger(__name__)


def created_ts(handle: ClusterHandle) -> float:
    from ephemeral.specs.identity import parse_utc

    return handle.created_ts or parse_utc(handle.created_at).timestamp()


def record_ready(handle: ClusterHandle) -> None:
    """Keep when the setup saw ``handle``'s cluster ready (its ``ready_ts``) beside its run's
    report parts. A handle that run-end, the reaper or a teardown without XCom lists has no
    readiness time (only the setup's XCom carries it): ``cluster_facts`` reads it from there,
    so their parts count the cluster's start as starting, not as idle between jobs. One
    record for every backend, in the store the report is written to: no cluster object is
    changed in place (the Kubernetes Role grants no patch). Never raises: the cluster is
    ready, and the setup must not fail on its report."""
    from ephemeral.report.model import Ready
    from ephemeral.report.store import write_ready

    if handle.run is None or handle.ready_ts is None:
        return
    dag_id, run_id = handle.run
    try:
        write_ready(dag_id, run_id, Ready(name=handle.name, created_at=handle.created_at,
                                          ready=handle.ready_ts))
    except Exception as err:  # noqa: BLE001 - the run report only loses the start's share
        log.warning("could not record when %s became ready for its run's report: %s",
                    handle.name, err)


def record_ready_deadline(handle: ClusterHandle, deadline: float) -> None:
    """Keep until when the setup waits for ``handle``'s cluster to be ready, where it keeps its
    readiness (``record_ready`` replaces it), when that is later than the default wait after
    its creation: the reaper's idle rule reads it (``ready_deadline``). Never raises."""
    from ephemeral.lifecycle import SETUP_READY_TIMEOUT
    from ephemeral.report.model import Ready
    from ephemeral.report.store import write_ready

    if handle.run is None or deadline <= created_ts(handle) + SETUP_READY_TIMEOUT:
        return
    dag_id, run_id = handle.run
    try:
        write_ready(dag_id, run_id, Ready(name=handle.name, created_at=handle.created_at,
                                          deadline=deadline))
    except Exception as err:  # noqa: BLE001 - the reaper falls back to the default wait
        log.warning("could not record until when the setup waits for %s: %s", handle.name, err)


def ready_deadline(handle: ClusterHandle) -> float:
    """Until when a setup may still wait for the cluster to be ready: its record
    (``record_ready_deadline``), else ``lifecycle.SETUP_READY_TIMEOUT`` after its creation."""
    from ephemeral.lifecycle import SETUP_READY_TIMEOUT
    from ephemeral.report.store import read_ready_record

    default = created_ts(handle) + SETUP_READY_TIMEOUT
    if handle.run is None:
        return default
    try:
        record = read_ready_record(*handle.run, handle.name, handle.created_at)
    except Exception as err:  # noqa: BLE001 - the default wait
        log.warning("could not read until when the setup waits for %s: %s", handle.name, err)
        return default
    return max(default, record.deadline) if record and record.deadline else default


def ready_ts(handle: ClusterHandle, dag_id: str, run_id: str) -> float | None:
    """When the cluster was seen ready: the handle's (the setup's XCom), else the setup's
    record (``record_ready``); None when neither says (never ready, or unreadable)."""
    if handle.ready_ts is not None:
        return handle.ready_ts
    from ephemeral.report.store import read_ready

    try:
        return read_ready(dag_id, run_id, handle.name, handle.created_at)
    except Exception as err:  # noqa: BLE001 - the part is still written, without it
        log.warning("could not read when %s became ready: %s", handle.name, err)
        return None


def cluster_facts(handle: ClusterHandle, *, dag_id: str, run_id: str, setup_task: str | None,
                  teardown_task: str | None, started: float, deleted: float | None,
                  deletion: str, jobs: list[JobFacts], released_by: str | None = None
                  ) -> ClusterFacts:
    """One cluster's facts for its run's report, priced by the deployment's cost setting (no
    money when that setting is bad: the report must still be written)."""
    from ephemeral.report.costs import load_prices

    try:
        prices = load_prices()
    except ValueError as err:
        prices = None
        log.error("run report without money: %s", err)
    return ClusterFacts(
        dag_id=dag_id, run_id=run_id, name=handle.name, engine=handle.engine,
        backend=handle.backend, spec_ref=handle.spec_ref, spec_hash=handle.spec_hash,
        profile=handle.profile, groups=handle.groups, setup_task=setup_task,
        teardown_task=teardown_task, created=created_ts(handle), created_at=handle.created_at,
        ready=ready_ts(handle, dag_id, run_id),
        teardown_started=started, deleted=deleted, deletion=deletion, released_by=released_by,
        jobs=jobs, price=prices.for_spec(handle.spec_ref) if prices else None,
        currency=prices.currency if prices else None, recorded_at=time.time())


def record_deleted(handle: ClusterHandle, *, by: str, started: float, deleted: float | None,
                   jobs: list[JobFacts] | None, deletion: str = "complete",
                   release: bool = True) -> None:
    """Record ``handle``'s cluster, deleted by ``by`` (``run-end``, ``reaper``, a job task), in
    its run's report, and (``release``) its release record; a job task writes its own, with
    its result. A cluster made by hand (no run) has none. Never raises: the deletion matters."""
    from ephemeral.report.model import Release
    from ephemeral.report.store import record, write_release

    if handle.run is None:
        return
    dag_id, run_id = handle.run
    try:
        if release:
            write_release(dag_id, run_id, Release(
                name=handle.name, created_at=handle.created_at, task=by,
                teardown_started=started, deleted=deleted, jobs=jobs))
        record([cluster_facts(handle, dag_id=dag_id, run_id=run_id,
                              setup_task=handle.setup_task,
                              teardown_task=None, started=started, deleted=deleted,
                              deletion=deletion, jobs=jobs or [], released_by=by)])
    except Exception as err:  # noqa: BLE001 - the report is secondary to the deletion
        log.warning("could not record the deletion of %s in its run's report: %s",
                    handle.name, err)
