"""By-hand baselines the bench can always take back, however it ends.

Each baseline node runs in a session of its own with a marker in its environment, started and
killed by the local backend's own ``procs`` (SIGTERM, then SIGKILL of every process found by
session or marker, until none is left), so a baseline leaves nothing behind when it finishes,
fails or is interrupted. Ports come fresh for every round: a round never meets the GCS or master
of the one before, and never a port someone else on this shared machine holds.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn

import psutil

from ephemeral.backends.local import procs

# Below the local backend's port blocks (20000+) and Linux's ephemeral range (32768+), so
# neither our clusters nor outgoing connections take a port between its pick and its use.
PORT_RANGE = (12000, 19999)
_taken: set[int] = set()


def _free(port: int) -> bool:
    """Nobody listens on ``port`` at any address (a wildcard bind fails if anyone does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def port_open(addr: str) -> bool:
    """Whether ``host:port`` accepts a connection now (the benches' start-up probes)."""
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.2).close()
        return True
    except OSError:
        return False


def port_block(size: int) -> int:
    """First port of ``size`` consecutive free ports, never one handed out before in this run."""
    lo, hi = PORT_RANGE
    starts = list(range(lo, hi - size, size))
    random.shuffle(starts)
    for start in starts:
        block = range(start, start + size)
        if not _taken.intersection(block) and all(_free(p) for p in block):
            _taken.update(block)
            return start
    raise RuntimeError(f"no {size} consecutive free ports in {lo}-{hi}")


def new_uid(label: str) -> str:
    """A marker naming this bench process, so a later run can tell its leftovers are orphans."""
    return f"bench-{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Nodes:
    """The processes of one by-hand baseline: spawned in their own sessions, marked, killed."""

    def __init__(self, tmp: Path, label: str) -> None:
        self.tmp = tmp
        self.uid = new_uid(label)
        self.started: list[procs.NodeProcess] = []

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(extra or {}),
                procs.UID_ENV: self.uid}

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              wait_for: str | None = None) -> procs.NodeProcess:
        node = procs.spawn(name, argv, log=self.tmp / f"{name}.log",
                           exit_file=self.tmp / f"{name}.exit", env=self.env(env),
                           wait_for=wait_for)
        self.started.append(node)
        return node

    def kill(self) -> None:
        """Kill every process of the baseline; raise if any survives."""
        left = procs.kill_all(self.started, self.uid)
        if left:
            raise RuntimeError(f"baseline {self.uid}: processes left after SIGKILL: "
                               f"{procs.describe(left)}")

    def tails(self) -> str:
        return "\n".join(n.log_tail() for n in self.started)


@contextmanager
def nodes(tmp: Path, label: str) -> Iterator[Nodes]:
    """A fresh ``tmp`` for one baseline; on the way out its processes are killed and checked
    gone and ``tmp`` is removed, whether the baseline succeeded or not."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    made = Nodes(tmp, label)
    try:
        yield made
    finally:
        try:
            made.kill()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def kill_marked(uid: str) -> list[str]:
    """Kill whatever carries the marker ``uid`` (for processes a script started, e.g.
    by_hand.sh); return what survived, described."""
    return procs.describe(procs.kill_all([], uid))


def _dead(pid: str) -> bool:
    return pid.isdigit() and not psutil.pid_exists(int(pid))


def sweep_orphans(tmp_root: Path) -> list[str]:
    """Kill the baselines of earlier bench runs that died without cleaning up (SIGKILL, a lost
    terminal): processes whose marker names a bench process that no longer runs, and their
    ``tmp_root/bench-*-PID`` folders."""
    orphans: set[str] = set()
    for p in psutil.process_iter():
        try:
            uid = p.environ().get(procs.UID_ENV, "")
        except psutil.Error:
            continue
        parts = uid.split("-")
        if uid.startswith("bench-") and len(parts) >= 4 and _dead(parts[-2]):
            orphans.add(uid)
    for uid in orphans:
        procs.kill_all([], uid)
    for folder in tmp_root.glob("bench-*-*"):
        if _dead(folder.name.rsplit("-", 1)[1]):
            shutil.rmtree(folder, ignore_errors=True)
    return sorted(orphans)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks clean up when the bench is stopped."""
    def stop(signum: int, _frame: FrameType | None) -> NoReturn:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def leftovers() -> list[str]:
    """Processes that still carry a bench marker (by-hand nodes of any bench run)."""
    found = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            uid = p.environ().get(procs.UID_ENV, "")
        except psutil.Error:
            continue
        if uid.startswith("bench-"):
            found.append(f"pid {p.pid} ({p.info['name']}, {uid})")
    return found


if __name__ == "__main__":  # `make bench` ends with this check
    if left := leftovers():
        sys.exit("bench left processes behind: " + ", ".join(left))
    print("bench: no by-hand process left")
