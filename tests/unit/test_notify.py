"""Failure notifications: the notifier setting, and the reaper's notification with the report
link of the run that made the cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ephemeral.backends.fake import InMemoryBackend
from ephemeral.notify import NotifierError, configured_notifier, notify_reaped
from ephemeral.report import report_url
from ephemeral.specs import ClusterIdentity, resolve

SENT: list[dict[str, Any]] = []


def remember(context: dict[str, Any]) -> None:
    SENT.append(context)


class Broken:
    """A class that is no notifier."""


def test_bad_notifier_settings_name_the_setting() -> None:
    with pytest.raises(NotifierError, match=r"EPHEMERAL_NOTIFIER='nowhere\.Nothing'.*import"):
        configured_notifier({"EPHEMERAL_NOTIFIER": "nowhere.Nothing"})
    with pytest.raises(NotifierError, match="without notify"):
        configured_notifier({"EPHEMERAL_NOTIFIER": f"{__name__}:Broken"})
    with pytest.raises(NotifierError, match="EPHEMERAL_NOTIFIER_KWARGS: not JSON"):
        configured_notifier({"EPHEMERAL_NOTIFIER": f"{__name__}.remember",
                             "EPHEMERAL_NOTIFIER_KWARGS": "{"})
    with pytest.raises(NotifierError, match="is a function, not a class"):
        configured_notifier({"EPHEMERAL_NOTIFIER": f"{__name__}.remember",
                             "EPHEMERAL_NOTIFIER_KWARGS": '{"channel": "x"}'})
    assert configured_notifier({}) is None


def test_a_reaped_cluster_notifies_with_its_runs_report(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", str(tmp_path))
    identity = ClusterIdentity(spec_name="adhoc-cpu", dag_id="train_distributed",
                               run_id="manual__2026-01-01T00:00:00", task_id="create")
    handle = InMemoryBackend().create(resolve("ray/adhoc-cpu@1", "ci-cpu"), identity=identity)
    SENT.clear()
    notify_reaped(handle, "expired")  # no notifier configured: nothing, no error
    assert SENT == []
    monkeypatch.setenv("EPHEMERAL_NOTIFIER", f"{__name__}.remember")
    notify_reaped(handle, "its run ended 10 minutes ago")
    url = report_url("train_distributed", "manual__2026-01-01T00:00:00")
    assert [s["ephemeral_report_url"] for s in SENT] == [url]
    assert SENT[0]["ephemeral_event"] == "cluster_reaped"
    assert handle.name in SENT[0]["ephemeral_message"]
    assert "its run ended 10 minutes ago" in SENT[0]["ephemeral_message"]


def test_the_reaper_notifies_for_each_leak_it_deletes(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from ephemeral.reaper import RunInfo, reap

    monkeypatch.setenv("EPHEMERAL_NOTIFIER", f"{__name__}.remember")
    backend = InMemoryBackend()
    spec = resolve("ray/adhoc-cpu@1", "ci-cpu")
    leaked = backend.create(spec, identity=ClusterIdentity(
        spec_name="adhoc-cpu", dag_id="train", run_id="ended", task_id="create"))
    backend.create(spec, identity=ClusterIdentity(
        spec_name="adhoc-cpu", dag_id="train", run_id="running", task_id="create"))
    runs = {"ended": RunInfo("failed", datetime.now(UTC) - timedelta(hours=1)),
            "running": RunInfo("running")}
    SENT.clear()
    reap(backend, lookup=lambda _d, r: runs[r], grace=600, memory_file=tmp_path / "seen.json")
    assert [s["ephemeral_event"] for s in SENT] == ["cluster_reaped"]
    assert leaked.name in SENT[0]["ephemeral_message"]


def test_a_leak_the_reaper_cannot_delete_notifies_too(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """A leaked cluster that still runs, because its deletion failed, matters more than one that
    went: the deployment hears that it failed and why, and nothing secret."""
    from datetime import UTC, datetime, timedelta

    from ephemeral.errors import EphemeralError
    from ephemeral.reaper import RunInfo, reap

    class Refusing(InMemoryBackend):
        def delete(self, target: Any, *, wait: bool = True) -> None:
            raise EphemeralError("deployments.apps is forbidden: User "
                                 "system:serviceaccount:ephemeral:ephemeral-reaper cannot delete\n"
                                 "second line: Authorization: Bearer tok-never-in-a-notification")

    monkeypatch.setenv("EPHEMERAL_NOTIFIER", f"{__name__}.remember")
    backend = Refusing()
    leaked = backend.create(resolve("ray/adhoc-cpu@1", "ci-cpu"), identity=ClusterIdentity(
        spec_name="adhoc-cpu", dag_id="train", run_id="ended", task_id="create"))
    SENT.clear()
    [d] = reap(backend, lookup=lambda _d, _r: RunInfo("failed", datetime.now(UTC)
                                                      - timedelta(hours=1)),
               grace=600, memory_file=tmp_path / "seen.json")
    assert d.delete
    assert not d.deleted
    assert "forbidden" in d.error
    [sent] = SENT
    assert sent["ephemeral_event"] == "cluster_reap_failed"
    message = sent["ephemeral_message"]
    assert message.startswith(f"could not delete leaked cluster {leaked.name} (")
    assert "EphemeralError: deployments.apps is forbidden" in message
    assert "it still runs" in message
    assert "failed 3600s ago" in message
    assert "second line" not in message
    assert "tok-never" not in repr(sent)  # the error's later lines (a request's headers)
    assert sent["ephemeral_report_url"]  # the run's report, as for a reaped cluster
    assert [h.name for h in backend.list_owned()] == [leaked.name]
