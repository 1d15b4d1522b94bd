"""The reaper's rules, against the in-memory backend and a scripted view of Airflow runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ephemeral.backends.base import OwnerSelector
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.reaper import RunInfo, reap
from ephemeral.specs import ClusterIdentity, resolve

SPEC = resolve("ray/adhoc-cpu", "ci-cpu")  # ttl 2h


def owned(backend: InMemoryBackend, run: str) -> str:
    ident = ClusterIdentity(spec_name=SPEC.spec.name, dag_id="train", run_id=run,
                            task_id="create", map_index=-1)
    return backend.create(SPEC, identity=ident).name


@pytest.fixture
def backend() -> InMemoryBackend:
    return InMemoryBackend()


def test_orphans_go_and_live_runs_stay(backend: InMemoryBackend, tmp_path: Path) -> None:
    now = datetime.now(UTC) + timedelta(minutes=1)
    runs = {
        "running": RunInfo("running"),
        "ended-long-ago": RunInfo("failed", now - timedelta(hours=1)),
        "ended-just-now": RunInfo("success", now - timedelta(seconds=30)),
    }
    names = {run: owned(backend, run) for run in [*runs, "unknown-run"]}
    manual = backend.create(SPEC, identity=ClusterIdentity.manual(SPEC.spec.name, "by-hand")).name
    decisions = {d.cluster: d for d in reap(backend, lookup=lambda _d, r: runs.get(r),
                                            grace=600, now=now,
                                            memory_file=tmp_path / "seen.json")}
    assert decisions[names["ended-long-ago"]].deleted
    assert "failed 3600s ago" in decisions[names["ended-long-ago"]].reason
    kept = {n for n, d in decisions.items() if not d.delete}
    assert kept == {names["running"], names["ended-just-now"], names["unknown-run"], manual}
    assert "within the 600s grace period" in decisions[names["ended-just-now"]].reason
    assert "not found" in decisions[names["unknown-run"]].reason
    assert {h.name for h in backend.list_owned()} == kept


def test_expired_clusters_go_whatever_their_run(backend: InMemoryBackend) -> None:
    name = owned(backend, "running")
    later = datetime.now(UTC) + timedelta(hours=2, minutes=1)
    [d] = reap(backend, lookup=lambda _d, _r: RunInfo("running"), now=later)
    assert (d.cluster, d.deleted) == (name, True)
    assert "expired" in d.reason


def test_dry_run_deletes_nothing(backend: InMemoryBackend) -> None:
    owned(backend, "gone")
    [d] = reap(backend, lookup=lambda _d, _r: RunInfo("failed", datetime(2020, 1, 1, tzinfo=UTC)),
               dry_run=True)
    assert d.delete
    assert not d.deleted
    assert len(backend.list_owned()) == 1


def test_without_end_dates_the_grace_period_counts_from_first_sight(
    backend: InMemoryBackend, tmp_path: Path
) -> None:
    name = owned(backend, "r1")
    seen = tmp_path / "seen.json"
    t0 = datetime.now(UTC)

    def lookup(_d: str, _r: str) -> RunInfo:
        return RunInfo("failed")  # a state, no end date (the task SDK's view)

    [first] = reap(backend, lookup=lookup, grace=300, now=t0, memory_file=seen)
    assert not first.delete
    [second] = reap(backend, lookup=lookup, grace=300, now=t0 + timedelta(seconds=301),
                    memory_file=seen)
    assert (second.cluster, second.deleted) == (name, True)


def test_without_airflow_only_expiry_counts(backend: InMemoryBackend) -> None:
    owned(backend, "r1")
    [d] = reap(backend, lookup=None)
    assert not d.delete
    assert "no Airflow" in d.reason


def test_one_run_that_cannot_be_looked_up_does_not_stop_the_others(
    backend: InMemoryBackend,
) -> None:
    broken, gone = owned(backend, "broken"), owned(backend, "gone")

    def lookup(_d: str, run: str) -> RunInfo:
        if run == "broken":
            raise KeyError("access_token")  # any failure of the source of run states
        return RunInfo("failed", datetime(2020, 1, 1, tzinfo=UTC))

    decisions = {d.cluster: d for d in reap(backend, lookup=lookup)}
    assert decisions[gone].deleted
    assert not decisions[broken].delete
    assert "KeyError" in decisions[broken].error
    assert [h.name for h in backend.list_owned()] == [broken]


def test_an_unreadable_memory_is_logged_and_reaping_goes_on(
    backend: InMemoryBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two writers' interleaved output once left this behind; every later reap died on it."""
    owned(backend, "gone")
    seen = tmp_path / "reaper-seen.json"
    seen.write_text('{"k1": "2026-01-01T00:00:00Z"} "k2": "2026-01-01T00:00:00Z"}')
    with caplog.at_level("WARNING", logger="ephemeral.reaper"):
        [d] = reap(backend, lookup=lambda _d, _r: RunInfo("failed"), grace=300,
                   memory_file=seen)
    assert not d.delete  # a fresh memory: the grace period starts now
    assert "within the 300s grace period" in d.reason
    assert str(seen) in caplog.text
    assert "unreadable" in caplog.text
    assert isinstance(json.loads(seen.read_text()), dict)  # written afresh, whole
    for bad in ("[1, 2]", '{"k": "not a time"}', ""):
        seen.write_text(bad)
        [d] = reap(backend, lookup=lambda _d, _r: RunInfo("running"), memory_file=seen)
        assert not d.delete, (bad, d)
        assert not d.error, (bad, d)


def test_concurrent_reapers_never_share_a_temporary_file(
    backend: InMemoryBackend, tmp_path: Path
) -> None:
    """The CLI and the reap_orphans DAG may save at the same moment: each writes a temporary
    file of its own in the memory's folder and renames it over the memory, so the memory is
    always one writer's whole file and neither fails on the other's rename."""
    import threading

    from ephemeral.reaper import FinishedMemory

    seen = tmp_path / "reaper-seen.json"
    now = datetime.now(UTC)
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            for i in range(300):
                memory = FinishedMemory(seen)
                memory.mark(f"{tag}{i}", now)
                memory.save({f"{tag}{i}"})
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(json.loads(seen.read_text())) == 1
    assert [p.name for p in tmp_path.iterdir()] == [seen.name]  # no temporary file left


def test_without_airflow_the_idle_rule_still_deletes_and_the_docs_say_so(
    backend: InMemoryBackend,
) -> None:
    """No Airflow URL is not "expiry only": the idle rule asks the clusters, not Airflow."""
    import typer.main

    from ephemeral.activity import Activity
    from ephemeral.cli import main as cli
    from ephemeral.config_section import BY_KEY

    h = backend.create(SPEC, identity=ClusterIdentity(spec_name=SPEC.spec.name, dag_id="train",
                                                      run_id="r1", task_id="create"))
    assert h.idle_timeout_s
    later = datetime.now(UTC) + timedelta(seconds=h.idle_timeout_s + 60)
    [d] = reap(backend, lookup=None, now=later,
               activity=lambda _b, _h: Activity(False, "no Ray job pending or running"))
    assert d.deleted
    assert d.reason.startswith("idle for ")

    reap_cmd = typer.main.get_command(cli.app).commands["reap"]  # type: ignore[attr-defined]
    [url] = [p for p in reap_cmd.params if p.name == "airflow_url"]
    root = Path(__file__).parents[2]
    header = (root / "compose" / "k8s" / "reaper-cronjob.yaml").read_text().split("\n\n")[0]
    for text in (url.help, BY_KEY["airflow_url"].description, header):
        assert "expiry only" not in text
        assert "idle" in text, text


def test_a_reaped_runs_cluster_is_reported_with_the_reapers_moments(
        backend: InMemoryBackend, ephemeral_home: Path) -> None:
    """The run's teardown, later, finds the cluster gone: its report must say the reaper
    deleted it and when, not count the time since as the cluster's life."""
    from types import SimpleNamespace

    from ephemeral.airflow.report import released
    from ephemeral.report.store import read_release

    name = owned(backend, "running")
    [handle] = backend.list_owned()
    later = datetime.now(UTC) + timedelta(hours=2, minutes=1)  # expired mid-run
    [d] = reap(backend, lookup=lambda _d, _r: RunInfo("running"), now=later)
    assert d.deleted
    rel = read_release("train", "running", name)
    assert rel is not None
    assert rel.task == "reaper"
    assert rel.deleted is not None
    assert rel.teardown_started <= rel.deleted <= datetime.now(UTC).timestamp()
    assert rel.result is None  # no job task's result: a retry of a job gets nothing from it
    context = {"dag": SimpleNamespace(dag_id="train"), "run_id": "running"}
    assert released(context, handle) == rel
    # In the run's report at once: if the run has ended, no teardown will come to record it.
    from ephemeral.report import load_report

    report = load_report("train", "running")
    assert report is not None
    [cluster] = report["clusters"]
    assert cluster["name"] == name
    assert cluster["released_by"] == "reaper"
    assert cluster["deleted"] == rel.deleted


def test_a_cluster_made_by_hand_leaves_no_record(backend: InMemoryBackend,
                                                 ephemeral_home: Path) -> None:
    backend.create(SPEC, identity=ClusterIdentity.manual(SPEC.spec.name, "by-hand"))
    later = datetime.now(UTC) + timedelta(hours=2, minutes=1)
    [d] = reap(backend, lookup=None, now=later)
    assert d.deleted
    assert not list(ephemeral_home.rglob("released"))


def test_instances_sharing_a_home_each_keep_their_reapers_memory(
        backend: InMemoryBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staging and prod reaping on one home every few minutes, with a lookup that knows no end
    dates (the reap_orphans DAG's): one memory file would lose each one's first sightings to
    the other's save, and an orphan would be "within the grace period" forever."""
    from ephemeral.reaper import memory_file

    names, files = {}, {}
    for instance in ("staging", "prod"):
        monkeypatch.setenv("EPHEMERAL_INSTANCE", instance)
        names[instance], files[instance] = owned(backend, "ended"), memory_file()
    assert files["staging"] != files["prod"]
    assert files["staging"].parent == files["prod"].parent  # the home
    start = datetime.now(UTC) + timedelta(minutes=1)
    for minutes in range(0, 31, 5):
        for instance in ("staging", "prod"):
            monkeypatch.setenv("EPHEMERAL_INSTANCE", instance)
            reap(backend, lookup=lambda _d, _r: RunInfo("failed"), grace=600,
                 now=start + timedelta(minutes=minutes), memory_file=memory_file())
    assert backend.list_owned(OwnerSelector(all_instances=True)) == []


def test_the_memory_of_the_earlier_single_file_seeds_each_instances(
        ephemeral_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade keeps what the reaper remembered (first sightings of finished runs): a fresh
    memory would give every orphan its grace period again."""
    from ephemeral.reaper import memory_file

    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    ephemeral_home.mkdir(parents=True, exist_ok=True)
    legacy = ephemeral_home / "reaper-seen.json"
    legacy.write_text('{"train\\u001frun-1": "2026-11-01T00:00:00Z"}')
    path = memory_file()
    assert path == ephemeral_home / "reaper-seen-prod.json"
    assert json.loads(path.read_text()) == json.loads(legacy.read_text())


def test_a_run_not_found_goes_after_the_grace_on_evidence(backend: InMemoryBackend,
                                                         tmp_path: Path) -> None:
    """A run deleted (or its DAG deleted) mid-run: no listener fires. Its 404 is remembered
    across passes and the cluster goes after the grace period, once this Airflow answers for
    another of the deployment's runs, the cluster's DAG or the reaping DAG's own run."""
    seen, t0 = tmp_path / "seen.json", datetime.now(UTC)
    gone, live = owned(backend, "deleted"), owned(backend, "running")

    def lookup(_d: str, run: str) -> RunInfo | None:
        return RunInfo("running") if run == "running" else None

    first = {d.cluster: d for d in reap(backend, lookup=lookup, now=t0, memory_file=seen)}
    assert not first[gone].delete
    assert "not found for" in first[gone].reason
    later = {d.cluster: d for d in reap(backend, lookup=lookup, grace=600, memory_file=seen,
                                        now=t0 + timedelta(seconds=601))}
    assert later[gone].deleted, later[gone].reason
    assert "knows run train/running" in later[gone].reason
    assert not later[live].delete
    assert [h.name for h in backend.list_owned()] == [live]


@pytest.mark.parametrize("evidence", ["dag", "witness"])
def test_a_lone_unfound_run_goes_when_its_dag_or_the_witness_answers(
        backend: InMemoryBackend, tmp_path: Path, evidence: str) -> None:
    from ephemeral.reaper import DagInfo

    seen, t0 = tmp_path / "seen.json", datetime.now(UTC)
    owned(backend, "deleted")

    def lookup(_d: str, run: str) -> RunInfo | None:
        return RunInfo("running") if run == "reap-run" else None

    extra = {"dags": lambda _d: DagInfo(paused=False)} if evidence == "dag" else {
        "witness": ("reap_orphans", "reap-run")}
    reap(backend, lookup=lookup, now=t0, memory_file=seen, **extra)  # type: ignore[arg-type]
    [d] = reap(backend, lookup=lookup, now=t0 + timedelta(seconds=601), memory_file=seen,
               **extra)  # type: ignore[arg-type]
    assert d.deleted, d.reason


@pytest.mark.parametrize("memory", [True, False])
def test_a_run_not_found_once_is_never_enough_whatever_the_grace(
        backend: InMemoryBackend, tmp_path: Path, memory: bool) -> None:
    """--grace 0 deletes an ended run's clusters at once; a 404 is judged only when an earlier
    pass saw it too, and a reaper without memory (the CronJob) never judges it."""
    seen, t0 = tmp_path / "seen.json", datetime.now(UTC)
    owned(backend, "deleted")

    def lookup(_d: str, run: str) -> RunInfo | None:
        return RunInfo("running") if run == "reap-run" else None

    for seconds in (0, 60):
        [d] = reap(backend, lookup=lookup, grace=0, now=t0 + timedelta(seconds=seconds),
                   memory_file=seen if memory else None, witness=("reap_orphans", "reap-run"))
        assert d.deleted == (memory and seconds == 60), d.reason


def test_an_airflow_that_knows_none_of_the_runs_deletes_nothing(backend: InMemoryBackend,
                                                                tmp_path: Path) -> None:
    """A wrong airflow_url (another Airflow, one restored empty) answers 404 for every run:
    nothing is deleted for being unknown, however long; the TTL still holds."""
    seen, t0 = tmp_path / "seen.json", datetime.now(UTC)
    names = {owned(backend, f"r{i}") for i in range(3)}
    for minutes in (0, 30, 100):
        decisions = reap(backend, lookup=lambda _d, _r: None, now=t0 + timedelta(minutes=minutes),
                         memory_file=seen, dags=lambda _d: None, witness=("reap_orphans", "x"))
        assert not any(d.delete for d in decisions)
    assert "is it the right one" in decisions[0].reason
    assert {h.name for h in backend.list_owned()} == names
    assert all(d.deleted for d in reap(backend, lookup=lambda _d, _r: None, memory_file=seen,
                                       now=t0 + timedelta(hours=2, minutes=1)))


def test_a_running_run_of_a_dag_paused_past_the_grace_is_ended(backend: InMemoryBackend,
                                                                tmp_path: Path) -> None:
    """Airflow starts no new task of a paused DAG's run: the teardown never comes. But a task
    already running goes on (a training job), and an unpaused run resumes: only a cluster that
    runs nothing goes."""
    from ephemeral.activity import Activity
    from ephemeral.reaper import DagInfo

    seen, t0 = tmp_path / "seen.json", datetime.now(UTC)
    owned(backend, "r")
    paused = {"train": True}
    busy = [False]

    def dags(dag_id: str) -> DagInfo:
        return DagInfo(paused=paused[dag_id])

    def at(seconds: int) -> list[Any]:
        return reap(backend, lookup=lambda _d, _r: RunInfo("running"), dags=dags,
                    now=t0 + timedelta(seconds=seconds), memory_file=seen,
                    activity=lambda _b, _h: Activity(busy[0], "1 Ray job running" if busy[0]
                                                     else "no Ray job pending or running"))

    assert not at(0)[0].delete
    paused["train"] = False  # unpaused: the clock starts again at the next pause
    assert not at(400)[0].delete
    paused["train"] = True
    assert not at(700)[0].delete
    busy[0] = True  # a job still trains on it: kept, however long the pause
    [d] = at(1301)
    assert (d.delete, d.deleted) == (False, False)
    assert "1 Ray job running now" in d.reason
    busy[0] = False
    [d] = at(1302)
    assert d.deleted, d.reason
    assert "its DAG has been paused for" in d.reason


@pytest.mark.parametrize(("halt", "said"), [
    ({"paused": True}, "paused"),
    ({"paused": False, "stale": True}, "stale (its file left the DAG folder)")])
def test_a_halted_runs_cluster_waits_for_its_tasks_under_way(
        backend: InMemoryBackend, tmp_path: Path, halt: dict[str, bool], said: str) -> None:
    """A task of the run still running (data preparation before its job), queued, deferred or
    retrying may yet need the cluster: kept while any is, or while that cannot be told. A DAG
    whose file left the folder (stale) halts its runs as a pause does: its run never ends."""
    from ephemeral.activity import Activity
    from ephemeral.errors import EphemeralError
    from ephemeral.reaper import DagInfo

    seen, t0 = tmp_path / "seen.json", datetime.now(UTC).replace(microsecond=0)
    owned(backend, "r")
    under_way: list[int | Exception] = [2]
    asked: list[tuple[str, str]] = []

    def tasks(dag_id: str, run_id: str) -> int:
        asked.append((dag_id, run_id))
        if isinstance(under_way[0], Exception):
            raise under_way[0]
        return under_way[0]

    def at(seconds: int) -> Any:
        [d] = reap(backend, lookup=lambda _d, _r: RunInfo("running"),
                   dags=lambda _d: DagInfo(**halt), tasks=tasks, memory_file=seen,
                   now=t0 + timedelta(seconds=seconds),
                   activity=lambda _b, _h: Activity(False, "no Ray job pending or running"))
        return d

    assert not at(0).delete
    assert asked == []  # not asked within the grace
    d = at(601)
    assert not d.delete
    assert f"its DAG {said} for 601s, but 2 task(s) of it under way" in d.reason
    assert asked == [("train", "r")]
    under_way[0] = EphemeralError("Airflow API answered HTTP 503")
    d = at(700)
    assert not d.delete
    assert "its tasks could not be asked (Airflow API answered HTTP 503)" in d.reason
    under_way[0] = 0
    d = at(800)
    assert d.deleted, d.reason
    assert f"its DAG has been {said} for 800s" in d.reason
    assert "no task of it is under way" in d.reason
