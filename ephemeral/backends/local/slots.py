"""Machine-wide slots: each local cluster gets its own loopback subnet and block of ports.

Slot ``k`` owns the addresses ``127.0.<k+1>.2`` and up (one per node, so Ray sees distinct node
IPs) and the ports ``20000 + 1000*k`` to ``+999``, below Linux's ephemeral range so outgoing
connections never take them. Claims live in a machine-wide folder (not under ``EPHEMERAL_HOME``)
so clusters of different homes, such as parallel test runs, never collide; a claim whose state
folder is gone is stale and is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ephemeral.errors import BackendUnavailable
from ephemeral.settings import folder

SLOTS = 12
PORT_BASE = 20000
SLOT_PORTS = 1000
MAX_NODES = 20
NAMED_PORTS_PER_NODE = 10
WORKER_PORTS_PER_NODE = 40


# The longest socket path Ray makes under a cluster's temp root (slot, node, its session
# folder with a 7-digit pid, plasma's socket), and what AF_UNIX allows (108 bytes with the NUL).
_SOCKET_TAIL = f"/r{SLOTS - 1}-abcdef/n19/session_2026-11-30_20-26-40_943232_4194304/sockets/" \
               "plasma_store"
_SOCKET_MAX = 107


def socket_room_problem(root: Path) -> str | None:
    """Why Ray nodes could not make their Unix sockets under runtime folder ``root``, or None.
    Ray only says so in a node's log, after the cluster was created."""
    if len(str(root).encode()) + len(_SOCKET_TAIL) <= _SOCKET_MAX:
        return None
    return (f"the local backend's runtime folder {root} is too long for the Unix sockets Ray "
            f"makes inside it (at most {_SOCKET_MAX - len(_SOCKET_TAIL)} bytes; sockets are "
            f"limited to {_SOCKET_MAX + 1}): set EPHEMERAL_RUNTIME_DIR to a shorter folder, "
            "such as /tmp/ephemeral or /run/ephemeral")


def runtime_dir() -> Path:
    """This OS user's short folder for slot claims and Ray's temporary folders (Ray's socket
    paths must stay under 108 bytes): ``$TMPDIR/ephemeral-<uid>``, made 0700. Another local user
    could otherwise hold its lock (stalling every create and deletion), read Ray's logs, or
    make it first and fill it with claims. A configured folder is used as it is when this user
    owns it; a shared one (``/run/ephemeral``, mode 1777) gets a folder of this user's inside."""
    uid = os.getuid()
    configured = folder("runtime_dir")
    path = configured or Path(tempfile.gettempdir()) / f"ephemeral-{uid}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = not configured
    if configured and not _owned(path):
        path, private = path / f"ephemeral-{uid}", True
        path.mkdir(mode=0o700, exist_ok=True)
    if not _owned(path):
        raise BackendUnavailable(
            f"the local backend's runtime folder {path} is not a folder of this OS user (uid "
            f"{uid}): whoever made it could block or read this user's clusters. Remove it, or "
            "set EPHEMERAL_RUNTIME_DIR to a folder of your own.")
    if private and stat.S_IMODE(path.lstat().st_mode) & 0o077:
        path.chmod(0o700)  # this user's own folder, made open by an earlier version
    return path


def _owned(path: Path) -> bool:
    """A folder (not a link to one) of this OS user's."""
    info = path.lstat()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def node_ip(slot: int, node: int) -> str:
    return f"127.0.{slot + 1}.{node + 2}"


def named_port(slot: int, node: int, index: int) -> int:
    assert index < NAMED_PORTS_PER_NODE
    assert node < MAX_NODES
    return PORT_BASE + SLOT_PORTS * slot + NAMED_PORTS_PER_NODE * node + index


def worker_port_range(slot: int, node: int) -> tuple[int, int]:
    start = (PORT_BASE + SLOT_PORTS * slot + NAMED_PORTS_PER_NODE * MAX_NODES
             + WORKER_PORTS_PER_NODE * node)
    return start, start + WORKER_PORTS_PER_NODE - 1


def _free(slot: int, nodes: int) -> bool:
    """No one listens on the slot's named ports (catches clusters started outside our claims)."""
    for node in range(nodes):
        for index in range(NAMED_PORTS_PER_NODE):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((node_ip(slot, node), named_port(slot, node, index)))
                except OSError:
                    return False
    return True


def held(owner: str) -> bool:
    """Whether a claim by the cluster whose state folder is ``owner`` still holds: it lapses
    with that folder."""
    return bool(owner) and Path(owner).exists()


def claim(state_dir: Path, nodes: int) -> int:
    """Claim a free slot for the cluster whose state lives in ``state_dir``."""
    if nodes > MAX_NODES:
        raise BackendUnavailable(f"the local backend runs at most {MAX_NODES} nodes per cluster")
    root = runtime_dir() / "slots"
    with locked(runtime_dir() / "slots.lock"):
        root.mkdir(exist_ok=True)
        for slot in range(SLOTS):
            f = root / str(slot)
            owner = f.read_text().strip() if f.exists() else ""
            if owner == str(state_dir):
                return slot
            if held(owner):
                continue
            if not _free(slot, nodes):
                continue
            f.write_text(str(state_dir))
            return slot
    raise BackendUnavailable(
        f"all {SLOTS} local cluster slots are in use; delete a cluster (ephemeral down) first")


def release(state_dir: Path, slot: int) -> None:
    f = runtime_dir() / "slots" / str(slot)
    with locked(runtime_dir() / "slots.lock"):
        if f.exists() and f.read_text().strip() == str(state_dir):
            f.unlink()
