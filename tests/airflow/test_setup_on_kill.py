"""A setup killed while it waits for its cluster deletes the cluster and records its life in the
run's report, as a failed setup does (Airflow runs no teardown for it): the cluster cost its
start. The deletion comes first; a report that cannot be written does not stop it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ephemeral.backends import ClusterHandle
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.errors import TeardownIncomplete
from ephemeral.specs import ClusterIdentity, resolve


class Stuck(InMemoryBackend):
    """Clusters that never become ready; ``leave`` makes a deletion leave a pod behind."""

    def __init__(self) -> None:
        super().__init__(ready_after_probes=10**9)
        self.leave = False

    def delete(self, target: ClusterHandle | ClusterIdentity | str, *, wait: bool = True) -> None:
        if self.leave:
            raise TeardownIncomplete(self.target_name(target), ["Pod/head (terminating)"])
        super().delete(target, wait=wait)


def _killed_setup(monkeypatch: pytest.MonkeyPatch, backend: Stuck) -> tuple[object, str]:
    """A setup that created its cluster and waits for it (what ``execute`` has done when the
    kill comes), its backend the handle's."""
    import ephemeral.airflow.operators as operators

    monkeypatch.setattr(operators, "task_backend", lambda name, conn=None: backend)
    op = operators.CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu",
                                         deferrable=False)
    handle = backend.create(resolve("ray/adhoc-cpu", "ci-cpu"), identity=ClusterIdentity(
        spec_name="adhoc-cpu", dag_id="d", run_id="r1", task_id="create"))
    op._created = handle
    return op, handle.name


def test_a_killed_setup_deletes_its_cluster_and_records_its_life(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.report import load_report

    backend = Stuck()
    op, name = _killed_setup(monkeypatch, backend)
    op.on_kill()  # type: ignore[attr-defined]
    assert backend.list_owned() == []
    report = load_report("d", "r1")
    assert report is not None
    [cluster] = report["clusters"]
    assert (cluster["name"], cluster["setup_task"], cluster["released_by"],
            cluster["deletion"]) == (name, "create", "create (killed)", "complete")
    assert cluster["ready"] is None
    assert cluster["teardown_started"] <= cluster["deleted"]
    op.on_kill()  # type: ignore[attr-defined]  # once only: a second kill records nothing more
    assert len(load_report("d", "r1")["clusters"]) == 1  # type: ignore[index]


def test_a_report_that_cannot_be_written_does_not_stop_the_deletion(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
        ) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", str(tmp_path / "file" / "art"))
    backend = Stuck()
    op, name = _killed_setup(monkeypatch, backend)
    op.on_kill()  # type: ignore[attr-defined]
    assert backend.list_owned() == []
    assert f"could not record the deletion of {name}" in caplog.text


def test_a_deletion_that_leaves_something_is_recorded_as_such_and_raises(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.report import load_report

    backend = Stuck()
    backend.leave = True
    op, _ = _killed_setup(monkeypatch, backend)
    with pytest.raises(TeardownIncomplete):
        op.on_kill()  # type: ignore[attr-defined]
    report = load_report("d", "r1")
    assert report is not None
    [cluster] = report["clusters"]
    assert cluster["deleted"] is None
    assert cluster["deletion"] == "failed (killed): the reaper deletes it"


def test_a_setup_killed_while_deferred_records_its_cluster_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The trigger's on_kill (the task marked failed while it waits in the triggerer) deletes
    and records through the same rule as the worker's."""
    import asyncio

    from ephemeral.report import load_report
    from tests.setups import waiting_trigger

    backend = Stuck()
    trigger = waiting_trigger(monkeypatch, backend, "r2")
    handle = ClusterHandle.model_validate(trigger.handle)
    asyncio.run(trigger.on_kill())
    assert backend.list_owned() == []
    report = load_report("d", "r2")
    assert report is not None
    [cluster] = report["clusters"]
    assert (cluster["name"], cluster["released_by"], cluster["deletion"]) == (
        handle.name, "create (killed)", "complete")
