"""Triggers that do not fire before their deferral has settled.

Airflow 3.3 fails a deferred task whose trigger fires before the scheduler has processed the
executor's report of the deferral's own exit: by then the task is queued again, and the
scheduler takes that stale report for a task that died (apache/airflow#67287, #72716; the fix,
#72767, is not released). The report is late because the worker's supervisor, once the task
process has closed its sockets, only notices the exit at its next wake-up, up to
``[workers] min_heartbeat_interval`` (5 s by default) later. Measured on a live stack: every
third deferral's report took 5.1 s at the default, 1.1 s at 1 s.

So a trigger run by the triggerer holds its event until ``settles_at``: the deferral's time,
plus that interval, plus a margin for the scheduler's loop to take the report in. Only work
that ends within those few seconds of its deferral waits; a triggerer that restarts later
holds nothing. ``dag.test()`` runs triggers in line, with no executor to race, and does not set
``task_instance``: nothing is held there. ``settles_at`` is the worker's wall clock, read by the
triggerer's: a triggerer whose clock runs behind holds longer, never more than ``LONGEST``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from airflow.triggers.base import BaseTrigger, TriggerEvent

MARGIN = 2.0  # seconds for the scheduler's loop (1 s idle sleep by default) to read the report
LONGEST = 30.0  # a hold never exceeds this, whatever the interval or the clocks say


def settles_at(now: float | None = None) -> float:
    """When the executor's report of a deferral made ``now`` (epoch seconds) has reached the
    scheduler, by this worker's configuration. Called in the task, just before it defers."""
    from airflow.sdk import conf

    interval = conf.getfloat("workers", "min_heartbeat_interval", fallback=5.0)
    return (time.time() if now is None else now) + min(max(interval, 0.0) + MARGIN, LONGEST)


class SettlingTrigger(BaseTrigger):
    """A trigger whose events wait for ``settles_at``. Subclasses write ``events()``."""

    settles_at: float | None = None

    def events(self) -> AsyncGenerator[TriggerEvent, None]:
        raise NotImplementedError

    def hold(self) -> float:
        """Seconds to hold an event now: none in line, none once settled."""
        if self.settles_at is None or self.task_instance is None:
            return 0.0
        return min(max(self.settles_at - time.time(), 0.0), LONGEST)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        fired = False
        try:
            async with aclosing(self.events()) as events:
                async for event in events:
                    if (wait := self.hold()) > 0:
                        self.log.info("holding the event %.1fs: the deferral has not settled "
                                      "(see ephemeral.airflow.settle)", wait)
                        await asyncio.sleep(wait)
                    fired = True
                    yield event
        except asyncio.CancelledError:
            # In line (dag.test(), airflow dags/tasks test) a cancel before the event is the
            # user's Ctrl-C, and no triggerer is there to call on_kill: the wait's work would
            # run on unstopped. After it, the cancel is asyncio.run closing this generator,
            # whose first event the task took and resumes with.
            if self.task_instance is None and not fired:
                try:
                    await self.on_kill()
                except Exception:  # as the triggerer treats it: logged, the cancel goes on
                    self.log.warning("on_kill failed", exc_info=True)
            raise
