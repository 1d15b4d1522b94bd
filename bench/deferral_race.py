"""How often Airflow 3.3 fails a deferred task whose trigger fires at once, with and without
the provider's settle hold (``ephemeral.airflow.settle``), on the real services.

A live stack (``ephemeral.devstack``: api-server, scheduler with the LocalExecutor,
dag-processor, triggerer; PostgreSQL) runs a DAG of 2 x 3 tasks that defer on a trigger which
fires the moment it runs; each resumed task works 3 s. Half the tasks' triggers hold their
event until the deferral has settled, half do not (the same trigger class, ``settles_at``
unset). The scheduler fails a task when the executor's late report of its deferral's exit
finds it queued or running again. Counts go to bench/results/deferral_race.json.

    python bench/deferral_race.py [RUNS] [MIN_HEARTBEAT_INTERVAL]   (default 6 runs, 5 s)

5 s is Airflow's default ``[workers] min_heartbeat_interval``; ``make airflow`` sets 1 s.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 6
INTERVAL = sys.argv[2] if len(sys.argv) > 2 else "5"
TASKS = 3  # of each kind per run

# The triggerer imports the trigger by its path: a module of its own on the stack's PYTHONPATH.
TRIGGER = '''
from airflow.triggers.base import TriggerEvent

from ephemeral.airflow.settle import SettlingTrigger


class AtOnce(SettlingTrigger):
    """Fires the moment it runs; held until ``settles_at`` when it has one."""

    def __init__(self, settles_at=None):
        super().__init__()
        self.settles_at = settles_at

    def serialize(self):
        return ("race_trigger.AtOnce", {"settles_at": self.settles_at})

    async def events(self):
        yield TriggerEvent({"fired": True})
'''

DAG = f'''
import datetime as dt
import time

from airflow.sdk import DAG, BaseOperator

from ephemeral.airflow.settle import settles_at
from race_trigger import AtOnce


class DeferAtOnce(BaseOperator):
    def __init__(self, *, hold, **kwargs):
        super().__init__(**kwargs)
        self.hold = hold

    def execute(self, context):
        self.defer(trigger=AtOnce(settles_at() if self.hold else None), method_name="resume")

    def resume(self, context, event=None):
        time.sleep(3)  # resumed work: the window in which a late report fails the task


with DAG("deferral_race", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False):
    for i in range({TASKS}):
        DeferAtOnce(task_id=f"held_{{i}}", hold=True)
        DeferAtOnce(task_id=f"unheld_{{i}}", hold=False)
'''


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from ephemeral.devstack import Stack
    from tests.airflow.live.stack import LIVE_ENV, clean_env

    counts = {"held": {"success": 0, "failed": 0}, "unheld": {"success": 0, "failed": 0}}
    with tempfile.TemporaryDirectory(prefix="deferral-race-") as tmp:
        base = Path(tmp)
        (base / "dags").mkdir()
        (base / "code").mkdir()
        (base / "code" / "race_trigger.py").write_text(TRIGGER)
        (base / "dags" / "deferral_race.py").write_text(DAG)
        stack = Stack(home=base / "airflow", dags=base / "dags", db="postgres",
                      ephemeral_home=base / "ephemeral", port=0, base_env=clean_env(),
                      extra_env={**LIVE_ENV, "PYTHONPATH": str(base / "code"),
                                 "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": INTERVAL})
        t0 = time.monotonic()
        stack.start()
        try:
            for n in range(RUNS):
                run_id = stack.trigger("deferral_race")
                stack.wait_finished("deferral_race", run_id, timeout=600)
                tis = stack.task_instances("deferral_race", run_id)
                for task_id, ti in tis.items():
                    kind = task_id.split("_")[0]
                    counts[kind]["success" if ti["state"] == "success" else "failed"] += 1
                print(f"run {n + 1}/{RUNS}: " + ", ".join(
                    f"{t}={ti['state']}" for t, ti in sorted(tis.items())), flush=True)
        finally:
            stack.stop()
            left = stack.processes()
        if left:
            print(f"processes of the stack left: {[p.pid for p in left]}")
            return 1
    result = {"runs": RUNS, "min_heartbeat_interval_s": float(INTERVAL), "counts": counts,
              "seconds": round(time.monotonic() - t0, 1)}
    out = ROOT / "bench" / "results" / "deferral_race.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for kind, c in counts.items():
        print(f"{kind:7s} {c['failed']} of {c['failed'] + c['success']} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
