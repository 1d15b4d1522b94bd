"""The reaper: the last line of defence against leaked clusters.

Airflow 3.3 never runs the teardown of a failed setup, and skips teardowns when dagrun_timeout
fires or a run is marked failed while its setup runs. The reaper deletes, among the clusters a
backend owns for this deployment instance (and only those):

- every cluster whose ``expires-at`` has passed (the spec's ``lifetime.ttl``);
- a cluster made by a DAG run that has been finished for longer than ``grace`` seconds;
- a cluster whose run has not been found (deleted, its DAG deleted) for longer than ``grace``
  by the reaper's memory, once the Airflow asked answers for this deployment in that pass (its
  DAG, another run of a cluster, the reaping DAG's own run): a wrong ``airflow_url`` answers for
  none, and then nothing is deleted for being unknown (a reaper without memory: at expiry);
- a cluster that runs nothing, asked just before, whose run is still running while its DAG has
  been paused (or stale: its file left the DAG folder) for longer than ``grace`` and no task
  of the run is under way (Airflow starts no new task of such a run: its teardown never comes;
  a task already running or queued goes on and may need the cluster), where the
  lookup tells a DAG's pause (the REST API; the reaping DAG cannot);
- a cluster whose spec sets ``lifetime.idleTimeout`` and that has been idle for longer, whatever
  its run's state (the idle rule below).

Otherwise it never deletes a cluster whose run is still running and unexpired. Run states come
from a ``RunLookup``: Airflow's REST API (the CLI), or the task SDK inside Airflow
(dags/reap_orphans.py). When a lookup knows a run's state but not when it ended, the reaper
remembers when it first saw it finished (a small JSON file), so the grace period still holds.

The idle rule. Busy is what ``ephemeral.activity`` says (a Ray job pending or running; a Spark
application, Connect operation or open Connect session). A cluster is idle since the latest of:

- its readiness: its setup's record of it (a DAG run's cluster); else as the engine reports it
  (Ray: its last node's start in the state API, counted only until work has run, so a node
  restarted later does not move the clock; Spark with Connect: the Connect server's
  registration with the master); without either, its creation (``created_at``), which is
  never later than its readiness: work that has ended proves it was ready, and a cluster that
  ran nothing is only judged once its engine says it is up (Ray: every planned node ALIVE;
  Spark: every worker ALIVE), else it is still starting or unknown;
- the end of the last work the engines report (a Ray job's end, a Spark application's start
  plus duration, a Connect session's or operation's end);
- the last time the reaper itself saw it busy (work that left no end time behind).

So the clock needs no memory of earlier runs: the memory-less CronJob (an emptyDir) enforces
the rule as the CLI and the DAG do (a never-used cluster's start aside, below), Spark Connect
clusters included, on every backend and in both Spark modes (the Connect server's UI tells
its sessions' and operations' ends). The exception is work that ended at a time nobody tells
(a Ray job listed without an end time: ``Activity.sightings_only``): then the clock starts at
the reaper's first sighting of the cluster, remembered in the memory file, and a reaper
without one never calls such a cluster idle (its TTL still holds).

It is deleted when ``now`` minus that exceeds ``idleTimeout``, with the reason "idle for 1834s,
idleTimeout 1800s", once its engine, asked again just before, still runs nothing. A cluster
whose APIs do not answer is never judged idle: a network blip must not take a busy cluster.
But one whose backend also says its head is gone (its head process or pod died), for longer
than ``idleTimeout`` by the reaper's memory, is dead and deleted; a reaper without memory
leaves it to its TTL. The reaper runs every few minutes, so a cluster goes up to one interval after its
timeout. A cluster that ran nothing and whose engine tells no readiness (a Spark cluster
without Connect) counts, for a reaper with memory (a file an earlier pass left: the CLI, the DAG
on a lasting home), from its first sighting of it up; for a memory-less one (the CronJob, whose
emptyDir each run starts empty) from its creation, start-up included: there one that takes longer
than its idleTimeout to start may go soon after all its workers are up, before its first
application if that comes after the reaper's next run.

Deletions. Every deletion of a pass is issued first, then all are waited for together, until
one deadline ``delete_budget`` seconds after the pass began (below the deadline of the job that
runs it: the CronJob's activeDeadlineSeconds, the reaping DAG's execution_timeout). A cluster
whose deletion hangs (a finalizer nobody clears) so holds back no other cluster's; one not gone
by the deadline is a decision with an error (the pass fails). A cluster found already being
deleted (by anyone, before this pass) is reported ("deleting since ..., finalizers ...") and
not waited for again; one deleting for longer than ``delete_budget`` is stuck: an error. A
deletion whose deleter does it all (``Deleting.in_background`` false: the local backend's) goes
on only while that deleter runs, so one found begun is finished by the pass, whatever the
cluster's expiry (a killed ``up`` left it holding a slot until its ttl).

Remembered times live in a JSON file (keyed by run, or by cluster name and creation time),
written to a unique temporary file and renamed over it (the CLI and the DAG may reap at once);
an unreadable file is logged and treated as empty, never a reason to stop reaping.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ephemeral.activity import Activity, cluster_activity
from ephemeral.backends.base import (
    ClusterBackend,
    ClusterHandle,
    Deleting,
    Deletion,
    HeadState,
    HeadView,
    OwnerSelector,
    require_instance,
    same_life,
)
from ephemeral.errors import EphemeralError, ListingIncomplete, SettingError, TeardownIncomplete
from ephemeral.notify import notify_reaped
from ephemeral.specs.identity import current_instance, parse_rfc3339, parse_utc, utc_text

log = logging.getLogger(__name__)
FINISHED = {"success", "failed"}
DEFAULT_GRACE_SECONDS = 600
DEFAULT_DELETE_BUDGET_SECONDS = 420.0
"""How long a pass may take until it stops waiting for its deletions: 7 minutes, below the
10 minutes the CronJob (activeDeadlineSeconds) and the reaping DAG (execution_timeout) give a
pass, whose notices and last listing come after; above a KubeRay GCS-FT finalizer's 300 s."""
REAPER = "reaper"  # who deleted a run's cluster, in its report (released_by)


@dataclass(frozen=True)
class RunInfo:
    state: str
    end_date: datetime | None = None


@dataclass(frozen=True)
class DagInfo:
    paused: bool
    stale: bool = False
    """Its file is gone from the DAG folder: the scheduler moves none of its runs on."""

    @property
    def halted(self) -> str | None:
        """Why no new task of its running runs starts, if none does."""
        return "paused" if self.paused else \
            "stale (its file left the DAG folder)" if self.stale else None


RunLookup = Callable[[str, str], "RunInfo | None"]
DagLookup = Callable[[str], "DagInfo | None"]
TaskLookup = Callable[[str, str], int]
"""How many task instances of a run are running or queued (``UNDER_WAY``)."""
ActivityCheck = Callable[[ClusterBackend, ClusterHandle], Activity]


@dataclass(frozen=True)
class Decision:
    cluster: str
    delete: bool
    reason: str
    deleted: bool = False
    error: str = ""
    unfound_for: float | None = field(default=None, repr=False, compare=False)
    """Seconds its run has not been found, by the reaper's memory (None: it was found)."""
    if_idle: bool = field(default=False, repr=False, compare=False)
    """Delete only when the cluster is seen running nothing just before."""
    deleting: bool = False
    """Its deletion was asked before this pass and is under way: reported, not waited for."""


def memory_file() -> Path:
    """This deployment instance's reaper memory in its home: instances sharing a home (staging
    and prod on one machine) each keep their own, since each pass keeps only the keys of the
    clusters it owns, and their runs' ids are the same."""
    from ephemeral.settings import get_settings

    settings = get_settings()
    path = settings.home / f"reaper-seen-{settings.instance}.json"
    legacy = settings.home / "reaper-seen.json"  # before 2026-11-30: one for every instance
    if not path.exists() and legacy.exists():
        with contextlib.suppress(OSError):  # without it the rules hold, later
            shutil.copyfile(legacy, path)
    return path


class FinishedMemory:
    """When each run was first seen finished, for lookups that do not know end dates; and when
    each cluster was first seen answering and last seen busy, for the idle rule."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: dict[str, str] = self._load(path) if path and path.exists() else {}
        self.remembers = bool(path and path.exists())
        """Whether an earlier pass left this memory: a first sighting then means one. A file
        written by every pass but found by none (the CronJob's emptyDir, a KubernetesExecutor
        pod's home) is no memory: its first sightings are all now."""

    @staticmethod
    def _load(path: Path) -> dict[str, str]:
        """The remembered times; an unreadable file (cut short, written over by hand) is
        forgotten with a warning: the rules hold without it, only more conservatively."""
        try:
            seen = json.loads(path.read_text())
            if not isinstance(seen, dict):
                raise ValueError(f"a JSON {type(seen).__name__}, not an object")
            for value in seen.values():
                parse_utc(str(value))
        except (OSError, ValueError) as err:
            log.warning("the reaper's memory %s is unreadable (%s); starting from an empty one",
                        path, err)
            return {}
        return {str(k): str(v) for k, v in seen.items()}

    def first_seen(self, key: str, now: datetime) -> datetime:
        if key not in self._seen:
            self._seen[key] = utc_text(now)
        return parse_utc(self._seen[key])

    def mark(self, key: str, now: datetime) -> None:
        self._seen[key] = utc_text(now)

    def get(self, key: str) -> datetime | None:
        return parse_utc(self._seen[key]) if key in self._seen else None

    def forget(self, key: str) -> None:
        """The run is unfinished again (cleared): its grace period starts anew when it ends."""
        self._seen.pop(key, None)

    def save(self, keep: set[str]) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file of its own in the same folder, renamed over the memory: the CLI and
        # the DAG may both reap at once, and neither may see the other's half-written file.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump({k: v for k, v in self._seen.items() if k in keep}, out)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def kept_for_debugging(handle: ClusterHandle) -> bool:
    """A setup with ``on_failure="keep"`` made it: only its TTL ends it."""
    from ephemeral.airflow.context import KEEP_LABEL  # no Airflow import: a label name

    return handle.labels.get(KEEP_LABEL) == "keep"


def run_keys(run: tuple[str, str]) -> tuple[str, str, str]:
    """Memory keys of a run: (first seen finished, first seen not found, first seen running
    with its DAG paused)."""
    key = "\x1f".join(run)
    return key, f"unfound\x1f{key}", f"paused\x1f{key}"


def judge(handle: ClusterHandle, *, lookup: RunLookup | None, now: datetime, grace: float,
          memory: FinishedMemory, dags: DagLookup | None = None,
          tasks: TaskLookup | None = None) -> Decision:
    expires = parse_utc(handle.expires_at)
    if now >= expires:
        return Decision(handle.name, True, f"expired at {handle.expires_at} (spec lifetime.ttl)")
    if kept_for_debugging(handle):
        return Decision(handle.name, False, f"kept for debugging (on_failure='keep') until "
                                            f"{handle.expires_at}")
    if handle.run is None:
        return Decision(handle.name, False, f"no owning DAG run; kept until {handle.expires_at}")
    dag_id, run_id = handle.run
    if lookup is None:
        return Decision(handle.name, False, f"run states unknown (no Airflow to ask); kept until "
                                            f"{handle.expires_at}")
    try:
        run = lookup(dag_id, run_id)
    except EphemeralError as err:
        # An error, not only a reason: a pass that cannot apply the run-end rule fails (exit
        # 1), or a reaper CronJob that lost Airflow would look green while nothing is reaped.
        return Decision(handle.name, False, "could not ask Airflow whether its run ended; kept",
                        error=str(err))
    key, unfound_key, paused_key = run_keys(handle.run)
    if run is None:
        # Judged on a 404 seen in an earlier pass too, never on one alone, whatever the grace:
        # a reaper without memory (the CronJob) leaves such a cluster to its TTL.
        earlier = memory.get(unfound_key) is not None
        missing = (now - memory.first_seen(unfound_key, now)).total_seconds()
        return Decision(handle.name, False, f"run {dag_id}/{run_id} not found for "
                                            f"{missing:.0f}s; kept",
                        unfound_for=missing if earlier else None)
    memory.forget(unfound_key)
    if run.state not in FINISHED:
        memory.forget(key)
        halted = _halted_for(dags, dag_id, paused_key, now, memory)
        if halted is not None and halted[1] > grace:
            why, since = halted
            # Pausing stops no task already running (nor a trigger): a job may still train
            # there, a task may be about to submit one, and the run resumes when the DAG is
            # unpaused. So only an idle cluster of a run with no task under way goes.
            if (busy := _tasks_under_way(tasks, dag_id, run_id)) is not None:
                return Decision(handle.name, False, f"run {dag_id}/{run_id} is {run.state}; its "
                                                    f"DAG {why} for {since:.0f}s, but {busy}")
            return Decision(handle.name, True, f"run {dag_id}/{run_id} is {run.state} but its "
                                               f"DAG has been {why} for {since:.0f}s (grace "
                                               f"{grace:.0f}s), no task of it is under way, "
                                               "and its cluster runs nothing: no new task of "
                                               "it starts", if_idle=True)
        return Decision(handle.name, False, f"run {dag_id}/{run_id} is {run.state}" + (
            f"; its DAG {halted[0]} for {halted[1]:.0f}s" if halted is not None else ""))
    ended = run.end_date or memory.first_seen(key, now)
    age = (now - ended).total_seconds()
    if age > grace:
        return Decision(handle.name, True, f"run {dag_id}/{run_id} {run.state} {age:.0f}s ago "
                                           f"(grace {grace:.0f}s)")
    return Decision(handle.name, False, f"run {dag_id}/{run_id} {run.state} {age:.0f}s ago; "
                                        f"within the {grace:.0f}s grace period")


def _halted_for(dags: DagLookup | None, dag_id: str, key: str, now: datetime,
                memory: FinishedMemory) -> tuple[str, float] | None:
    """Why the DAG's runs are halted (paused, stale) and for how many seconds the reaper has
    seen it so; None when they are not, or it cannot be told."""
    try:
        dag = dags(dag_id) if dags is not None else None
    except EphemeralError as err:
        log.warning("could not ask whether DAG %s is paused: %s", dag_id, err)
        return None
    if dag is None or dag.halted is None:
        memory.forget(key)
        return None
    return dag.halted, (now - memory.first_seen(key, now)).total_seconds()


def _tasks_under_way(tasks: TaskLookup | None, dag_id: str, run_id: str) -> str | None:
    """What keeps a halted run's cluster: tasks of it running or queued (``UNDER_WAY``), or
    not knowing; None when none is under way (or nobody can be asked: the rule as it was)."""
    if tasks is None:
        return None
    try:
        count = tasks(dag_id, run_id)
    except EphemeralError as err:
        return f"its tasks could not be asked ({err})"
    return f"{count} task(s) of it under way (running or queued)" \
        if count else None


def idle_keys(handle: ClusterHandle) -> tuple[str, str]:
    """Memory keys of (first seen answering, last seen busy); a cluster made again under the
    same name starts afresh."""
    return f"up\x1f{_life(handle)}", f"busy\x1f{_life(handle)}"


def dead_key(handle: ClusterHandle) -> str:
    """Memory key of when the reaper first saw the cluster's head gone."""
    return f"dead\x1f{_life(handle)}"


def _life(handle: ClusterHandle) -> str:
    """One cluster life in memory keys: a cluster made again under the same name is another."""
    return f"{handle.name}\x1f{handle.created_at}"


def judge_unreachable(backend: ClusterBackend, handle: ClusterHandle, activity: Activity, *,
                      now: datetime, memory: FinishedMemory) -> Decision:
    """A cluster whose engine does not answer: kept, unless its backend says its head is gone
    and has said so, at every pass of a reaper with memory, for longer than idleTimeout."""
    unknown = f"activity unknown ({activity.what})"
    # Only a cluster once up can die: a new one's head may be Pending for long (GPU nodes
    # scaling up), which a backend reports as gone. Up: its setup saw it ready, or its engine
    # answered this reaper before.
    was_up = memory.get(idle_keys(handle)[0]) is not None or _setup_ready(handle) is not None
    if not memory.remembers or not was_up:
        return Decision(handle.name, False, unknown)
    try:
        view = backend.head_view(handle)
    except Exception as err:  # noqa: BLE001 - unknown: kept, as an unanswered engine is
        log.warning("could not see the head of %s: %s", handle.name, err)
        view = HeadView(state=HeadState.UNKNOWN, reason=str(err))
    if view.state is not HeadState.GONE:
        memory.forget(dead_key(handle))
        return Decision(handle.name, False, unknown)
    gone = int((now - memory.first_seen(dead_key(handle), now)).total_seconds())
    timeout = handle.idle_timeout_s
    if timeout is not None and gone > timeout:
        return Decision(handle.name, True, f"dead: {unknown} and its head gone ({view.reason}) "
                                           f"for {gone}s, idleTimeout {timeout}s")
    return Decision(handle.name, False, f"{unknown}; its head gone ({view.reason}) for "
                                        f"{gone}s of idleTimeout {timeout}s")


def judge_idle(handle: ClusterHandle, activity: Activity, *, now: datetime,
               memory: FinishedMemory) -> Decision:
    """The idle rule (module docstring) for a cluster with ``idle_timeout_s``."""
    from ephemeral.report.deletions import ready_deadline

    timeout = handle.idle_timeout_s
    up_key, busy_key = idle_keys(handle)
    if activity.busy is None:
        return Decision(handle.name, False, f"activity unknown ({activity.what})")
    first_seen = memory.first_seen(up_key, now)
    if activity.busy:
        memory.mark(busy_key, now)
        return Decision(handle.name, False, f"busy: {activity.what}")
    # Work that ended unseen: only the reaper's own sightings bound when it ended.
    unseen = first_seen if activity.sightings_only else None
    last_busy = memory.get(busy_key)
    ran = activity.last_end is not None or last_busy is not None
    # When it became ready: its setup's record (a DAG run's cluster); else its newest node's
    # start, and only until something ran: a node that restarts later (a preempted or
    # crash-looping worker) is no new start of the idle clock.
    ready = _setup_ready(handle)
    planned = sum(g.floor for g in handle.groups)
    starting = int((now - first_seen).total_seconds())
    if ready is None and not ran and activity.nodes_alive is not None \
            and activity.nodes_alive < planned and (
                timeout is None or starting <= timeout or now.timestamp() <= ready_deadline(handle)):
        # Not known ready, nothing ran, nodes missing (an autoscaled group counts its floor):
        # still starting (GPU nodes scaling up), and the newest node's start would be no
        # readiness at all. For idleTimeout from the reaper's first sighting, and at least as
        # long as its setup waits for it (its ready deadline): a node that never comes then
        # leaves an idle cluster, judged from there on (without memory, the CronJob leaves it
        # to the TTL).
        return Decision(handle.name, False, f"still starting: {activity.nodes_alive} of "
                                            f"{planned} nodes ALIVE")
    up = ready if ready is not None else None if ran else activity.nodes_up
    # Nothing ran and nothing says when it became ready: a reaper with memory counts from its
    # first sighting of it up (all workers registered), so a slow start (GPU nodes scaling
    # up, images pulled) is not taken for idleness; one without (the CronJob) has only the
    # creation time.
    never_used = not ran and up is None
    seen_up = first_seen if never_used and memory.remembers else None
    since = max(m for m in (parse_utc(handle.created_at), up, unseen, seen_up,
                            activity.last_end, last_busy, activity.history_from) if m is not None)
    idle = int((now - since).total_seconds())  # whole seconds, as the memory file keeps times
    if timeout is not None and idle > timeout:
        return Decision(handle.name, True, f"idle for {idle}s, idleTimeout {timeout}s "
                                           f"({activity.what} since {utc_text(since)})")
    return Decision(handle.name, False, f"idle for {idle}s of idleTimeout {timeout}s")


def _setup_ready(handle: ClusterHandle) -> datetime | None:
    """When the setup saw the cluster ready (its run's record), None when unknown (a cluster
    made by hand, by an earlier version, or not ready yet). Never raises."""
    from ephemeral.report.deletions import ready_ts

    if handle.run is None:
        return None
    ts = ready_ts(handle, *handle.run)
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def _ask(activity: ActivityCheck, backend: ClusterBackend, handle: ClusterHandle) -> Activity:
    """The cluster's activity; a cluster this process cannot ask (its token Secret not made
    yet, an API server refusing, an answer cut short) is of unknown activity, so kept, and
    never a failure of the pass: the other clusters are still judged."""
    try:
        return activity(backend, handle)
    except EphemeralError as err:
        return Activity(None, f"cannot ask its APIs: {err}")
    except Exception as err:  # noqa: BLE001 - unknown, whatever the reason
        return Activity(None, f"cannot ask its APIs: {type(err).__name__}: {err}")


def reap(backend: ClusterBackend, *, lookup: RunLookup | None, grace: float = DEFAULT_GRACE_SECONDS,
         dry_run: bool = False, now: datetime | None = None, memory_file: Path | None = None,
         activity: ActivityCheck = cluster_activity, dags: DagLookup | None = None,
         tasks: TaskLookup | None = None, witness: tuple[str, str] | None = None,
         delete_budget: float = DEFAULT_DELETE_BUDGET_SECONDS) -> list[Decision]:
    """Judge every owned cluster and delete the orphans and idle ones (unless ``dry_run``).
    ``dags`` tells a DAG's pause, ``tasks`` a halted run's tasks under way; ``witness`` is a
    run the Airflow asked must know (the reaping DAG's own): evidence, with any run or DAG that
    answers, that it is this deployment's.
    Deletions are waited for until ``delete_budget`` seconds after the pass began."""
    require_instance(backend, current_instance(), "reaping")
    deletions = _Deletions(backend, delete_budget)
    now = now or datetime.now(UTC)
    memory = FinishedMemory(memory_file)
    answered: list[str] = []  # what this Airflow knew in this pass: it is the right one

    def asking(dag_id: str, run_id: str) -> RunInfo | None:
        assert lookup is not None
        info = lookup(dag_id, run_id)
        if info is not None:
            answered.append(f"run {dag_id}/{run_id}")
        return info

    dag_info = functools.cache(dags) if dags is not None else None
    decisions: list[Decision] = []
    unfound: list[tuple[int, ClusterHandle]] = []
    owned, unlisted = _listing(backend)
    # First what needs no engine asked (expiry, ended runs): a pass whose engines answer
    # slowly (a hanging Connect UI takes its whole timeout) runs out of time before it has
    # probed every cluster, never before it has deleted the expired ones.
    probe: list[tuple[int, ClusterHandle, Decision]] = []

    def settle(index: int, handle: ClusterHandle, d: Decision) -> Decision:
        """``d`` of decisions[index] carried out: a run unfound past the grace is judged once
        every run was asked; a deletion is issued (not in a dry run)."""
        if not d.delete and d.unfound_for is not None and d.unfound_for > grace:
            unfound.append((index, handle))
        elif d.delete and not dry_run:
            return deletions.issue(index, handle, d)
        return d

    for handle in owned:
        if handle.deleting is not None and handle.deleting.in_background:
            # asked before and going on: nothing to judge, nor to wait for
            decisions.append(_under_way(handle, handle.deleting, now, delete_budget))
            continue
        if handle.deleting is not None:  # begun by a deleter that stopped: finished now
            d = Decision(handle.name, True, f"{handle.deleting.describe()} and cut short (its "
                         "deleter stopped): finished now, whatever its expiry")
            decisions.append(settle(len(decisions), handle, d))
            continue
        try:
            d = judge(handle, lookup=asking if lookup is not None else None, now=now,
                      grace=grace, memory=memory, dags=dag_info, tasks=tasks)
        except Exception as err:  # noqa: BLE001 - one bad lookup must not stop the others
            decisions.append(_unjudged(handle, err))
            continue
        if d.if_idle or (not d.delete and handle.idle_timeout_s
                         and not kept_for_debugging(handle)):
            probe.append((len(decisions), handle, d))
            decisions.append(d)  # its place, taken by what the probe decides
        else:
            decisions.append(settle(len(decisions), handle, d))
    for i, handle, d in probe:
        by_idle = False
        try:
            if not d.delete:
                act = _ask(activity, backend, handle)
                if act.busy is None:
                    idle = judge_unreachable(backend, handle, act, now=now, memory=memory)
                else:
                    memory.forget(dead_key(handle))
                    idle = judge_idle(handle, act, now=now, memory=memory)
                    by_idle = idle.delete
                d = idle if idle.delete else Decision(d.cluster, False,
                                                      f"{d.reason}; {idle.reason}", error=d.error,
                                                      unfound_for=d.unfound_for)
        except Exception as err:  # noqa: BLE001 - one bad cluster must not stop the others
            decisions[i] = _unjudged(handle, err)
            continue
        if d.delete and ((by_idle and not dry_run) or d.if_idle) and \
                (again := _ask(activity, backend, handle)).busy is not False:
            # Asked again just before deleting: a job submitted since the judgement wins.
            d = Decision(d.cluster, False, f"kept: {again.what} now, after {d.reason}")
        decisions[i] = settle(i, handle, d)
    for i, handle in unfound:
        decisions[i] = _judge_unfound(handle, decisions[i], answered, grace=grace,
                                      dry_run=dry_run, dags=dag_info, lookup=lookup,
                                      witness=witness, deletions=deletions, index=i)
    deletions.finish(decisions)
    if unlisted is not None:  # what was seen is judged; the pass fails for what was not
        decisions.append(Decision(LISTING, False, "clusters of a kind this identity cannot "
                                  "list were not judged", error=str(unlisted)))
    # Objects with this backend's cluster labels that are no record it acts on: reported at
    # every pass, for a person to look at, never deleted (they may be anyone's).
    try:
        decisions += [Decision(name, False, f"left alone: {why}; delete it by hand if it is no "
                               "one's") for name, why in backend.disowned()]
    except EphemeralError as err:
        decisions.append(Decision(LISTING, False, "objects no record accounts for could not be "
                                  "looked for", error=str(err)))
    live, _ = _listing(backend)
    live_runs = {k for h in live if h.run is not None for k in run_keys(h.run)}
    memory.save(live_runs | {key for h in live for key in (*idle_keys(h), dead_key(h))})
    return decisions


LISTING = "(listing)"  # a decision about the pass's listing, not a cluster


def _unjudged(handle: ClusterHandle, err: Exception) -> Decision:
    return Decision(handle.name, False, "could not be judged; kept",
                    error=f"{type(err).__name__}: {err}")


def _listing(backend: ClusterBackend) -> tuple[list[ClusterHandle], ListingIncomplete | None]:
    """The clusters to judge, and the refusal that hid some kind of them, if any (a Role
    without one of its rules): those found are still judged and deleted."""
    try:
        return backend.list_owned(), None
    except ListingIncomplete as err:
        return err.found, err


def _judge_unfound(handle: ClusterHandle, d: Decision,
                   answered: list[str], *, grace: float, dry_run: bool,
                   dags: DagLookup | None, lookup: RunLookup | None,
                   witness: tuple[str, str] | None, deletions: _Deletions,
                   index: int) -> Decision:
    """A cluster whose run has not been found for longer than the grace period goes only on
    evidence that the Airflow asked is this deployment's: it answered for another run in this
    pass, knows the cluster's DAG, or knows ``witness``. An ``airflow_url`` naming another
    Airflow (or one restored empty) answers for none: nothing is deleted for being unknown."""
    assert handle.run is not None
    evidence = answered[0] if answered else None
    try:
        if evidence is None and dags is not None and dags(handle.run[0]) is not None:
            evidence = f"its DAG {handle.run[0]}"
        if evidence is None and witness is not None and lookup is not None and \
                lookup(*witness) is not None:
            evidence = f"run {'/'.join(witness)}"
    except Exception as err:  # noqa: BLE001 - no evidence: kept, as an unanswered lookup is
        log.warning("could not ask Airflow for evidence it knows this deployment: %s", err)
    if evidence is None:
        return Decision(d.cluster, False, f"{d.reason}: the Airflow asked answered for none of "
                        f"this deployment's runs or DAGs (is it the right one?); kept until "
                        f"{handle.expires_at}")
    d = Decision(d.cluster, True, f"run {'/'.join(handle.run)} not found for "
                 f"{d.unfound_for:.0f}s (grace {grace:.0f}s) while the Airflow asked knows "
                 f"{evidence}: deleted or its DAG deleted")
    return d if dry_run else deletions.issue(index, handle, d)


def _under_way(handle: ClusterHandle, deleting: Deleting, now: datetime,
               budget: float) -> Decision:
    """A cluster whose deletion someone asked before this pass: reported, not waited for again
    (a finalizer nobody clears would hold every pass). Longer than a pass's budget is stuck,
    an error for a person to look at (its finalizers say whose)."""
    try:
        age = (now - parse_utc(deleting.since)).total_seconds()
    except ValueError:
        age = None
    stuck = age is not None and age > budget
    return Decision(handle.name, False, f"{deleting.describe()}; not waited for again",
                    deleting=True, error=f"still being deleted after {age:.0f}s, longer than a "
                    f"pass's {budget:.0f}s: is a finalizer stuck?" if stuck else "")


class _Deletions:
    """A pass's deletions: each issued as it is decided (``start_delete``), then all waited for
    together until the pass's deadline, so one that hangs holds back none of the others. Their
    notices go out after that: a notifier that hangs or fails holds or stops no deletion."""

    def __init__(self, backend: ClusterBackend, budget: float) -> None:
        self.backend = backend
        self.budget = budget
        self.deadline = time.monotonic() + budget
        self.notices: list[tuple[ClusterHandle, str, Exception | None]] = []
        self.pending: list[tuple[int, ClusterHandle, Decision, Deletion, Callable[[], None]]] = []

    def issue(self, index: int, handle: ClusterHandle, d: Decision) -> Decision:
        """Delete the cluster life judged (decisions[index]), and only it: between the listing
        and now its run's teardown may have deleted it and a cleared run's setup made its name
        again, a life nobody judged. The report records the life deleted; ``start_delete``
        itself refuses any other (``same_life``), the look first keeps another's jobs and
        moments out of the report. The decision returned stands until ``finish``."""
        try:
            current = self.backend.owned(handle, OwnerSelector.of_target(handle))
            if current is None or not same_life(current, handle):
                return Decision(d.cluster, False, f"{d.reason}; kept: " + (
                    "it is gone since it was judged" if current is None else
                    f"its name is another cluster since (made at {current.created_at}), "
                    "judged at the next pass"))
            record = _for_the_report(self.backend, handle)
            deletion = self.backend.start_delete(handle)
            if deletion is None:
                return Decision(d.cluster, False, f"{d.reason}; kept: its name is another "
                                "cluster since it was judged, judged at the next pass")
        except EphemeralError as err:
            self.notices.append((handle, d.reason, err))  # a leak that still runs, above all
            return Decision(d.cluster, True, d.reason, error=str(err))
        self.pending.append((index, handle, d, deletion, record))
        return d

    def finish(self, decisions: list[Decision]) -> None:
        """Wait for every deletion issued, in turn, against the one deadline; then notify."""
        for index, handle, d, deletion, record in self.pending:
            try:
                deletion.wait(self.deadline)
            except EphemeralError as err:
                self.notices.append((handle, d.reason, err))
                late = isinstance(err, TeardownIncomplete) and time.monotonic() >= self.deadline
                decisions[index] = Decision(d.cluster, True, d.reason, error=(
                    f"not gone within the pass's {self.budget:.0f}s: " if late else "") + str(err))
                continue
            record()
            self.notices.append((handle, d.reason, None))  # a leak was found: it is heard of
            decisions[index] = Decision(d.cluster, True, d.reason, deleted=True)
        for notice in self.notices:  # each bounded in time and never raising (notify_reaped)
            notify_reaped(*notice)


def _for_the_report(backend: ClusterBackend, handle: ClusterHandle) -> Callable[[], None]:
    """Record, for its run's report, that the reaper deleted a run's cluster (the engine's jobs
    first, while it is there); the returned call records when the deletion finished. The
    cluster goes into the report at once (its run may have ended: no teardown will come), and
    a teardown that does come reports these moments (``released_by: reaper``) instead of its
    own, which would count the time since as the cluster's life. Never raises: the deletion
    matters."""
    from ephemeral.report.deletions import record_deleted
    from ephemeral.report.engines import engine_jobs
    from ephemeral.report.model import Release
    from ephemeral.report.store import write_release

    if handle.run is None:  # a cluster made by hand: no run, no report
        return lambda: None
    dag_id, run_id = handle.run
    rel = Release(name=handle.name, created_at=handle.created_at, task=REAPER,
                  teardown_started=datetime.now(UTC).timestamp(),
                  jobs=engine_jobs(backend, handle))

    def write(update: dict[str, float]) -> None:
        try:
            write_release(dag_id, run_id, rel.model_copy(update=update))
        except Exception as err:  # noqa: BLE001 - the report shows the teardown's moments
            log.warning("could not record the reaping of %s for its run's report: %s",
                        handle.name, err)

    def done() -> None:  # the release with its deletion's moment, and the report's part
        record_deleted(handle, by=REAPER, started=rel.teardown_started,
                       deleted=datetime.now(UTC).timestamp(), jobs=rel.jobs)

    write({})
    return done


AIRFLOW_URL_SETTING = "airflow_url (EPHEMERAL_AIRFLOW_URL, ephemeral reap --airflow-url)"


def check_airflow_url(url: str) -> None:
    """Refuse an Airflow API URL that is none (an http or https URL with a host) or that has
    credentials in it (``url_setting_problem``: it is shown on every decision and log line),
    naming the setting; SettingError, before any cluster is listed."""
    from ephemeral.backends.http import http_address, url_setting_problem
    from ephemeral.specs.pip_credentials import masked_uri

    problem = url_setting_problem(
        AIRFLOW_URL_SETTING, url, "give the token in AIRFLOW_API_TOKEN, or the user and "
        "password in EPHEMERAL_AIRFLOW_USER and EPHEMERAL_AIRFLOW_PASSWORD, and the URL bare")
    if problem is None and not http_address(url):
        problem = (f"{AIRFLOW_URL_SETTING} {masked_uri(url)!r} is no URL of Airflow's API: give "
                   "http:// or https:// and a host, e.g. http://airflow-api:8080")
    if problem is not None:
        raise SettingError("airflow_url", [("airflow_url", problem)])


def _bearer(token: str | None) -> str | None:
    """AIRFLOW_API_TOKEN as a header can carry it: a Secret file's trailing newline dropped, a
    blank one unset (the user and password then apply). One with whitespace or a control
    character inside is refused without showing it: the HTTP library's refusal of the header
    quotes the token, and the reaper prints every refusal."""
    token = (token or "").strip() or None
    if token is not None and (not token.isprintable() or any(c.isspace() for c in token)):
        raise SettingError("AIRFLOW_API_TOKEN", [("AIRFLOW_API_TOKEN", (
            "the token has a space, a line break or a control character inside it, which no "
            "HTTP header can carry; give the token alone (check the Secret or file it comes "
            "from)"))])
    return token


class AirflowApiLookup:
    """Run states from Airflow's REST API v2. Credentials come from the environment (a token,
    or a user and password exchanged for one), never from files in the repository. They go
    only to ``base_url`` (plain http off this host is warned of), never after a redirect
    (``ephemeral.backends.http.open_no_redirect``)."""

    SETTING = AIRFLOW_URL_SETTING

    def __init__(self, base_url: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, timeout: float = 10.0,
                 instance: str | None = None) -> None:
        from ephemeral.backends.http import plain_http_problem
        from ephemeral.specs.pip_credentials import masked_uri

        check_airflow_url(base_url)
        self.base_url = base_url.rstrip("/")
        self.shown = masked_uri(self.base_url)  # what messages show of it
        self._token = _bearer(token)
        self._credentials = (username, password) if username and password else None
        # Half a pair is no login: said once here and in every refusal (not a refused token).
        self._half_pair = ("EPHEMERAL_AIRFLOW_USER is set without EPHEMERAL_AIRFLOW_PASSWORD"
                           if username and not password else
                           "EPHEMERAL_AIRFLOW_PASSWORD is set without EPHEMERAL_AIRFLOW_USER"
                           if password and not username else None)
        if self._half_pair:
            log.warning("%s: the reaper cannot log in to Airflow with it; set both%s",
                        self._half_pair, "" if token else ", or AIRFLOW_API_TOKEN")
        self.timeout = timeout
        self.instance = instance  # whose clusters are judged: default this deployment's
        self._same_deployment = False
        carries = "the Airflow API token (AIRFLOW_API_TOKEN)" if token else \
            "the Airflow user's password (EPHEMERAL_AIRFLOW_PASSWORD)" if self._credentials \
            else None
        if carries and (problem := plain_http_problem(self.base_url, self.SETTING, carries)):
            # Warned, not refused: an in-cluster Service (http://airflow-api:8080, as the
            # reaper CronJob reaches it) is plain http by design.
            log.warning("%s; prefer https where the network between them is not trusted",
                        problem.replace("so it must be", "so it should be"))

    def _request(self, method: str, path: str, body: dict[str, str] | None = None,
                 auth: bool = True) -> tuple[int, object]:
        status, answer = self._send(method, path, body, auth)
        if status == 401 and auth and self._credentials and self._token is not None:
            # A token expired (Airflow's JWTs last [api_auth] jwt_expiration_time): log in
            # with the user and password again, once; a token alone stays refused (_why).
            self._token = None
            status, answer = self._send(method, path, body, auth)
        return status, answer

    def _send(self, method: str, path: str, body: dict[str, str] | None,
              auth: bool) -> tuple[int, object]:
        import urllib.error
        import urllib.request

        from ephemeral.backends.http import open_no_redirect, redirect_refused

        headers = {"Content-Type": "application/json"}
        if auth and (token := self.token()):
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base_url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body else None)
        try:  # a redirect would carry the token (or the password) to wherever it points
            with open_no_redirect(req, timeout=self.timeout) as resp:
                try:
                    return resp.status, json.loads(resp.read() or b"null")
                except ValueError:  # a page, not JSON: Airflow's UI answers unknown paths
                    return resp.status, None
        except urllib.error.HTTPError as err:
            if 300 <= err.code < 400:
                raise EphemeralError(redirect_refused(self.shown + path,
                                                      err.headers.get("Location"))) from None
            try:  # why, when the API says (the deployment endpoint's error)
                return err.code, json.loads(err.read() or b"null")
            except (ValueError, OSError):
                return err.code, None
        except (urllib.error.URLError, OSError) as err:
            raise EphemeralError(f"Airflow API at {self.shown} unreachable: {err}") from err

    def token(self) -> str | None:
        if self._token is None and self._credentials:
            user, password = self._credentials
            status, body = self._request("POST", "/auth/token",
                                         {"username": user, "password": password}, auth=False)
            if status not in (200, 201) or not isinstance(body, dict):
                raise EphemeralError(f"Airflow API refused the credentials (HTTP {status})")
            self._token = str(body["access_token"])
        return self._token

    def _why(self, status: int, body: object) -> str:
        if status == 401 and self._token is None and not self._credentials:
            return (f": no credentials were sent ({self._half_pair or 'none are set'}); set "
                    "AIRFLOW_API_TOKEN, or EPHEMERAL_AIRFLOW_USER and "
                    "EPHEMERAL_AIRFLOW_PASSWORD")
        if status == 401:
            return (": the token was refused (AIRFLOW_API_TOKEN expires after [api_auth] "
                    "jwt_expiration_time; with EPHEMERAL_AIRFLOW_USER and _PASSWORD the "
                    "reaper logs in again as it needs)")
        why = body.get("detail") or body.get("error") if isinstance(body, dict) else None
        return f": {why}" if isinstance(why, str) else ""

    def check_deployment(self) -> None:
        """Refuse an Airflow that says it is another deployment instance
        (``GET /ephemeral/deployment``, served by this package's plugin): staging's URL in
        production's reaper told of runs with production's ids that ended, and the reaper
        deleted running clusters. An Airflow without the plugin (404: no ephemeral in its
        api-server, or an older one) cannot say; its answers are taken as before."""
        from ephemeral.airflow.deployment import PATH, URL_PREFIX

        if self._same_deployment:
            return
        ours = self.instance or current_instance()
        status, body = self._request("GET", URL_PREFIX + PATH, auth=False)
        theirs = body.get("instance") if isinstance(body, dict) else None
        # Without the plugin, Airflow 3.3's UI route answers 200 with its page (older: 404).
        if status == 404 or (status == 200 and body is None):
            log.warning("the Airflow at %s cannot say which deployment it is (no %s%s: the "
                        "ephemeral package is missing from its api-server, or older); its run "
                        "states are taken as this deployment's", self.shown, URL_PREFIX, PATH)
        elif status != 200 or not isinstance(theirs, str):
            why = body.get("error") if isinstance(body, dict) else None
            raise EphemeralError(f"the Airflow at {self.shown} did not say which deployment it "
                                 f"is (HTTP {status}{f': {why}' if why else ''})")
        elif theirs != ours:
            raise EphemeralError(
                f"the Airflow at {self.shown} is deployment instance {theirs!r}, not this "
                f"reaper's {ours!r}: its runs are not the runs of these clusters. Point "
                f"{self.SETTING} at this deployment's API server, or give both the same "
                "EPHEMERAL_INSTANCE")
        self._same_deployment = True

    def __call__(self, dag_id: str, run_id: str) -> RunInfo | None:
        self.check_deployment()

        status, body = self._request("GET", _run_path(dag_id, run_id))
        if status == 404 and _says_not_found(body, dag_id, run_id):
            return None
        if status != 200 or not isinstance(body, dict):
            raise EphemeralError(f"Airflow API answered HTTP {status} for {dag_id}/{run_id}"
                                 f"{self._why(status, body)}")
        if (body.get("dag_id"), body.get("dag_run_id")) != (dag_id, run_id):
            raise EphemeralError(f"Airflow API answered for another run than {dag_id}/{run_id}: "
                                 f"{body.get('dag_id')}/{body.get('dag_run_id')}")
        return RunInfo(state=str(body.get("state")), end_date=parse_rfc3339(body.get("end_date")))

    def dag(self, dag_id: str) -> DagInfo | None:
        """Whether the DAG is paused or stale; None when this Airflow has no such DAG (404)."""
        from urllib.parse import quote

        self.check_deployment()

        status, body = self._request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}")
        if status == 404 and _says_not_found(body, dag_id):
            return None
        if status != 200 or not isinstance(body, dict) or body.get("dag_id") != dag_id:
            raise EphemeralError(f"Airflow API answered HTTP {status} for DAG {dag_id}"
                                 f"{self._why(status, body)}")
        return DagInfo(paused=bool(body.get("is_paused")), stale=bool(body.get("is_stale")))

    def tasks_under_way(self, dag_id: str, run_id: str) -> int:
        """How many task instances of the run are running or handed to an executor
        (``UNDER_WAY``): work of the halted run that its cluster may be needed for."""
        from urllib.parse import urlencode

        self.check_deployment()
        query = urlencode([("state", s) for s in UNDER_WAY] + [("limit", "1")])
        status, body = self._request("GET", f"{_run_path(dag_id, run_id)}/taskInstances?{query}")
        count = body.get("total_entries") if isinstance(body, dict) else None
        if status != 200 or not isinstance(count, int):
            raise EphemeralError(f"Airflow API answered HTTP {status} for the tasks of "
                                 f"{dag_id}/{run_id}{self._why(status, body)}")
        return count


UNDER_WAY = ("running", "queued", "restarting")
"""Task instance states of work going on in a halted run (Airflow 3.3's TaskInstanceState):
handed to an executor, they run. The scheduler moves nothing else of a paused or stale DAG's
run (scheduled, up_for_retry and a fired trigger's task stay where they are), so those would
keep its cluster until its TTL; a job a deferred task waits on keeps it busy anyway."""


def _run_path(dag_id: str, run_id: str) -> str:
    """The REST API's path of a DAG run, each id encoded whole (a '/' in it stays one)."""
    from urllib.parse import quote

    return f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"


def _says_not_found(body: object, *ids: str) -> bool:
    """Whether a 404 is Airflow saying it has none of what was asked, naming it (``The DagRun
    with dag_id: `d` and run_id: `r` was not found``, ``Dag with id: d was not found``),
    rather than a route it has no match for (a run id with '/': ``{"error": "API route not
    found"}``) or a proxy's page: only then does a cluster's run count as deleted."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str) or "not found" not in detail:
        return False
    words = f" {detail.replace('`', ' ')} "
    return all(f" {i} " in words for i in ids)
