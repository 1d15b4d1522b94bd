"""A local deletion acts on its own cluster's processes, all of them, and on nobody else's:
whatever the wall clock did since the cluster started, whatever a newer version wrote into its
state, whatever was copied or linked in its home. Each node here is a harmless ``sleep`` in a
session of its own, marked as a cluster's processes are."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ephemeral.backends.base import ClusterHandle
from ephemeral.backends.local import LocalBackend, procs
from ephemeral.backends.local.state import ClusterState, PlannedNode, save, state_file
from ephemeral.errors import BackendError, ClusterNotFound
from ephemeral.specs.identity import INSTANCE_LABEL


class Home:
    """A local backend's home with clusters of ``sleep`` nodes; every process it started is
    killed at the end, whatever the test did."""

    def __init__(self, root: Path) -> None:
        self.backend = LocalBackend(home=root / "home")
        self.nodes: list[procs.NodeProcess] = []

    def cdir(self, name: str) -> Path:
        return self.backend.home / "clusters" / name

    def node(self, name: str, env: dict[str, str]) -> procs.NodeProcess:
        cdir = self.cdir(name)
        node = procs.spawn("head", ["sleep", "300"], log=cdir / "logs" / "head.log",
                           exit_file=cdir / "exit" / "head",
                           env={"PATH": "/usr/bin:/bin", **env})
        self.nodes.append(node)
        deadline = time.monotonic() + 10
        while not any(p.name() == "sleep" for p in psutil.Process(node.sid).children()):
            assert time.monotonic() < deadline, "the node did not start"
            time.sleep(0.02)
        return node

    def cluster(self, name: str, instance: str | None = None) -> tuple[str, procs.NodeProcess]:
        uid = uuid.uuid4().hex
        node = self.node(name, {procs.UID_ENV: uid, procs.DIR_ENV: str(self.cdir(name))})
        handle = ClusterHandle(name=name, backend="local", engine="ray", spec_ref="ray/x@1",
                               spec_hash="h", created_at="2026-01-01T00:00:00Z",
                               expires_at="2026-01-02T00:00:00Z",
                               labels={INSTANCE_LABEL: instance} if instance else {})
        plan = [PlannedNode(name="head", role="head", ip="127.0.0.1", argv=["sleep", "300"])]
        save(self.cdir(name), ClusterState(handle=handle, uid=uid, slot=0, plan=plan,
                                           nodes=[node]))
        return uid, node

    def alive(self, node: procs.NodeProcess) -> bool:
        return any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                   for p in _session(node.sid))

    def stop(self) -> None:
        for node in self.nodes:
            for p in _session(node.sid):
                p.kill()
            psutil.wait_procs(_session(node.sid), timeout=5)


def _session(sid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if procs.os.getsid(p.pid) == sid:
                found.append(p)
        except OSError:
            continue
    return found


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    made = Home(tmp_path)
    try:
        yield made
    finally:
        made.stop()
        assert not any(made.alive(n) for n in made.nodes)


def test_a_clock_stepped_back_hides_no_process(home: Home) -> None:
    """Start times read by another process move with the wall clock (an NTP step, a VM
    resumed): recorded 5 s later than they now read, the deletion found nothing, said the
    cluster was deleted and removed its records while it ran. Its marker finds it."""
    uid, node = home.cluster("stepped")
    state = json.loads(state_file(home.cdir("stepped")).read_text())
    state["nodes"][0]["started_at"] += 5.0  # the clock read 5 s later then than it does now
    state_file(home.cdir("stepped")).write_text(json.dumps(state))
    assert procs.find([procs.NodeProcess.model_validate(state["nodes"][0])], uid)
    assert home.backend.delete("stepped")
    assert not home.alive(node)
    assert not home.cdir("stepped").exists()


def test_a_bare_name_never_deletes_another_deployments_cluster_its_state_unreadable(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state a newer version wrote (a field this one does not know) does not parse here; by
    name it was deleted whoever's it was. Its instance is read from the raw file."""
    _, node = home.cluster("theirs", instance="prod")
    path = state_file(home.cdir("theirs"))
    state = json.loads(path.read_text())
    state["nodes"][0]["pgid"] = node.sid  # a newer version's field
    path.write_text(json.dumps(state))
    with pytest.raises(ClusterNotFound, match=r"belongs to deployment instance 'prod'.*"
                       r"EPHEMERAL_INSTANCE=prod ephemeral down theirs"):
        home.backend.delete("theirs")
    assert home.alive(node)
    assert path.exists()
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")  # that deployment deletes it
    assert home.backend.delete("theirs")
    assert not home.alive(node)


def test_a_folder_linked_or_copied_by_hand_acts_on_no_other_cluster(home: Home) -> None:
    _, node = home.cluster("real")
    (home.cdir("real").parent / "link").symlink_to(home.cdir("real"))
    with pytest.raises(BackendError, match="is not a direct child"):
        home.backend.delete("link")
    shutil.copytree(home.cdir("real"), home.cdir("copy"))
    with pytest.raises(BackendError, match="is of cluster 'real', not 'copy'"):
        home.backend.delete("copy")
    assert home.alive(node)
    assert state_file(home.cdir("real")).exists()


def test_an_earlier_life_whose_state_was_lost_goes_with_the_name(home: Home) -> None:
    """Its state lost (a home wiped), a cluster's processes ran on unseen; made again under
    the name, the new life's deletion left them holding the slot's ports."""
    orphan = home.node("again", {procs.UID_ENV: uuid.uuid4().hex,
                                 procs.DIR_ENV: str(home.cdir("again"))})
    _, node = home.cluster("again")
    assert home.backend.delete("again")
    assert not home.alive(node)
    assert not home.alive(orphan)


def test_a_temp_root_edited_into_a_state_removes_only_a_temp_root(
        home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The slot claims of every cluster live beside the temp roots: a state naming them as its
    temp root had them removed, and the next cluster got a slot one still held."""
    from ephemeral.backends.local import slots

    monkeypatch.setenv("EPHEMERAL_RUNTIME_DIR", str(tmp_path / "run"))
    runtime = slots.runtime_dir()
    (runtime / "slots").mkdir(parents=True, exist_ok=True)
    _, node = home.cluster("edited")
    path = state_file(home.cdir("edited"))
    state = json.loads(path.read_text())
    state["temp_root"] = str(runtime / "slots")
    path.write_text(json.dumps(state))
    assert home.backend.delete("edited")
    assert (runtime / "slots").is_dir()
    assert not home.alive(node)
