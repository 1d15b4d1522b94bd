"""Failure notifications: the notifier setting, and the reaper's notification with the report
link of the run that made the cluster."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends.fake import InMemoryBackend
from ephemeral.notify import NotifierError, configured_notifier, failure_callbacks, notify_reaped
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
    # named where they were set: airflow.cfg's [ephemeral] section, not a variable
    with pytest.raises(NotifierError, match=r"^\[ephemeral\] notifier='nowhere\.Nothing'"):
        configured_notifier({"AIRFLOW__EPHEMERAL__NOTIFIER": "nowhere.Nothing"})
    with pytest.raises(NotifierError, match=r"^\[ephemeral\] notifier_kwargs: not JSON"):
        configured_notifier({"EPHEMERAL_NOTIFIER": f"{__name__}.remember",
                             "AIRFLOW__EPHEMERAL__NOTIFIER_KWARGS": "{"})


def test_notifier_kwargs_without_a_notifier_are_said_to_do_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    assert configured_notifier({"EPHEMERAL_NOTIFIER_KWARGS": '{"channel": "x"}'}) is None
    assert ("EPHEMERAL_NOTIFIER_KWARGS is set but does nothing: no notifier is set"
            in caplog.text)


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


def _leaks(n: int) -> InMemoryBackend:
    backend = InMemoryBackend()
    spec = resolve("ray/adhoc-cpu@1", "ci-cpu")
    for i in range(n):
        backend.create(spec, identity=ClusterIdentity(spec_name="adhoc-cpu", dag_id="train",
                                                      run_id=f"ended{i}", task_id="create"))
    return backend


def _reap_all(backend: InMemoryBackend, tmp_path: Path) -> list[Any]:
    from datetime import UTC, datetime, timedelta

    from ephemeral.reaper import RunInfo, reap

    return reap(backend, lookup=lambda _d, _r: RunInfo("failed", datetime.now(UTC)
                                                       - timedelta(hours=1)),
                grace=600, memory_file=tmp_path / "seen.json")


@pytest.fixture
def notifiers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A folder on sys.path for notifier modules of the test's own."""
    folder = tmp_path / "notifiers"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return folder


def test_a_notifier_that_fails_at_import_stops_no_reaping_and_no_dag(
        notifiers: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A module that raises at import (a KeyError for a missing env var), one not installed, a
    typo: the reaper deletes every leak, a DAG's default_args still build, and each notification
    it would have sent is logged as unusable. The setting's check still raises."""
    import ephemeral.notify as notify

    logged: list[str] = []
    monkeypatch.setattr(notify.log, "error", lambda msg, *a: logged.append(msg % a))
    (notifiers / "needs_env.py").write_text("import os\nTOKEN = os.environ['NO_SUCH_VAR_X']\n"
                                            "def send(context): pass\n")
    for path in ("needs_env:send", "airflow.providers.nosuch.notifications.Notifier"):
        monkeypatch.setenv("EPHEMERAL_NOTIFIER", path)
        with pytest.raises(NotifierError, match="cannot import it"):
            configured_notifier()
        backend = _leaks(3)
        logged.clear()
        decisions = _reap_all(backend, tmp_path)
        assert [d.deleted for d in decisions] == [True] * 3
        assert backend.list_owned() == []
        assert sum("notifier unusable" in m and "not sent: reaped" in m for m in logged) == 3
        [callback] = failure_callbacks()  # a DAG's import does not fail
        logged.clear()
        callback({"dag": SimpleNamespace(dag_id="d"), "run_id": "r",
                  "ti": SimpleNamespace(task_id="t"), "exception": RuntimeError("boom")})
        assert any("notifier unusable" in m and "task t failed" in m for m in logged)


HANG = threading.Event()


def hang(context: dict[str, Any]) -> None:
    SENT.append(context)
    HANG.wait(10)


def test_a_hung_notifier_holds_the_reaper_neither_between_deletions_nor_for_long(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ephemeral.notify as notify

    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.setenv("EPHEMERAL_NOTIFIER", f"{__name__}.hang")
    monkeypatch.setattr(notify, "SEND_TIMEOUT_S", 0.2)
    backend = _leaks(3)
    left: list[int] = []
    monkeypatch.setattr(backend, "delete", lambda *a, _d=backend.delete, **k: (
        left.append(len(SENT)), _d(*a, **k))[1])
    SENT.clear()
    HANG.clear()
    started = time.monotonic()
    try:
        decisions = _reap_all(backend, tmp_path)
    finally:
        HANG.set()
    assert [d.deleted for d in decisions] == [True] * 3
    assert left == [0, 0, 0]  # every deletion before the first notification
    assert len(SENT) == 3
    assert time.monotonic() - started < 5


def test_a_failure_notification_carries_the_errors_first_line_masked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A failed job's error carries its log's tail: the notification says its type and first
    line, capped, with the submit boundary's secret rule applied."""
    from ephemeral.errors import JobFailed

    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.setenv("EPHEMERAL_NOTIFIER", f"{__name__}.remember")
    tail = "\n".join(f"epoch {i}" for i in range(40)) + \
        "\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG\nhf_abcdefghijklmnopqrstuvwxyz0123456789"
    [callback] = failure_callbacks()
    SENT.clear()
    callback({"dag": SimpleNamespace(dag_id="d"), "run_id": "r",
              "ti": SimpleNamespace(task_id="train"),
              "exception": JobFailed("raysubmit_x", "FAILED", tail)})
    callback({"dag": SimpleNamespace(dag_id="d"), "run_id": "r",
              "ti": SimpleNamespace(task_id="train"),
              "exception": RuntimeError("could not read s3://AKIAABCDEFGHIJKLMNOP:sec/ret@b/x "
                                        "with ghp_abcdefghijklmnopqrstuvwxyz0123456789 " +
                                        "x" * 600)})
    for sent in SENT:
        message = sent["ephemeral_message"]
        assert len(message.splitlines()) == 1
        assert len(message) < 300 + 200
        for secret in ("wJalrXUtnFEMI", "hf_abc", "AKIAABCD", "sec/ret", "ghp_abc"):
            assert secret not in message
    assert SENT[0]["ephemeral_message"].startswith("d r: task train failed (JobFailed: ")
    assert "RuntimeError: could not read s3://***@b/x with ***" in SENT[1]["ephemeral_message"]


def test_a_mapped_tasks_failure_says_which_copy(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.setenv("EPHEMERAL_NOTIFIER", f"{__name__}.remember")
    [callback] = failure_callbacks()
    SENT.clear()
    for index in (3, -1):
        callback({"dag": SimpleNamespace(dag_id="d"), "run_id": "r",
                  "ti": SimpleNamespace(task_id="delete", map_index=index),
                  "exception": RuntimeError("boom")})
    assert [m["ephemeral_message"].split(" (")[0] for m in SENT] == [
        "d r: task delete[3] failed", "d r: task delete failed"]


def test_the_gate_alert_uses_the_notifications_message(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    import importlib.util

    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.setenv("EPHEMERAL_NOTIFIER", f"{__name__}.remember")
    source = Path(__file__).resolve().parents[2] / "dags" / "train_distributed.py"
    text = source.read_text()
    assert "configured_notifier" not in text  # no message of its own
    spec = importlib.util.spec_from_file_location("train_distributed_dag", source)
    assert spec is not None
    assert spec.loader is not None
    dag_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag_module)
    SENT.clear()
    dag_module.alert_gate_failed({
        "dag": SimpleNamespace(dag_id="train_distributed"), "run_id": "r",
        "ti": SimpleNamespace(task_id="deploy.gate_failed"),
        "exception": RuntimeError("gate v1 failed: auc 0.5 < 0.8\nhf_abcdefghijklmnopqrstuvwxyz0123")})
    [sent] = SENT
    assert sent["ephemeral_event"] == "gate_failed"
    assert sent["ephemeral_message"].startswith(
        "train_distributed r: model gate failed (RuntimeError: gate v1 failed: auc 0.5 < 0.8)")
