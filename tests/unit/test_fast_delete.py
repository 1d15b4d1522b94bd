"""Deleting a local cluster kills its processes at once (SIGKILL, no shutdown hooks), leaves
no zombie of its own behind, and still gives other callers the SIGTERM grace they ask for."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psutil

from ephemeral.backends.local import procs

# A node that would take its time on SIGTERM (as a JVM's shutdown hooks do) and says so.
TRAPS_TERM = "trap 'echo term > {marker}; sleep 30' TERM; sleep 300 & wait"


def _node(tmp_path: Path, uid: str) -> tuple[procs.NodeProcess, Path]:
    marker = tmp_path / "got-sigterm"
    node = procs.spawn("n", ["/bin/sh", "-c", TRAPS_TERM.format(marker=marker)],
                       log=tmp_path / "n.log", exit_file=tmp_path / "n.exit",
                       env={"PATH": "/usr/bin:/bin", procs.UID_ENV: uid})
    # Until the wrapper and its shell run (the trap must be set before the kill).
    for _ in range(200):
        if len(procs.find([node], uid)) >= 3:
            break
        time.sleep(0.02)
    return node, marker


def test_grace_zero_kills_without_sigterm_and_leaves_nothing(tmp_path: Path) -> None:
    uid = uuid.uuid4().hex
    node, marker = _node(tmp_path, uid)
    assert procs.find([node], uid), "the node did not start"

    assert procs.kill_all([node], uid, grace=0.0, timeout=10.0) == []
    assert procs.find([node], uid) == []
    assert not marker.exists(), "the node got SIGTERM: its shutdown ran before the kill"
    # The wrapper is this process's child: reaped, not left as a zombie.
    try:
        assert psutil.Process(node.sid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


def test_a_grace_still_sends_sigterm_first(tmp_path: Path) -> None:
    uid = uuid.uuid4().hex
    node, marker = _node(tmp_path, uid)

    assert procs.kill_all([node], uid, grace=1.0, timeout=10.0) == []
    assert marker.exists(), "SIGTERM was not sent before the SIGKILL"
    assert procs.find([node], uid) == []
