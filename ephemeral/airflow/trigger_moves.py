"""Telling a user's kill from a trigger moved to another triggerer.

Airflow 3.3 calls a trigger's ``on_kill`` when a user marks its deferred task failed or
success, or clears it, and that is when the triggers here delete their cluster or stop their
job. It also calls it, with the same cancel message, on a triggerer that took too long to
heartbeat (a pause, a full node) once another triggerer has taken its triggers over
(``TriggerRunnerSupervisor.update_triggers`` cancels every running trigger no longer assigned
to it; apache/airflow#73454). The task is then still deferred and the other triggerer runs the
same wait: deleting there would fail a healthy setup, stopping would kill a healthy job.

A user's action always moves the task out of ``deferred`` before the trigger is cancelled; a
move never does. So ``on_kill`` first asks the API server for the task's state (the triggerer's
own channel, as a task does) and stands down while the task is still deferred. When that cannot
be asked (``dag.test()``, which runs triggers in line; an API that does not answer), it acts as
a kill: a teardown still follows either way, but a user who marked the task expects it now.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


def _state(ti: Any) -> str | None:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    states = RuntimeTaskInstance.get_task_states(
        dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id],
        map_index=ti.map_index)
    key = ti.task_id if ti.map_index is None or ti.map_index < 0 \
        else f"{ti.task_id}_{ti.map_index}"
    state = states.get(ti.run_id, {}).get(key)
    return None if state is None else str(getattr(state, "value", state))


async def still_deferred(trigger: Any) -> bool:
    """Whether ``trigger``'s task is still deferred: its cancel was a move, not a kill."""
    ti = getattr(trigger, "task_instance", None)
    if ti is None or not all(hasattr(ti, a) for a in ("dag_id", "run_id", "task_id")):
        return False
    try:
        state = await asyncio.to_thread(_state, ti)  # the channel blocks: not on the loop
    except Exception as err:  # noqa: BLE001 - unknown: treat it as the kill it most likely is
        log.warning("could not read the state of %s/%s (%s): acting on the kill",
                    ti.run_id, ti.task_id, err)
        return False
    return state == "deferred"
