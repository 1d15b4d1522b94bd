"""The backend's own view of a cluster's head, as a waiter whose reads fail consults it
(``HeadEvidence``, ``ClusterBackend.head_view``): a look is bounded and never doubled, a look
that fails or hangs is no evidence, and the local backend sees its head's GCS process go.

The local head here is a real process in a session of its own, started as the local backend
starts nodes (``procs.spawn``), named ``gcs_server`` as Ray's GCS is; the dashboard is the real
HTTP server of test_lost_cluster, its reads hanging and its health check silent, so only the
backend's view can tell a dead head from a slow one."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from ephemeral.backends.base import ClusterHandle, HeadState, HeadView
from ephemeral.backends.local import procs
from ephemeral.backends.local.backend import LocalBackend
from ephemeral.backends.local.state import ClusterState, PlannedNode, save
from ephemeral.jobs.ray_jobs import ClusterLost, HeadEvidence, JobWatch, RayJobs
from ephemeral.jobs.results import JobStatus
from tests.unit.test_lost_cluster import FAST, JOB, Dashboard, _watch_until_lost

# Unique per run: teardown kills by this marker, and two runs of the suite on one machine must
# not kill each other's head.
UID = f"lost-head-test-{uuid.uuid4().hex}"


def _view(state: HeadState) -> HeadView:
    return HeadView(state=state, reason=f"the head is {state.value}")


# -- HeadEvidence: bounded, never doubled, a failure is no evidence ------------------------------

def test_a_look_says_what_the_backend_says() -> None:
    evidence = HeadEvidence(lambda: _view(HeadState.GONE), timeout=1.0)
    assert evidence.answer().state is HeadState.UNKNOWN  # never asked
    evidence.ask()
    assert evidence.answer() == _view(HeadState.GONE)


def test_a_failing_look_is_no_evidence() -> None:
    def look() -> HeadView:
        raise RuntimeError("the API server said 500")

    evidence = HeadEvidence(look, timeout=1.0)
    evidence.ask()
    view = evidence.answer()
    assert view.state is HeadState.UNKNOWN
    assert view.reason == ("its backend's view of it failed (RuntimeError: the API server "
                           "said 500)")


def test_a_hanging_look_is_no_evidence_and_is_never_doubled() -> None:
    release = threading.Event()
    calls: list[float] = []

    def look() -> HeadView:
        calls.append(time.monotonic())
        release.wait(30)
        return _view(HeadState.GONE)

    evidence = HeadEvidence(look, timeout=0.3)
    try:
        for _ in range(4):
            started = time.monotonic()
            evidence.ask()
            view = evidence.answer()
            assert time.monotonic() - started < 0.6  # bounded from the look's start
            assert view.state is HeadState.UNKNOWN
            assert "did not come in 0.3s" in view.reason
        assert len(calls) == 1  # the hung look was never started again
        release.set()
        time.sleep(0.1)
        evidence.ask()  # the hung look ended: a new one starts
        assert evidence.answer().state is HeadState.GONE
        assert len(calls) == 2
    finally:
        release.set()


# -- the local backend: its head's GCS process ---------------------------------------------------

def _handle(name: str) -> ClusterHandle:
    return ClusterHandle(name=name, backend="local", engine="ray", spec_ref="ray/x@1",
                         spec_hash="h", created_at="2026-01-01T00:00:00Z",
                         expires_at="2026-01-02T00:00:00Z", labels={})


@pytest.fixture
def local_head(tmp_path: Path) -> Iterator[tuple[LocalBackend, ClusterHandle, psutil.Process]]:
    """A local cluster's state whose head node runs a process named like Ray's GCS."""
    backend = LocalBackend(home=tmp_path / "home")
    handle = _handle("lost-head")
    cdir = backend.home / "clusters" / handle.name
    gcs = tmp_path / "gcs_server"
    shutil.copy("/bin/sleep", gcs)
    node = procs.spawn("head", [str(gcs), "300"], log=cdir / "logs" / "head.log",
                       exit_file=cdir / "exit" / "head", env={procs.UID_ENV: UID})
    plan = [PlannedNode(name="head", role="head", ip="127.0.0.1", argv=[str(gcs), "300"])]
    save(cdir, ClusterState(handle=handle, uid=UID, slot=0, plan=plan, nodes=[node]))
    deadline = time.monotonic() + 10
    while not (found := [p for p in psutil.Process(node.sid).children()
                         if p.name() == "gcs_server"]):
        assert time.monotonic() < deadline, "the head process did not start"
        time.sleep(0.02)
    try:
        yield backend, handle, found[0]
    finally:
        procs.kill_all([node], UID, grace=0.0)


def test_the_local_view_sees_the_gcs_process(local_head: Any) -> None:
    backend, handle, gcs = local_head
    view = backend.head_view(handle)
    assert view == HeadView(state=HeadState.RUNNING, reason="its head node's gcs_server runs")
    gcs.kill()
    gcs.wait(5)
    view = backend.head_view(handle)
    assert view.state is HeadState.GONE
    assert view.reason.startswith("its head node's gcs_server is gone")


def test_a_head_another_os_user_runs_is_unknown_not_gone(
        local_head: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A watcher that cannot read the head's environment (the cluster started by another OS
    user, its session leader exited) cannot tell its processes are the cluster's: that is no
    evidence the head died."""
    backend, handle, _ = local_head

    def denied(self: psutil.Process) -> dict[str, str]:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(procs, "leader_is", lambda sid, started_at: False)
    monkeypatch.setattr(psutil.Process, "environ", denied)
    monkeypatch.setattr(procs, "_uid", lambda p: os.getuid() + 1)
    view = backend.head_view(handle)
    assert view.state is HeadState.UNKNOWN, view
    assert "cannot be read by this OS user" in view.reason


def test_a_deleted_local_cluster_is_gone(tmp_path: Path) -> None:
    backend = LocalBackend(home=tmp_path)
    assert backend.head_view(_handle("never-made")) == HeadView(state=HeadState.GONE,
                                                                reason="it was deleted")


def test_the_local_gcs_gone_is_a_lost_cluster_within_the_grace(local_head: Any) -> None:
    """Reads hang and the health check does not answer (no evidence from the dashboard):
    the backend's view that the head's GCS is gone is, within about the grace."""
    backend, handle, gcs = local_head
    dash = Dashboard(["RUNNING", "hang"], gcs="hang")
    try:
        watch = JobWatch(RayJobs(dash.url, cluster=handle.name), JOB, **FAST,
                         head=HeadEvidence.of(backend, handle, timeout=2.0))
        assert watch.status() is JobStatus.RUNNING
        gcs.kill()
        seconds, err = _watch_until_lost(watch)
        assert FAST["grace"] <= seconds < FAST["grace"] + 2.0
        assert "its dashboard's health check does not answer either" in str(err)
        assert "its head node's gcs_server is gone" in str(err)
        assert "ceiling" not in str(err)
    finally:
        dash.die()


def test_a_slow_local_dashboard_with_its_gcs_running_is_not_lost_before_the_ceiling(
        local_head: Any) -> None:
    backend, handle, _ = local_head
    dash = Dashboard(["RUNNING", "hang"], gcs="hang")
    try:
        watch = JobWatch(RayJobs(dash.url, cluster=handle.name), JOB, **FAST,
                         head=HeadEvidence.of(backend, handle, timeout=2.0))
        assert watch.status() is JobStatus.RUNNING
        seconds, err = _watch_until_lost(watch)
        assert seconds >= FAST["ceiling"]
        assert isinstance(err, ClusterLost)
        assert "ceiling" in str(err)
        assert "its head node's gcs_server runs" in str(err)
    finally:
        dash.die()
