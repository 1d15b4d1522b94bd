"""Start node processes as daemons in sessions of their own, find them again, kill exactly them.

Each node runs under a small ``sh`` wrapper started with ``setsid``: the wrapper's pid is the
node's session id, every process the node starts (raylet, gcs_server, dashboard, JVMs) stays in
that session, and the wrapper writes the node's exit code to a file any process can read (the
process that creates a cluster is rarely the one that probes or deletes it). Processes are also
marked with ``EPHEMERAL_CLUSTER_UID`` in their environment, which catches any that leave the
session. Nothing here ever runs ``ray stop``, which kills every Ray process on the host.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import psutil
from pydantic import BaseModel, ConfigDict

UID_ENV = "EPHEMERAL_CLUSTER_UID"
DIR_ENV = "EPHEMERAL_CLUSTER_DIR"  # the state folder: finds processes when state.json is lost

# Run before a node that must not start until another listens (Spark workers retry a master
# that is not up yet only after 5-20 s). Exits 3 when the port never opens.
_WAIT_PORT = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
print(f"gave up waiting for {host}:{port}", flush=True)
sys.exit(3)
"""


class NodeProcess(BaseModel):
    """A started node: the session it runs in and where its log and exit code go."""

    model_config = ConfigDict(extra="forbid")

    name: str
    sid: int
    started_at: float
    """Process start time of the session leader (guards against pid reuse)."""
    log: str
    exit_file: str

    def exit_code(self) -> int | None:
        try:
            text = Path(self.exit_file).read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.lstrip("-").isdigit() else None

    def log_tail(self, lines: int = 25) -> str:
        try:
            with open(self.log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                text = fh.read().decode(errors="replace")
        except FileNotFoundError:
            return f"--- {self.name}: no log at {self.log}"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.name} (log {self.log}):\n{tail}"


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    exit_file: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    wait_for: str | None = None,
    wait_timeout: float = 120.0,
) -> NodeProcess:
    """Run ``argv`` in a new session, its output to ``log``, its exit code to ``exit_file``.

    With ``wait_for`` ("host:port") the node starts only once that address accepts connections.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    exit_file.parent.mkdir(parents=True, exist_ok=True)
    exit_file.unlink(missing_ok=True)
    run = shlex.join(argv)
    if wait_for:
        host, port = wait_for.rsplit(":", 1)
        wait = shlex.join([sys.executable, "-c", _WAIT_PORT, host, port, str(wait_timeout)])
        run = f"{wait} && {run}"
    script = f"{run}\necho $? > {shlex.quote(str(exit_file))}\n"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.Error:  # exited already; the exit file tells why
        started = time.time()
    return NodeProcess(name=name, sid=proc.pid, started_at=started, log=str(log),
                       exit_file=str(exit_file))


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def find(nodes: Iterable[NodeProcess], uid: str | None) -> list[psutil.Process]:
    """Live processes of a cluster: in one of its node sessions, or carrying its uid marker."""
    sessions = {n.sid: n.started_at for n in nodes}
    me = os.getpid()
    found: list[psutil.Process] = []
    by_session: dict[int, list[psutil.Process]] = {}
    for p in psutil.process_iter(["pid", "create_time"]):
        pid = p.info["pid"]
        if pid == me or not _alive(p):
            continue
        try:
            sid = os.getsid(pid)
        except OSError:
            continue
        # A session id can outlive its leader and be reused only by a newer process that calls
        # setsid; the start-time check keeps a recycled pid from being mistaken for a node.
        if sid in sessions and (p.info["create_time"] or 0) >= sessions[sid] - 1.0:
            by_session.setdefault(sid, []).append(p)
            continue
        # The marker alone (a random id) says whose it is: no start time is compared here, as
        # a start time read by another process moves with the wall clock (an NTP step back
        # made a deletion find nothing, report success and remove the records of a live one).
        if uid is not None and _has_uid(p, uid):
            found.append(p)
    for sid, members in by_session.items():
        # Once every process of a node's session is gone, Linux may give its id to a new,
        # unrelated session: a session is ours only while its original leader lives or one of
        # its members carries our marker.
        if uid is None or leader_is(sid, sessions[sid]) or any(_has_uid(m, uid) for m in members):
            found.extend(members)
    return found


def in_session(node: NodeProcess, uid: str) -> list[psutil.Process]:
    """The live processes of ``node``'s own session, while it is the node's: its leader runs,
    or one of them carries the cluster's marker (no start time compared, as in ``find``). Only
    the session's members are read: it runs at every readiness probe."""
    members = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.info["pid"]) == node.sid and _alive(p):
                members.append(p)
        except OSError:
            continue
    if leader_is(node.sid, node.started_at) or any(_has_uid(m, uid) for m in members):
        return members
    return []


def session_names(node: NodeProcess, uid: str) -> set[str]:
    """The names of the live processes in ``node``'s session (``gcs_server``, ``raylet``)."""
    names: set[str] = set()
    for p in in_session(node, uid):
        try:
            names.add(p.name())
        except psutil.Error:
            continue
    return names


def unreadable_in_session(node: NodeProcess, owner: int | None = None) -> list[psutil.Process]:
    """The live processes of ``node``'s session that belong to another OS user (the one who
    made the cluster, ``owner``, when given: say a setup with ``run_as_user``): this process can
    neither read their markers nor end them, so their absence from ``find`` and
    ``session_names`` proves nothing. Zombies (whose environment the kernel hides from their
    own user too) and a session whose id a newer leader took are not the cluster's."""
    try:
        leader = psutil.Process(node.sid)
        if _alive(leader) and abs(leader.create_time() - node.started_at) >= 1.0:
            return []  # a newer process leads a session of this id: not the node's
    except psutil.Error:
        pass  # the leader is gone, as ray start's is once its node runs
    me = os.getuid()
    hidden = []
    for p in psutil.process_iter(["pid", "create_time"]):
        try:
            if os.getsid(p.info["pid"]) != node.sid or \
                    (p.info["create_time"] or 0) < node.started_at - 1.0 or not _alive(p):
                continue
            uid = _uid(p)
            if uid == me or (owner is not None and uid != owner):
                continue
            p.environ()
        except psutil.AccessDenied:
            hidden.append(p)
        except (OSError, psutil.Error):
            continue
    return hidden


def _uid(p: psutil.Process) -> int:
    """The OS user a process runs as."""
    return int(p.uids().real)


def _has_uid(p: psutil.Process, uid: str) -> bool:
    try:
        return p.environ().get(UID_ENV) == uid
    except psutil.Error:
        return False


def leader_is(sid: int, started_at: float) -> bool:
    """Whether the session's original leader (same pid and start time) still runs."""
    try:
        leader = psutil.Process(sid)
        return _alive(leader) and abs(leader.create_time() - started_at) < 1.0
    except psutil.Error:
        return False


def describe(procs: Iterable[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"pid {p.pid} ({p.name()})")
        except psutil.Error:
            out.append(f"pid {p.pid}")
    return out


def find_marked(markers: Mapping[str, str]) -> list[psutil.Process]:
    """Live processes whose environment carries any of ``markers`` (name -> value)."""
    me, found = os.getpid(), []
    for p in psutil.process_iter(["pid"]):
        if p.info["pid"] == me or not _alive(p):
            continue
        try:
            env = p.environ()
        except psutil.Error:
            continue
        if any(env.get(k) == v for k, v in markers.items()):
            found.append(p)
    return found


def kill_marked(markers: Mapping[str, str], *, timeout: float = 10.0) -> list[psutil.Process]:
    """``kill_all`` for a cluster known only by the markers of its processes."""
    return _kill(lambda: find_marked(markers), grace=1.0, timeout=timeout)


def kill_all(
    nodes: Sequence[NodeProcess], uid: str, *, grace: float = 1.0, timeout: float = 10.0,
    markers: Mapping[str, str] | None = None,
) -> list[psutil.Process]:
    """SIGTERM the cluster's processes, SIGKILL what is left after ``grace`` (at once when
    ``grace`` is 0); return survivors. With ``markers``, also every process carrying one (its
    state folder's: what an earlier life of the name left when its state was lost)."""
    def everything() -> list[psutil.Process]:
        found = {p.pid: p for p in find(nodes, uid)}
        for p in find_marked(markers) if markers else []:
            found.setdefault(p.pid, p)
        return list(found.values())

    return _kill(everything, grace=grace, timeout=timeout)


def _kill(finder: Callable[[], list[psutil.Process]], *, grace: float,
          timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    alive = finder()
    if not alive:
        return []
    if grace > 0:
        for p in alive:
            _signal(p, signal.SIGTERM)
        _wait_gone(alive, grace)
    # Processes can fork while we kill; look again until nothing of the cluster is left.
    while time.monotonic() < deadline:
        alive = [p for p in {*alive, *finder()} if _alive(p)]
        if not alive:
            return []
        for p in alive:
            _signal(p, signal.SIGKILL)
        _wait_gone(alive, 0.5)
    return [p for p in {*alive, *finder()} if _alive(p)]


def _wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    """Until none of ``procs`` runs. Not ``psutil.wait_procs``: a killed process whose parent
    is another process stays a zombie until that parent reaps it, and waiting for the zombie
    to vanish would add the whole timeout to every deletion."""
    end, me = time.monotonic() + timeout, os.getpid()
    mine = [p for p in procs if _parent(p) == me]

    def reap() -> None:  # our own children (and only those), zombies included, once
        for p in list(mine):
            with contextlib.suppress(OSError):
                if os.waitpid(p.pid, os.WNOHANG)[0] == p.pid:
                    mine.remove(p)

    while True:
        reap()
        if not any(_alive(p) for p in procs):
            reap()  # a child that died after the pass above is a zombie now: reap it too
            return
        if time.monotonic() >= end:
            return
        time.sleep(0.02)


def _parent(p: psutil.Process) -> int | None:
    try:
        return p.ppid()
    except psutil.Error:
        return None


def _signal(p: psutil.Process, sig: signal.Signals) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass
