"""The run-end process: it outlasts an API blip, stops the moment the run lives again (cleared,
or deleted and triggered anew under its id), and, while the metadata database cannot say,
deletes only what existed when the run ended."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends.base import ClusterHandle, OwnerSelector
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.errors import BackendUnavailable
from ephemeral.specs import ClusterIdentity, resolve

SPEC = resolve("ray/adhoc-cpu", "ci-cpu")


def ident(task: str = "create", run_id: str = "r") -> ClusterIdentity:
    return ClusterIdentity(spec_name=SPEC.spec.name, dag_id="d", run_id=run_id, task_id=task)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch, ephemeral_home: Any) -> Any:
    import ephemeral.airflow.run_end as run_end

    monkeypatch.setattr(run_end, "POLL", 0.01)
    monkeypatch.setattr(run_end, "MAX_BACKOFF", 0.02)
    return run_end


class Blips(InMemoryBackend):
    """Its first ``list_fails`` listings and ``delete_fails`` deletions fail (a 503)."""

    def __init__(self, list_fails: int = 0, delete_fails: int = 0) -> None:
        super().__init__()
        self.list_fails, self.delete_fails = list_fails, delete_fails

    def list_owned(self, selector: OwnerSelector | None = None) -> list[ClusterHandle]:
        if self.list_fails:
            self.list_fails -= 1
            raise BackendUnavailable("Kubernetes API server: 503 Service Unavailable")
        return super().list_owned(selector)

    def delete(self, target: Any, *, wait: bool = True) -> bool:
        if self.delete_fails:
            self.delete_fails -= 1
            raise BackendUnavailable("Kubernetes API server: 503 Service Unavailable")
        return super().delete(target, wait=wait)


@pytest.mark.parametrize("blips", [{"list_fails": 3}, {"delete_fails": 2}])
def test_a_blip_is_retried_without_linger(quick: Any, blips: dict[str, int]) -> None:
    backend = Blips(**blips)
    made = backend.create(SPEC, identity=ident())
    assert quick.delete_run_clusters("d", "r", backend=backend, failed_setup=lambda _h: False,
                                     moved=lambda _e: False) == [made.name]
    assert backend.list_owned() == []


def test_retrying_ends_after_the_window(quick: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quick, "RETRY_WINDOW", 0.2)
    backend = Blips(list_fails=10**6)
    started = time.monotonic()
    assert quick.delete_run_clusters("d", "r", backend=backend, moved=lambda _e: False) == []
    assert 0.2 <= time.monotonic() - started < 5


def test_an_incomplete_listing_still_deletes_what_it_saw(quick: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A Role that cannot list one kind (SparkConnects where the spark-operator is installed):
    the run's clusters of the other kinds still go, and it keeps trying for the rest."""
    from ephemeral.errors import ListingIncomplete

    class Partial(InMemoryBackend):
        def list_owned(self, selector: OwnerSelector | None = None) -> list[ClusterHandle]:
            raise ListingIncomplete("cannot list sparkconnects", super().list_owned(selector))

    monkeypatch.setattr(quick, "RETRY_WINDOW", 0.2)
    backend = Partial()
    made = backend.create(SPEC, identity=ident())
    assert quick.delete_run_clusters("d", "r", backend=backend, failed_setup=lambda _h: False,
                                     moved=lambda _e: False) == [made.name]
    assert InMemoryBackend.list_owned(backend) == []


def test_it_asks_before_every_deletion(quick: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clear, and the new try adopting the second cluster, while the first is deleted."""
    monkeypatch.setattr(quick, "FRESH", 0.0)
    state = {"cleared": False}

    class Slow(InMemoryBackend):
        def delete(self, target: Any, *, wait: bool = True) -> bool:
            state["cleared"] = True
            return super().delete(target, wait=wait)

    backend = Slow()
    first = backend.create(SPEC, identity=ident("create_a"))
    backend.create(SPEC, identity=ident("create_b"))
    deleted = quick.delete_run_clusters("d", "r", backend=backend, linger=1.0,
                                        failed_setup=lambda _h: False,
                                        moved=lambda _e: state["cleared"])
    assert deleted == [first.name]
    assert [h.name for h in backend.list_owned()] == [ident("create_b").name]


def test_unreadable_database_spares_lives_made_after_the_end(quick: Any,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(quick, "FRESH", 0.0)
    monkeypatch.setattr(quick, "RETRY_WINDOW", 0.1)
    backend = InMemoryBackend()
    old = backend.create(SPEC, identity=ident("create_a"))
    time.sleep(0.01)
    end = quick.RunEnd("d", "r", ended_at=time.time())
    time.sleep(0.01)
    new = backend.create(SPEC, identity=ident("create_b"))
    assert quick.delete_run_clusters("d", "r", backend=backend, end=end,
                                     failed_setup=lambda _h: False,
                                     moved=lambda _e: None) == [old.name]
    assert [h.name for h in backend.list_owned()] == [new.name]


def at(second: int) -> datetime:
    return datetime(2026, 12, 1, 0, 0, second, tzinfo=UTC)


def test_the_row_tells_a_clear_and_a_new_run_under_the_same_id() -> None:
    from ephemeral.airflow.run_end import RunEnd, epoch, lives_again

    end = RunEnd("d", "nightly", clear_number=0, pk=7, run_after=epoch(at(1)))
    assert not lives_again(end, (0, 7, at(1)))
    assert not lives_again(end, (0, 7, at(1).replace(tzinfo=None)))  # stored naive, UTC
    assert not lives_again(end, None)  # deleted and not triggered again: orphans
    assert lives_again(end, (1, 7, at(1)))  # cleared
    assert lives_again(end, (0, 8, at(1)))  # a new row
    assert lives_again(end, (0, 7, at(5)))  # SQLite gave the deleted row's id again


def test_a_new_run_under_the_same_id_stops_the_linger(quick: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's r3: the run deleted and triggered again while run-end lingers."""
    monkeypatch.setattr(quick, "FRESH", 0.0)
    rows: dict[str, Any] = {"row": (0, 7, at(1))}
    monkeypatch.setattr(quick, "run_moved", None)  # never the real database here
    backend = InMemoryBackend()
    backend.create(SPEC, identity=ident(run_id="nightly"))
    end = quick.RunEnd("d", "nightly", pk=7, run_after=quick.epoch(at(1)))

    def moved(e: Any) -> bool:
        return bool(quick.lives_again(e, rows["row"]))

    assert len(quick.delete_run_clusters("d", "nightly", backend=backend, end=end,
                                         failed_setup=lambda _h: False, moved=moved)) == 1
    rows["row"] = (0, 8, at(9))
    again = backend.create(SPEC, identity=ident(run_id="nightly"))
    assert quick.delete_run_clusters("d", "nightly", backend=backend, end=end, linger=0.5,
                                     failed_setup=lambda _h: False, moved=moved) == []
    assert [h.name for h in backend.list_owned()] == [again.name]


@pytest.mark.parametrize(("hook", "msg", "lingers"), [
    ("on_dag_run_success", "success", False),
    ("on_dag_run_success", "Dag Run's state was manually set to `success`.", True),
    ("on_dag_run_failed", "Dag Run's state was manually set to `failed`.", True),
    ("on_dag_run_failed", "task_failure", True),
    ("on_dag_run_failed", "timed_out", True),
])
def test_every_end_but_a_finished_success_lingers(monkeypatch: pytest.MonkeyPatch, hook: str,
                                                  msg: str, lingers: bool) -> None:
    """A run marked success while a setup creates needs the linger as much as a failed one."""
    pytest.importorskip("airflow")
    from ephemeral.airflow import listener

    spawned: list[tuple[Any, float]] = []
    monkeypatch.setattr(listener, "_is_local", lambda: False)
    monkeypatch.setattr(listener, "spawn",
                        lambda end, *, linger, why="": spawned.append((end, linger)))
    run = SimpleNamespace(dag_id="d", run_id="r", clear_number=2, id=7, run_after=at(1))
    getattr(listener, hook)(dag_run=run, msg=msg)
    (end, linger), = spawned
    assert (end.clear_number, end.pk, end.run_after) == (2, 7, at(1).timestamp())
    assert (linger > 0) is lingers


@pytest.mark.parametrize("run_id", ["-rerun", "--help", "manual__2026-12-02T10:00:00+00:00"])
def test_the_deleting_process_reads_any_run_id_it_is_given(
        monkeypatch: pytest.MonkeyPatch, ephemeral_home: Any, run_id: str) -> None:
    """Airflow's run ids may start with '-': as an option's next word it was taken for an
    option, and the deleting process exited with a usage error, leaving the clusters."""
    pytest.importorskip("airflow")
    import subprocess

    import ephemeral.airflow.run_end as run_end
    from ephemeral.airflow import listener

    argv: list[str] = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **_kw: argv.extend(cmd) or
                        SimpleNamespace(pid=1))
    listener.spawn(run_end.RunEnd("d-1", run_id, clear_number=0, pk=3, run_after=None),
                   linger=0.0)
    assert argv[1:3] == ["-m", "ephemeral.airflow.run_end"]
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(run_end, "delete_run_clusters",
                        lambda dag_id, run_id, **_kw: asked.append((dag_id, run_id)) or [])
    assert run_end.main(argv[3:]) == 0
    assert asked == [("d-1", run_id)]
