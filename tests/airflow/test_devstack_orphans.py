"""A stack whose scheduler and triggerer were SIGKILLed (as the fault matrix does) leaves no
process behind when it stops: their children (serve-logs, LocalExecutor workers) outlive them,
retitled so that their environment no longer names the stack; stop() finds them by session."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from ephemeral.devstack.stack import Stack

ROOT = Path(__file__).resolve().parents[2]


def in_sessions(sessions: set[int]) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) in sessions:
                found.append(p)
        except (OSError, psutil.Error):
            continue
    return found


@pytest.mark.slow
def test_children_of_killed_components_are_stopped_with_the_stack(tmp_path: Path) -> None:
    stack = Stack(home=tmp_path / "airflow", dags=ROOT / "dags", port=0)
    try:
        stack.start()
        time.sleep(10)  # the scheduler starts serve-logs and its executor's workers
        for name in ("scheduler", "triggerer"):
            stack.kill(name)
            stack.launch(name)
        time.sleep(10)
        orphans = [p for p in in_sessions(set(stack.sessions))
                   if p.pid not in {proc.pid for proc in stack.procs.values()}]
        assert orphans, "the killed components left no child to find (nothing was tested)"
    finally:
        stack.stop()
    left = in_sessions(set(stack.sessions))
    for p in left:  # never leave them, even when the assertion fails
        p.kill()
    assert not left, [p.pid for p in left]
