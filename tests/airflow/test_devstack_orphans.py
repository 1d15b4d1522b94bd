"""A stack whose scheduler and triggerer were SIGKILLed (as the fault matrix does) leaves no
process behind when it stops: their children (serve-logs, LocalExecutor workers) outlive them,
retitled so that their environment no longer names the stack; stop() finds them by session.

It runs on the package's shared stack (tests/airflow/conftest.py), after every other test of it
(stopping the stack is part of what it checks): one stack start fewer in the suite."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from ephemeral.devstack.stack import Stack


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
@pytest.mark.local
def test_children_of_killed_components_are_stopped_with_the_stack(stack: Stack) -> None:
    try:
        stack.check_alive()
        # The scheduler starts serve-logs and its executor's workers (long since, in the suite).
        scheduler = psutil.Process(stack.procs["scheduler"].pid)
        deadline = time.monotonic() + 60
        while not scheduler.children() and time.monotonic() < deadline:
            time.sleep(1)
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
