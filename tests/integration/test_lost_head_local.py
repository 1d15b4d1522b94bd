"""A real local Ray cluster whose head's GCS dies under a running job: the backend's view of
the head sees Ray's own ``gcs_server`` process while it runs and its loss after (the name the
local view looks for is checked here against Ray itself), and the job's watch, with the real
constants, gives the cluster up within about the grace instead of the ceiling."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ephemeral.backends.base import HeadState
from ephemeral.backends.local import LocalBackend, procs
from ephemeral.backends.local.state import load
from ephemeral.jobs import ray_jobs
from ephemeral.jobs.ray_jobs import ClusterLost, JobWatch, ray_jobs_for
from ephemeral.jobs.results import JobStatus
from ephemeral.lifecycle import provision
from tests.conftest import engine_pids, manual, other_clusters_pids, small

pytestmark = pytest.mark.local


def test_a_head_whose_gcs_dies_is_lost_within_the_grace(tmp_path: Path) -> None:
    home = tmp_path / "home"
    backend = LocalBackend(home)
    spec = small("ray/adhoc-cpu", replicas=1)
    before = engine_pids()
    try:
        handle = provision(backend, spec, manual(spec, "lost-head"), timeout=240).handle
        view = backend.head_view(handle)
        assert view.state is HeadState.RUNNING, view
        jobs = ray_jobs_for(handle, backend)
        jid = jobs.submit("python -c 'import time; time.sleep(600)'")
        deadline = time.monotonic() + 120
        while jobs.status(jid, timeout=10) is not JobStatus.RUNNING:
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.5)
        watch = JobWatch(jobs, jid)  # the real constants
        assert watch.status() is JobStatus.RUNNING

        state = load(home / "clusters" / handle.name)
        assert state is not None
        [head] = [n for n, p in zip(state.nodes, state.plan, strict=True) if p.role == "head"]
        [gcs] = [p for p in procs.find([head], state.uid)
                 if p.name() == "gcs_server" and os.getsid(p.pid) == head.sid]
        gcs.kill()  # this test's own cluster's GCS, by its pid
        killed = time.monotonic()
        seconds, err = _until_lost(watch, backend.probe_interval)
        assert ray_jobs.LOST_GRACE <= seconds - killed < ray_jobs.LOST_GRACE + 15, err
        assert "ceiling" not in str(err)
        assert "GCS is down" in str(err) or "gcs_server is gone" in str(err)
        view = backend.head_view(handle)
        assert view.state is HeadState.GONE, view
        assert view.reason.startswith("its head node's gcs_server is gone")
    finally:
        for h in backend.list_owned():
            backend.delete(h, wait=True)
        leaked = engine_pids() - before - other_clusters_pids(home)
        assert not leaked, f"processes left behind: {sorted(leaked)}"


def _until_lost(watch: JobWatch, pause: float) -> tuple[float, ClusterLost]:
    """When (monotonic) the watch gave the cluster up, and why."""
    started = time.monotonic()
    while time.monotonic() - started < ray_jobs.LOST_CEILING:
        try:
            watch.status()
        except ClusterLost as err:
            return time.monotonic(), err
        time.sleep(pause)
    raise AssertionError("the cluster was never counted lost")
