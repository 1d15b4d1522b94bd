"""The reaper's idle rule (``lifetime.idleTimeout``), with the activity the engines would report
given directly: when the idle clock starts, what restarts it, and what is never called idle.
The engines' own answers are tested on real clusters in tests/integration/test_idle_timeout.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ephemeral.activity import Activity
from ephemeral.backends.base import ClusterBackend, ClusterHandle
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.reaper import FinishedMemory, RunInfo, judge_idle, reap
from ephemeral.specs import ClusterIdentity, resolve
from ephemeral.specs.identity import parse_utc, utc_text

SPEC = resolve("ray/adhoc-cpu", "ci-cpu")  # idleTimeout 15m, ttl 2h
IDLE = 900


def running(_d: str, _r: str) -> RunInfo:
    return RunInfo("running")


def make(backend: InMemoryBackend, spec_ref: str = "ray/adhoc-cpu") -> ClusterHandle:
    spec = resolve(spec_ref, "ci-cpu")
    ident = ClusterIdentity(spec_name=spec.spec.name, dag_id="d", run_id="r", task_id="create")
    return backend.create(spec, identity=ident)


class Engines:
    """What the engines answer, per call: a script of Activity values."""

    def __init__(self, *answers: Activity) -> None:
        self.answers = list(answers)
        self.asked = 0

    def __call__(self, _backend: ClusterBackend, _handle: ClusterHandle) -> Activity:
        self.asked += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def backend() -> InMemoryBackend:
    return InMemoryBackend()


def test_the_handle_carries_the_idle_timeout(backend: InMemoryBackend) -> None:
    assert make(backend).idle_timeout_s == IDLE
    assert SPEC.spec.lifetime.idle_timeout_seconds == IDLE


def test_idle_since_the_last_node_started_goes(backend: InMemoryBackend, tmp_path: Path) -> None:
    h = make(backend)
    up = parse_utc(h.created_at) + timedelta(seconds=20)
    now = up + timedelta(seconds=IDLE + 34)
    [d] = reap(backend, lookup=running, now=now, memory_file=tmp_path / "m.json",
               activity=Engines(Activity(False, "no Ray job pending or running", nodes_up=up)))
    assert d.deleted
    assert d.reason.startswith(f"idle for {IDLE + 34}s, idleTimeout {IDLE}s")
    assert backend.list_owned() == []


def test_the_clock_restarts_at_the_last_job_end(backend: InMemoryBackend) -> None:
    h = make(backend)
    up = parse_utc(h.created_at)
    now = up + timedelta(seconds=IDLE + 100)
    [d] = reap(backend, lookup=running, now=now, activity=Engines(
        Activity(False, "no job", nodes_up=up, last_end=now - timedelta(seconds=200))))
    assert not d.delete
    assert "run d/r is running; idle for 200s of idleTimeout 900s" == d.reason


def test_a_busy_cluster_stays_however_old_its_last_idle_spell(backend: InMemoryBackend) -> None:
    h = make(backend)
    now = parse_utc(h.created_at) + timedelta(seconds=IDLE * 3)
    [d] = reap(backend, lookup=running, now=now,
               activity=Engines(Activity(True, "1 Ray job(s) pending or running")))
    assert not d.delete
    assert "busy: 1 Ray job(s) pending or running" in d.reason


def test_unknown_activity_is_never_idle(backend: InMemoryBackend) -> None:
    h = make(backend)
    now = parse_utc(h.created_at) + timedelta(seconds=IDLE * 3)
    [d] = reap(backend, lookup=running, now=now,
               activity=Engines(Activity(None, "the Ray Jobs API did not answer")))
    assert not d.delete
    assert "activity unknown" in d.reason


def test_after_work_ended_the_clock_runs_from_its_end_without_any_memory(
        backend: InMemoryBackend) -> None:
    """The Kubernetes CronJob keeps no memory between runs (an emptyDir): a Spark cluster
    without Connect (no readiness time) whose last application ended at t+5m must still go once
    idleTimeout has passed since that end, not be "idle for 0s" on every run."""
    h = make(backend, "spark/etl")
    timeout = h.idle_timeout_s
    assert timeout == 1200
    t = parse_utc(h.created_at)
    ended = Activity(False, "no Spark application, Connect session or operation running",
                     last_end=t + timedelta(minutes=5))
    [d] = reap(backend, lookup=running, now=t + timedelta(minutes=20), activity=Engines(ended),
               dry_run=True)
    assert not d.delete
    assert "idle for 900s of idleTimeout 1200s" in d.reason
    for minutes in (30, 90, 170):
        [d] = reap(backend, lookup=running, now=t + timedelta(minutes=minutes),
                   activity=Engines(ended), dry_run=True)
        assert d.delete, (minutes, d)
        assert d.reason.startswith(f"idle for {(minutes - 5) * 60}s, idleTimeout 1200s")
    [d] = reap(backend, lookup=running, now=t + timedelta(minutes=30), activity=Engines(ended))
    assert d.deleted
    assert backend.list_owned() == []


def test_never_used_without_engine_readiness_the_clock_starts_when_first_seen_up(
        backend: InMemoryBackend, tmp_path: Path) -> None:
    """No readiness from the engine and nothing ever ran (a Spark cluster without Connect, all
    its workers up): a reaper with memory counts from its first sighting of it up, so a start
    longer than the idleTimeout is not idleness; one without memory (the CronJob) has only
    the creation time."""
    h = make(backend)
    created = parse_utc(h.created_at)
    memory = tmp_path / "m.json"
    memory.write_text("{}")  # a reaper that has run before: its memory lasts between passes
    idle = Engines(Activity(False, "nothing running"))
    up = created + timedelta(seconds=IDLE + 60)  # a slow start: first seen up after IDLE
    [d] = reap(backend, lookup=running, now=up, memory_file=memory, activity=idle)
    assert not d.delete
    assert "idle for 0s" in d.reason
    [d] = reap(backend, lookup=running, now=up + timedelta(seconds=IDLE - 1),
               memory_file=memory, activity=idle)
    assert not d.delete
    assert f"idle for {IDLE - 1}s" in d.reason
    [d] = reap(backend, lookup=running, now=up + timedelta(seconds=IDLE + 1),
               memory_file=memory, activity=idle)
    assert d.deleted
    assert d.reason.startswith(f"idle for {IDLE + 1}s, idleTimeout {IDLE}s")


def test_a_memory_no_pass_finds_is_no_memory(backend: InMemoryBackend, tmp_path: Path) -> None:
    """The reaper CronJob writes its memory into a fresh emptyDir at every run: each pass's
    first sightings were all "now", and a never-used cluster was "idle for 0s" until its TTL.
    A memory file that no pass found is taken for what it is: none."""
    h = make(backend)
    created = parse_utc(h.created_at)
    idle = Engines(Activity(False, "nothing running"))
    for n, (after, deleted) in enumerate([(IDLE - 1, False), (IDLE + 1, True)]):
        fresh = tmp_path / f"pass-{n}" / "reaper-seen.json"
        [d] = reap(backend, lookup=running, now=created + timedelta(seconds=after),
                   memory_file=fresh, activity=idle)
        assert d.deleted is deleted, d
        assert fresh.exists()  # (written all the same, for a reaper whose folder lasts)
    assert backend.list_owned() == []


def test_never_used_without_memory_the_clock_starts_at_creation(backend: InMemoryBackend
                                                                ) -> None:
    h = make(backend)
    created = parse_utc(h.created_at)
    idle = Engines(Activity(False, "nothing running"))
    [d] = reap(backend, lookup=running, now=created + timedelta(seconds=IDLE - 1), activity=idle)
    assert not d.delete
    assert f"idle for {IDLE - 1}s" in d.reason
    [d] = reap(backend, lookup=running, now=created + timedelta(seconds=IDLE + 1), activity=idle)
    assert d.deleted
    assert d.reason.startswith(f"idle for {IDLE + 1}s, idleTimeout {IDLE}s")


def test_unseen_work_starts_the_clock_at_first_sight_and_only_with_memory(
        backend: InMemoryBackend, tmp_path: Path) -> None:
    """Work that tells no end (a Ray job listed without its end time): the reaper's first
    sight starts the clock, remembered between runs; without its memory it never calls the
    cluster idle."""
    h = make(backend)
    memory = tmp_path / "m.json"
    first = parse_utc(h.created_at) + timedelta(seconds=IDLE * 2)
    idle = Engines(Activity(False, "nothing running", last_end=first - timedelta(hours=1),
                            sightings_only=True))
    [d] = reap(backend, lookup=running, now=first, memory_file=memory, activity=idle)
    assert not d.delete
    assert "idle for 0s" in d.reason
    [d] = reap(backend, lookup=running, now=first + timedelta(seconds=IDLE + 1), activity=idle)
    assert not d.delete
    assert "idle for 0s" in d.reason
    [d] = reap(backend, lookup=running, now=first + timedelta(seconds=IDLE - 1),
               memory_file=memory, activity=idle)
    assert not d.delete
    [d] = reap(backend, lookup=running, now=first + timedelta(seconds=IDLE + 1),
               memory_file=memory, activity=idle)
    assert d.deleted
    assert d.reason.startswith(f"idle for {IDLE + 1}s, idleTimeout {IDLE}s")


def test_busy_seen_by_the_reaper_restarts_the_clock(backend: InMemoryBackend,
                                                    tmp_path: Path) -> None:
    """Work that leaves no end time (a Ray job listed without one): the last time the reaper
    saw the cluster busy counts."""
    h = make(backend)
    memory = tmp_path / "m.json"
    up = parse_utc(h.created_at)
    busy_at = up + timedelta(seconds=IDLE * 2)
    reap(backend, lookup=running, now=busy_at, memory_file=memory,
         activity=Engines(Activity(True, "1 Ray job(s) pending or running")))
    [d] = reap(backend, lookup=running, now=busy_at + timedelta(seconds=60), memory_file=memory,
               activity=Engines(Activity(False, "nothing running", nodes_up=up)))
    assert not d.delete
    assert "idle for 60s" in d.reason


def test_no_idle_timeout_no_question(backend: InMemoryBackend) -> None:
    spec = resolve("ray/train-gpu", "ci-cpu")
    body = spec.spec.model_copy(update={"lifetime": spec.spec.lifetime.model_copy(
        update={"idle_timeout": None})})
    ident = ClusterIdentity.manual(spec.spec.name, "no-idle")
    h = backend.create(spec.__class__(**{**spec.__dict__, "spec": body}), identity=ident)
    assert h.idle_timeout_s is None
    engines = Engines(Activity(False, "nothing"))
    [d] = reap(backend, lookup=None, now=datetime.now(UTC) + timedelta(hours=1), activity=engines)
    assert not d.delete
    assert engines.asked == 0


def test_expiry_and_ended_runs_come_first(backend: InMemoryBackend) -> None:
    make(backend)
    engines = Engines(Activity(True, "busy"))
    [d] = reap(backend, lookup=lambda _d, _r: RunInfo("failed", datetime(2020, 1, 1, tzinfo=UTC)),
               activity=engines)
    assert d.deleted
    assert "failed" in d.reason
    assert engines.asked == 0


def test_a_cluster_that_cannot_be_asked_is_kept_without_failing_the_reaper(
        backend: InMemoryBackend) -> None:
    from ephemeral.errors import ClusterNotFound

    h = make(backend)

    def refused(_b: ClusterBackend, _h: ClusterHandle) -> Activity:
        raise ClusterNotFound("secret eph-x not found")

    [d] = reap(backend, lookup=running, now=parse_utc(h.created_at) + timedelta(hours=1),
               activity=refused)
    assert not d.delete
    assert not d.error
    assert "activity unknown (cannot ask its APIs: secret eph-x not found)" in d.reason


def test_an_answer_cut_short_on_the_check_before_deleting_stops_nothing_else(
        backend: InMemoryBackend, tmp_path: Path) -> None:
    """The check made again just before an idle deletion meets a proxy dropping the answer
    mid-body: that cluster is kept, and every other one is still judged and deleted."""
    import http.client

    made = [backend.create(SPEC, identity=ClusterIdentity(
        spec_name=SPEC.spec.name, dag_id="d", run_id="r", task_id=f"create_{i}"))
        for i in range(3)]
    now = max(parse_utc(h.created_at) for h in made) + timedelta(seconds=IDLE + 60)
    up = now - timedelta(seconds=IDLE + 30)
    asked: dict[str, int] = {}

    def engines(_b: ClusterBackend, h: ClusterHandle) -> Activity:
        asked[h.name] = asked.get(h.name, 0) + 1
        if h.name == made[1].name and asked[h.name] == 2:
            raise http.client.IncompleteRead(b"{\"jobs\": [", 500)
        return Activity(False, "no Ray job pending or running", nodes_up=up)

    decisions = reap(backend, lookup=running, now=now, memory_file=tmp_path / "m.json",
                     activity=engines)
    by_name = {d.cluster: d for d in decisions}
    assert {h.name: by_name[h.name].deleted for h in made} == {
        made[0].name: True, made[1].name: False, made[2].name: True}
    assert "IncompleteRead" in by_name[made[1].name].reason
    assert [h.name for h in backend.list_owned()] == [made[1].name]


def test_a_node_restarted_after_the_work_ended_does_not_restart_the_clock(
        backend: InMemoryBackend, tmp_path: Path) -> None:
    """A preempted or crash-looping worker, recreated before each pass: the clock runs from
    the last job's end all the same."""
    h = make(backend)
    ended = parse_utc(h.created_at) + timedelta(seconds=60)
    now = ended + timedelta(seconds=IDLE + 5)
    [d] = reap(backend, lookup=running, now=now, memory_file=tmp_path / "m.json",
               activity=Engines(Activity(False, "no Ray job pending or running", last_end=ended,
                                         nodes_up=now - timedelta(seconds=60))))
    assert d.deleted, d.reason
    assert d.reason.startswith(f"idle for {IDLE + 5}s")


def test_the_setups_ready_record_starts_the_clock_not_a_later_node_start(
        backend: InMemoryBackend, tmp_path: Path) -> None:
    from ephemeral.report.model import Ready
    from ephemeral.report.store import write_ready

    h = make(backend)
    ready = parse_utc(h.created_at) + timedelta(seconds=30)
    write_ready("d", "r", Ready(name=h.name, created_at=h.created_at, ready=ready.timestamp()))
    now = ready + timedelta(seconds=IDLE + 7)
    [d] = reap(backend, lookup=running, now=now, memory_file=tmp_path / "m.json",
               activity=Engines(Activity(False, "no Ray job pending or running",
                                         nodes_up=now - timedelta(seconds=60), nodes_alive=3)))
    assert d.deleted, d.reason
    assert d.reason.startswith(f"idle for {IDLE + 7}s")


def test_a_head_that_restarted_starts_the_clock_again(backend: InMemoryBackend) -> None:
    """Ray's GCS without fault tolerance forgets its jobs when the head restarts: a job that
    ran until then is in no list, and the memory-less CronJob, counting from the setup's
    readiness, called the cluster idle for hours. The head's start bounds the clock."""
    from ephemeral.report.model import Ready
    from ephemeral.report.store import write_ready

    h = make(backend)
    ready = parse_utc(h.created_at) + timedelta(seconds=30)
    write_ready("d", "r", Ready(name=h.name, created_at=h.created_at, ready=ready.timestamp()))
    head_up = ready + timedelta(hours=1)
    now = head_up + timedelta(seconds=120)
    asked = Engines(Activity(False, "no Ray job pending or running", nodes_up=head_up,
                             nodes_alive=3, history_from=head_up))
    [d] = reap(backend, lookup=running, now=now, activity=asked)
    assert not d.delete, d
    assert d.reason.endswith(f"idle for 120s of idleTimeout {IDLE}s")
    [d] = reap(backend, lookup=running, now=head_up + timedelta(seconds=IDLE + 1),
               activity=asked)
    assert d.deleted, d


def test_a_ray_cluster_not_known_ready_with_nodes_missing_is_still_starting(
        backend: InMemoryBackend, tmp_path: Path) -> None:
    """Only the head is up, its GPU workers still scaling up, longer than idleTimeout: no job
    ran, and the head's start is no readiness."""
    h = make(backend)
    planned = sum(g.replicas for g in h.groups)
    assert planned == 3  # ray/adhoc-cpu on ci-cpu: a head and two workers
    head_up = parse_utc(h.created_at) + timedelta(seconds=10)
    asked = Engines(Activity(False, "no Ray job pending or running", nodes_up=head_up,
                             nodes_alive=1))
    now = head_up + timedelta(seconds=IDLE + 100)
    [d] = reap(backend, lookup=running, now=now, memory_file=tmp_path / "m.json", activity=asked)
    assert not d.delete
    assert d.reason.endswith("still starting: 1 of 3 nodes ALIVE")
    # Once all are up it counts from the newest node's start, as before.
    asked.answers = [Activity(False, "no Ray job pending or running", nodes_up=now,
                              nodes_alive=3)]
    [d] = reap(backend, lookup=running, now=now + timedelta(seconds=IDLE + 1),
               memory_file=tmp_path / "m.json", activity=asked)
    assert d.deleted, d.reason


def test_a_job_submitted_after_the_judgement_keeps_the_cluster(
        backend: InMemoryBackend, tmp_path: Path) -> None:
    """Asked again just before the deletion: a job that arrived meanwhile wins."""
    h = make(backend)
    up = parse_utc(h.created_at) + timedelta(seconds=20)
    asked = Engines(Activity(False, "no Ray job pending or running", nodes_up=up),
                    Activity(True, "1 Ray job(s) pending or running"))
    [d] = reap(backend, lookup=running, now=up + timedelta(seconds=IDLE + 5),
               memory_file=tmp_path / "m.json", activity=asked)
    assert not d.delete
    assert d.reason.startswith("kept: 1 Ray job(s) pending or running now, after idle for")
    assert asked.asked == 2
    assert backend.list_owned() == [h]


def test_a_cluster_whose_engine_is_silent_and_head_gone_goes_after_idle_timeout(
        backend: InMemoryBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A network blip never takes a cluster (its head runs); a dead one (its head process or
    pod gone, the engine silent) no longer waits for its TTL: it goes once its head has been
    gone for longer than idleTimeout, by the reaper's memory."""
    from ephemeral.backends.base import HeadState, HeadView
    from ephemeral.report.model import Ready
    from ephemeral.report.store import write_ready

    h = make(backend)
    head = {"state": HeadState.GONE}
    monkeypatch.setattr(backend, "head_view", lambda _h: HeadView(state=head["state"],
                                                                  reason="its head pod failed"))
    silent = Engines(Activity(None, "the Ray Jobs API did not answer"))
    t0 = parse_utc(h.created_at) + timedelta(minutes=30)

    def at(seconds: float, memory: Path | None = tmp_path / "m.json") -> Any:
        [d] = reap(backend, lookup=running, now=t0 + timedelta(seconds=seconds),
                   memory_file=memory, activity=silent)
        return d

    # Never up yet (a new cluster's head Pending, which a backend may call gone): kept.
    assert not at(-1000).delete
    assert not at(0).delete
    assert "head gone" not in at(0).reason
    write_ready("d", "r", Ready(name=h.name, created_at=h.created_at,
                                ready=parse_utc(h.created_at).timestamp() + 20))
    head["state"] = HeadState.RUNNING
    assert not at(0).delete  # silent, head running: a blip
    head["state"] = HeadState.GONE
    d = at(60)
    assert not d.delete
    assert "its head gone (its head pod failed) for 0s of idleTimeout 900s" in d.reason
    assert not at(60 + IDLE, memory=None).delete  # no memory: the TTL's
    assert not at(60 + IDLE).delete  # not longer than the timeout yet
    d = at(61 + IDLE)
    assert d.deleted, d.reason
    assert d.reason.startswith("dead: activity unknown (the Ray Jobs API did not answer) and "
                               f"its head gone (its head pod failed) for {IDLE + 1}s")


def test_a_head_that_came_back_starts_the_dead_clock_afresh(
        backend: InMemoryBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.backends.base import HeadState, HeadView

    h = make(backend)
    up = Engines(Activity(False, "no Ray job pending or running", nodes_up=parse_utc(
        h.created_at) + timedelta(seconds=20), nodes_alive=3))
    reap(backend, lookup=running, now=parse_utc(h.created_at) + timedelta(minutes=1),
         memory_file=tmp_path / "m.json", activity=up)  # it answered once: it was up
    views = [HeadState.GONE, HeadState.RUNNING, HeadState.GONE]
    monkeypatch.setattr(backend, "head_view",
                        lambda _h: HeadView(state=views.pop(0), reason="replaced"))
    silent = Engines(Activity(None, "the Ray Jobs API did not answer"))
    t0 = parse_utc(h.created_at) + timedelta(minutes=30)
    for seconds in (0, IDLE, 2 * IDLE + 10):
        [d] = reap(backend, lookup=running, now=t0 + timedelta(seconds=seconds),
                   memory_file=tmp_path / "m.json", activity=silent)
        assert not d.delete, d.reason
    assert "for 0s of idleTimeout" in d.reason


def test_still_starting_counts_an_autoscaled_groups_floor_and_ends_after_idle_timeout(
        backend: InMemoryBackend, tmp_path: Path) -> None:
    """Scaled down to its minReplicas, an autoscaled cluster is up, not starting; and a node
    that never comes does not keep an unused cluster until its TTL."""
    from ephemeral.backends.base import NodeGroup

    h = make(backend)
    groups = [g if g.role != "worker" else g.model_copy(update={"min_replicas": 1})
              for g in h.groups]
    assert sum(g.floor for g in groups) == 2  # the head and one worker of two
    up = parse_utc(h.created_at) + timedelta(seconds=20)
    floor = Engines(Activity(False, "no Ray job pending or running", nodes_up=up,
                             nodes_alive=2))
    scaled = h.model_copy(update={"groups": groups})
    assert isinstance(scaled.groups[0], NodeGroup)
    d = judge_idle(scaled, floor(backend, scaled), now=up + timedelta(seconds=IDLE + 1),
                   memory=FinishedMemory(tmp_path / "a.json"))
    assert d.delete, d.reason
    # Two of three nodes forever: starting for idleTimeout from the first sighting, then idle.
    memory = FinishedMemory(tmp_path / "b.json")
    short = Activity(False, "no Ray job pending or running", nodes_up=up, nodes_alive=2)
    seen = up + timedelta(seconds=5)
    assert "still starting" in judge_idle(h, short, now=seen, memory=memory).reason
    assert "still starting" in judge_idle(h, short, now=seen + timedelta(seconds=IDLE),
                                          memory=memory).reason
    d = judge_idle(h, short, now=seen + timedelta(seconds=IDLE + 1), memory=memory)
    assert d.delete, d.reason


def test_a_cluster_its_setup_still_waits_for_is_starting_until_the_setups_deadline(
        backend: InMemoryBackend, tmp_path: Path, ephemeral_home: Path) -> None:
    """A setup may wait longer than idleTimeout (ready_timeout=3600 for a GPU pool that scales
    up slowly): its deadline, recorded where it records readiness, keeps the never-ready
    cluster starting; without a record, the default wait (SETUP_READY_TIMEOUT) does."""
    from ephemeral.lifecycle import SETUP_READY_TIMEOUT
    from ephemeral.report.deletions import created_ts, ready_deadline, record_ready_deadline

    h = make(backend)
    created = parse_utc(h.created_at)
    assert ready_deadline(h) == created_ts(h) + SETUP_READY_TIMEOUT
    record_ready_deadline(h, created_ts(h) + 3600)
    assert ready_deadline(h) == created_ts(h) + 3600
    memory = FinishedMemory(tmp_path / "m.json")
    starting = Activity(False, "no Ray job pending or running", nodes_alive=1)
    judge_idle(h, starting, now=created + timedelta(minutes=1), memory=memory)
    for minutes in (31, 59):
        d = judge_idle(h, starting, now=created + timedelta(minutes=minutes), memory=memory)
        assert "still starting" in d.reason
    d = judge_idle(h, starting, now=created + timedelta(minutes=61), memory=memory)
    assert d.delete, d.reason


def test_the_setup_records_a_ready_wait_longer_than_the_default(
        backend: InMemoryBackend, monkeypatch: pytest.MonkeyPatch, ephemeral_home: Path) -> None:
    import time

    from airflow.sdk.exceptions import TaskDeferred

    from ephemeral.report.deletions import ready_deadline
    from tests.setups import setup_on

    slow = InMemoryBackend(ready_after_probes=10**9)
    op, context = setup_on(monkeypatch, slow, deferrable=True, ready_timeout=3600)
    with pytest.raises(TaskDeferred):
        op.execute(context)
    [h] = slow.list_owned()
    assert abs(ready_deadline(h) - (time.time() + 3600)) < 30


def test_expired_clusters_go_before_any_engine_is_asked(backend: InMemoryBackend) -> None:
    """A pass whose engines answer slowly (a hanging Connect UI takes its whole timeout) could
    run out of time before it reached an expired cluster later in the list: what needs no
    engine asked is deleted first."""
    made = [backend.create(SPEC, identity=ClusterIdentity(
        spec_name=SPEC.spec.name, dag_id="d", run_id="r", task_id=f"create_{i}"))
        for i in range(4)]
    expired = {made[1].name, made[3].name}
    now = max(parse_utc(h.created_at) for h in made) + timedelta(minutes=30)
    for name in expired:  # their TTL passed
        record = backend._clusters[name]
        record.handle = record.handle.model_copy(
            update={"expires_at": utc_text(now - timedelta(minutes=1))})
    left_when_asked: list[set[str]] = []

    def engines(b: ClusterBackend, _h: ClusterHandle) -> Activity:
        left_when_asked.append({h.name for h in b.list_owned()} & expired)
        return Activity(True, "1 Ray job running")

    decisions = reap(backend, lookup=running, now=now, activity=engines)
    assert left_when_asked == [set(), set()]  # asked of the two unexpired, after the others
    assert {d.cluster for d in decisions if d.deleted} == expired
    assert sorted(d.cluster for d in decisions) == sorted(h.name for h in made)
