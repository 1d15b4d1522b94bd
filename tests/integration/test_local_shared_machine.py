"""One machine, several parties: OS users, deployment instances, a home wiped under a running
cluster. A local cluster made as one OS user and deleted as another (a setup with
``run_as_user``, a home shared through a group) must fail to delete and keep its state, not
report it deleted and drop the only record that finds its processes; a lost state folder must
not hide its processes; a create must not end another instance's half-made cluster. The
two-user case needs root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ephemeral.backends.base import Endpoints, make_handle
from ephemeral.backends.local import LocalBackend, procs
from ephemeral.backends.local.state import ClusterState, PlannedNode, save
from ephemeral.specs import ClusterIdentity, resolve

NOBODY = 65534
# The deleting user: everything is imported first (the interpreter lives where that user may
# not read), then the process becomes that user.
DELETE_AS_NOBODY = f"""
import os, sys
from pathlib import Path
from ephemeral.backends.local import LocalBackend
from ephemeral.errors import TeardownIncomplete
backend = LocalBackend(Path(sys.argv[1]))
os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
try:
    backend.delete(sys.argv[2], wait=False)
except TeardownIncomplete as err:
    print(err)
    sys.exit(3)
print("deleted")
"""


@pytest.fixture
def shared_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="eph-shared-", dir="/tmp"))
    home.chmod(0o777)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _open_to_all(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as two OS users needs root")
def test_another_users_deletion_fails_and_keeps_the_state(shared_home: Path) -> None:
    name = "made-as-root"
    cdir = shared_home / "clusters" / name
    cdir.mkdir(parents=True)
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    handle = make_handle(spec, ClusterIdentity.manual(spec.spec.name, name), backend="local",
                         endpoints=Endpoints())
    uid = uuid.uuid4().hex
    # Like `ray start`: the session's leader exits once its daemon runs.
    plan = [PlannedNode(name="head", role="head", ip="127.0.12.2",
                        argv=["sh", "-c", "sleep 120 & exit 0"])]
    state = ClusterState(handle=handle, uid=uid, slot=11, plan=plan)
    state.nodes.append(procs.spawn("head", plan[0].argv, log=cdir / "logs" / "head.log",
                                   exit_file=cdir / "exit" / "head",
                                   env={"PATH": "/usr/bin:/bin", procs.UID_ENV: uid,
                                        procs.DIR_ENV: str(cdir)}, cwd=cdir))
    save(cdir, state)
    _open_to_all(shared_home)
    deadline = time.monotonic() + 10

    def daemons() -> list[psutil.Process]:
        # the daemon alone: the session's leader (and any launcher) exits on its own once it
        # has started, and is not what the other user must fail to end
        return [p for p in procs.find(state.nodes, uid) if p.name() == "sleep"]

    while not (daemon := daemons()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon, "the node's daemon did not start"
    try:
        done = subprocess.run([sys.executable, "-c", DELETE_AS_NOBODY, str(shared_home), name],
                              capture_output=True, text=True, timeout=120, cwd="/tmp")
        assert done.returncode == 3, (done.stdout, done.stderr[-2000:])
        assert "OS user 0's: delete it as the user that created it" in done.stdout
        assert all(p.is_running() for p in daemon)
        assert (cdir / "state.json").exists()  # what finds the processes is still there
    finally:
        LocalBackend(shared_home).delete(name)
    assert not [p for p in daemon if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_cluster_whose_home_folder_was_wiped_is_still_deleted_by_name(
        local_backend: LocalBackend, ephemeral_home: Path) -> None:
    """A CI workspace wiped under a running cluster: its processes still carry their state
    folder's marker, and deleting it by name finds and ends them."""
    spec = resolve("spark/etl@1", "ci-cpu")
    handle = local_backend.create(spec, identity=ClusterIdentity.manual(spec.spec.name, "lost"))
    marker = {procs.DIR_ENV: str(ephemeral_home / "clusters" / handle.name)}
    deadline = time.monotonic() + 30
    while not procs.find_marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert procs.find_marked(marker)
    shutil.rmtree(ephemeral_home / "clusters" / handle.name)
    local_backend.delete(handle.name)
    assert procs.find_marked(marker) == []


def test_a_half_made_cluster_of_another_instance_is_not_ended_by_a_create(
        local_backend: LocalBackend, ephemeral_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Staging's creator died while starting nodes; prod creating a cluster of the same name on
    the same home must refuse, not end staging's half cluster (as `down` would refuse)."""
    from ephemeral.errors import IdentityConflict

    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    spec = resolve("spark/etl@1", "ci-cpu")
    cdir = ephemeral_home / "clusters" / "demo"
    cdir.mkdir(parents=True)
    handle = make_handle(spec, ClusterIdentity.manual(spec.spec.name, "demo"), backend="local",
                         endpoints=Endpoints())
    uid = uuid.uuid4().hex
    plan = [PlannedNode(name=n, role=r, ip="127.0.12.2", argv=["sleep", "120"])
            for n, r in (("master", "master"), ("worker-0", "worker"))]
    state = ClusterState(handle=handle, uid=uid, slot=11, plan=plan)
    state.nodes.append(procs.spawn("master", plan[0].argv, log=cdir / "master.log",
                                   exit_file=cdir / "exit" / "master",
                                   env={"PATH": "/usr/bin:/bin", procs.UID_ENV: uid,
                                        procs.DIR_ENV: str(cdir)}))
    save(cdir, state)  # one node of two: its creator died here
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    with pytest.raises(IdentityConflict, match="staging"):
        local_backend.create(spec, identity=ClusterIdentity.manual(spec.spec.name, "demo"))
    assert procs.find(state.nodes, uid)  # staging's master still runs
    assert (cdir / "state.json").exists()
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    local_backend.delete("demo")
    assert not procs.find(state.nodes, uid)


def test_the_runtime_folder_is_this_users_alone(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Slot claims, their lock and Ray's temporary folders live there: another local user who
    made it first, or may enter it, could block every create and deletion or read Ray's logs."""
    import tempfile

    from ephemeral.backends.local import slots
    from ephemeral.errors import BackendUnavailable

    monkeypatch.delenv("EPHEMERAL_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    default = tmp_path / f"ephemeral-{os.getuid()}"
    default.mkdir()
    default.chmod(0o755)  # as earlier versions made it
    assert slots.runtime_dir() == default
    assert default.stat().st_mode & 0o777 == 0o700
    default.rmdir()
    default.symlink_to(tmp_path)  # made first by someone, as a link
    with pytest.raises(BackendUnavailable, match="EPHEMERAL_RUNTIME_DIR"):
        slots.runtime_dir()
    default.unlink()

    # A configured folder of this user's is used as it is.
    mine = tmp_path / "rt"
    mine.mkdir()
    mine.chmod(0o750)
    monkeypatch.setenv("EPHEMERAL_RUNTIME_DIR", str(mine))
    assert slots.runtime_dir() == mine
    assert mine.stat().st_mode & 0o777 == 0o750
    if os.geteuid() == 0:
        # The default folder made first by another user is refused, nothing written in it.
        monkeypatch.delenv("EPHEMERAL_RUNTIME_DIR")
        default.mkdir(mode=0o777)
        os.chown(default, NOBODY, NOBODY)
        with pytest.raises(BackendUnavailable, match="not a folder of this OS user"):
            slots.claim(tmp_path / "state", 3)
        assert not list(default.iterdir())
        # A shared configured folder (another user's, 1777) gets a private one inside, and
        # keeps its own mode: other users' clusters live there too.
        shared = tmp_path / "shared"
        shared.mkdir()
        os.chown(shared, NOBODY, NOBODY)
        shared.chmod(0o1777)
        monkeypatch.setenv("EPHEMERAL_RUNTIME_DIR", str(shared))
        inside = slots.runtime_dir()
        assert inside == shared / f"ephemeral-{os.getuid()}"
        assert inside.stat().st_mode & 0o777 == 0o700
        assert shared.stat().st_mode & 0o7777 == 0o1777


def test_a_spark_daemon_never_takes_a_port_outside_its_own() -> None:
    """Spark's default tries the next 16 ports when one is taken: those are the slot's other
    nodes' or the next slot's. A taken port fails the node, and so the create, instead."""
    from ephemeral.backends.local import spark_nodes

    spec = resolve("spark/etl@1", "ci-cpu").spec
    nodes = spark_nodes.plan(spec, 0, Path("/tmp/w"), auth_props=Path("/tmp/a"),  # type: ignore[arg-type]
                             connect_props=Path("/tmp/c"))
    daemons = [n for n in nodes if n.role in ("master", "worker")]
    assert len(daemons) == 3
    assert all("-Dspark.port.maxRetries=0" in n.env["SPARK_DAEMON_JAVA_OPTS"] for n in daemons)
    connect = spark_nodes.plan(resolve("spark/etl@1", "ci-cpu", {"connect": True}).spec, 0,  # type: ignore[arg-type]
                               Path("/tmp/w"), auth_props=Path("/tmp/a"),
                               connect_props=Path("/tmp/c"))[-1]
    assert connect.role == "connect"
    assert "spark.port.maxRetries=0" in connect.argv
    assert not [a for a in connect.argv if a.startswith("spark.blockManager.port=")]


# A non-root user creates (in a process that exits, like `ephemeral up`) and deletes its own
# cluster whose node sessions hold several daemons: between SIGKILL and the reaping of the
# killed processes, the kernel hides a zombie's environment from its own user too.
OWN_TEARDOWN_AS_NOBODY = f"""
import os, sys, time, uuid
from pathlib import Path
from ephemeral.backends.base import Endpoints, make_handle
from ephemeral.backends.local import LocalBackend, procs
from ephemeral.backends.local.state import ClusterState, PlannedNode, save
from ephemeral.specs import ClusterIdentity, resolve
spec = resolve("ray/adhoc-cpu", "ci-cpu")
base = Path(sys.argv[1])
os.environ["EPHEMERAL_RUNTIME_DIR"] = str(base / "rt")
os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
for i in range(2):
    name = f"c{{i}}"; cdir = base / "clusters" / name; cdir.mkdir(parents=True)
    if os.fork() == 0:
        handle = make_handle(spec, ClusterIdentity.manual(spec.spec.name, name),
                             backend="local", endpoints=Endpoints())
        uid = uuid.uuid4().hex
        plan = [PlannedNode(name=f"n{{k}}", role="head" if k == 0 else "worker",
                            ip="127.0.12.2",
                            argv=["sh", "-c", "for i in 1 2 3; do sleep 300 & done; exit 0"])
                for k in range(3)]
        state = ClusterState(handle=handle, uid=uid, slot=11, plan=plan)
        for pn in plan:
            state.nodes.append(procs.spawn(pn.name, pn.argv, log=cdir / "logs" / pn.name,
                                           exit_file=cdir / "exit" / pn.name, cwd=cdir,
                                           env={{"PATH": "/usr/bin:/bin", procs.UID_ENV: uid,
                                                procs.DIR_ENV: str(cdir)}}))
        save(cdir, state)
        os._exit(0)
    os.wait()
    time.sleep(0.5)
    LocalBackend(base).delete(name, wait=False)  # raises if any is taken for another user's
    print("deleted", name, flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another OS user needs root")
def test_a_users_own_teardown_is_not_failed_by_its_killed_processes(shared_home: Path) -> None:
    os.chown(shared_home, NOBODY, NOBODY)
    done = subprocess.run([sys.executable, "-c", OWN_TEARDOWN_AS_NOBODY, str(shared_home)],
                          capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert done.returncode == 0, (done.stdout, done.stderr[-2000:])
    assert done.stdout.split() == ["deleted", "c0", "deleted", "c1"]
