"""Trust boundaries without engine processes: deployment instances, the readiness trigger's
failure paths, the teardown's choice of backend, broken state files and the reaper's memory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends.base import ClusterHandle, ClusterStatus, OwnerSelector, Phase
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.errors import BackendUnavailable, IdentityConflict, SpecError
from ephemeral.reaper import RunInfo, reap
from ephemeral.settings import get_settings, instance_of
from ephemeral.specs import ClusterIdentity, resolve
from ephemeral.specs.identity import INSTANCE_LABEL

SPEC = resolve("ray/adhoc-cpu", "ci-cpu")
RUN = "scheduled__2026-01-01T00:00:00+00:00"  # the same in every Airflow


def ident(instance: str, run: str = RUN) -> ClusterIdentity:
    return ClusterIdentity(spec_name=SPEC.spec.name, dag_id="train", run_id=run,
                           task_id="create", instance=instance)


# -- the deployment instance ---------------------------------------------------------------

def test_the_default_instance_is_stable_per_airflow_home_and_differs_between_homes(
        tmp_path: Path) -> None:
    a, b = str(tmp_path / "staging"), str(tmp_path / "prod")
    assert instance_of({"AIRFLOW_HOME": a}) == instance_of({"AIRFLOW_HOME": a + "/"})
    assert instance_of({"AIRFLOW_HOME": a}) != instance_of({"AIRFLOW_HOME": b})
    assert instance_of({"AIRFLOW_HOME": a, "EPHEMERAL_INSTANCE": "prod-eu"}) == "prod-eu"
    assert instance_of({"AIRFLOW__EPHEMERAL__INSTANCE": "staging"}) == "staging"


@pytest.mark.parametrize("bad", ["Prod", "prod_eu", "-prod", "x" * 41, "a b"])
def test_an_invalid_instance_is_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(SpecError, match="EPHEMERAL_INSTANCE"):
        instance_of({"EPHEMERAL_INSTANCE": bad})


def test_the_same_run_in_two_deployments_names_two_clusters_with_their_own_label() -> None:
    staging, prod = ident("staging"), ident("prod")
    assert staging.name != prod.name
    assert staging.labels()[INSTANCE_LABEL] == "staging"
    assert prod.labels()[INSTANCE_LABEL] == "prod"


def test_selectors_are_scoped_to_this_instance_unless_told(
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = InMemoryBackend()
    theirs = backend.create(SPEC, identity=ident("staging"))
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    mine = backend.create(SPEC, identity=ClusterIdentity(
        spec_name=SPEC.spec.name, dag_id="train", run_id=RUN, task_id="create"))
    assert mine.instance == "prod"
    assert [h.name for h in backend.list_owned()] == [mine.name]
    run_selector = OwnerSelector(labels={"ephemeral.dev/run-id": mine.labels[
        "ephemeral.dev/run-id"]})
    assert [h.name for h in backend.list_owned(run_selector)] == [mine.name]
    assert {h.name for h in backend.list_owned(OwnerSelector.everything())} == {
        mine.name, theirs.name}
    assert backend.get(theirs.name) is None
    assert backend.get(theirs.name, all_instances=True) == theirs


def test_a_cluster_of_another_instance_is_never_adopted(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = InMemoryBackend()
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "staging")
    backend.create(SPEC, identity=ClusterIdentity.manual(SPEC.spec.name, "train"))
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    with pytest.raises(IdentityConflict, match="belongs to deployment instance 'staging'"):
        backend.create(SPEC, identity=ClusterIdentity.manual(SPEC.spec.name, "train"))


def test_the_reaper_of_one_instance_never_reaps_another_instances_cluster(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backend = InMemoryBackend()
    theirs = backend.create(SPEC, identity=ident("staging"))
    mine = backend.create(SPEC, identity=ident("prod"))
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    ended = RunInfo("failed", datetime.now(UTC) - timedelta(hours=1))
    decisions = reap(backend, lookup=lambda _d, _r: ended, grace=0,
                     memory_file=tmp_path / "seen.json")
    assert [(d.cluster, d.deleted) for d in decisions] == [(mine.name, True)]
    assert backend.list_owned(OwnerSelector.everything()) == [theirs]


# -- the reaper's memory of finished runs --------------------------------------------------

def test_a_cleared_run_gets_its_grace_period_again(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    handle = backend.create(SPEC, identity=ident(get_settings().instance))
    memory, t0 = tmp_path / "seen.json", datetime.now(UTC)
    states = iter(["failed", "running", "failed"])

    def lookup(_d: str, _r: str) -> RunInfo:
        return RunInfo(next(states))  # no end date: the reaper's memory is the clock

    [first] = reap(backend, lookup=lookup, grace=600, now=t0, memory_file=memory)
    assert not first.delete
    assert "within the 600s grace" in first.reason
    [cleared] = reap(backend, lookup=lookup, grace=600, now=t0 + timedelta(minutes=9),
                     memory_file=memory)
    assert "is running" in cleared.reason
    # Ended again 2 minutes later: 11 minutes after it was first seen finished, but only 2
    # after it ended this time; without forgetting it would be deleted now.
    [again] = reap(backend, lookup=lookup, grace=600, now=t0 + timedelta(minutes=11),
                   memory_file=memory)
    assert not again.delete, again.reason
    assert backend.get(handle.name) is not None


# -- the readiness trigger ---------------------------------------------------------------

class ScriptedBackend(InMemoryBackend):
    """Probes answer from a script: a status, or an exception to raise."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__()
        self.script = script
        self.deleted: list[str] = []

    def probe(self, handle: ClusterHandle) -> ClusterStatus:
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, BaseException):
            raise step
        return ClusterStatus(phase=step, nodes_expected=2,
                             nodes_ready=2 if step is Phase.READY else 0)

    def delete(self, target: Any, *, wait: bool = True) -> None:
        self.deleted.append(self.target_name(target))
        super().delete(target, wait=wait)


def run_trigger(monkeypatch: pytest.MonkeyPatch, backend: Any, *, timeout: float = 5.0,
                conn: str | None = None) -> dict[str, Any]:
    from ephemeral.airflow import triggers

    if backend is not None:
        monkeypatch.setattr(triggers, "task_backend", lambda *_a: backend)
    handle = InMemoryBackend().create(SPEC, identity=ident("prod"))
    trig = triggers.ClusterReadyTrigger(backend="local", handle=handle.model_dump(mode="json"),
                                        timeout=timeout, poll_interval=0.01,
                                        kubernetes_conn_id=conn)
    _kind, kwargs = trig.serialize()
    assert "token" not in json.dumps(kwargs).lower()
    again = triggers.ClusterReadyTrigger(**kwargs)

    async def first() -> dict[str, Any]:
        async for event in again.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    event = asyncio.run(first())
    assert event["handle"]["name"] == handle.name  # the operator can always delete it
    return event


@pytest.mark.parametrize("boom", [ValueError("dashboard answered a list"),
                                  KeyError("result"), RuntimeError("a bug")])
def test_any_error_while_waiting_is_a_failed_event_carrying_the_handle(
        monkeypatch: pytest.MonkeyPatch, boom: Exception) -> None:
    event = run_trigger(monkeypatch, ScriptedBackend([Phase.STARTING, boom]))
    assert event["status"] == "failed"
    assert event["error"] == type(boom).__name__


def test_a_connection_only_the_worker_knows_is_a_failed_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    event = run_trigger(monkeypatch, None, conn="only_in_the_workers_env")
    assert event["status"] == "failed"
    assert "only_in_the_workers_env" in event["message"]


def test_retryable_errors_are_retried_until_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    busy = BackendUnavailable("API server: 503 Service Unavailable")
    event = run_trigger(monkeypatch, ScriptedBackend([busy, busy, Phase.STARTING, Phase.READY]))
    assert event["status"] == "ready"


def test_retryable_errors_until_the_deadline_are_a_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    event = run_trigger(monkeypatch, ScriptedBackend([BackendUnavailable("503")]), timeout=0.3)
    assert event["status"] == "timeout"
    assert "503" in event["message"]


@pytest.mark.parametrize("phase", [Phase.GONE, Phase.DELETING])
def test_a_cluster_that_goes_away_fails_the_wait(monkeypatch: pytest.MonkeyPatch,
                                                  phase: Phase) -> None:
    event = run_trigger(monkeypatch, ScriptedBackend([Phase.STARTING, phase]))
    assert event["status"] == "failed"
    assert phase.value in event["message"]


def test_the_deadline_survives_a_triggerer_restart() -> None:
    from ephemeral.airflow.triggers import ClusterReadyTrigger

    trig = ClusterReadyTrigger(backend="local", handle={"name": "x"}, timeout=60)
    time.sleep(0.05)
    _, kwargs = trig.serialize()
    assert ClusterReadyTrigger(**kwargs).deadline == trig.deadline


def test_the_failed_event_deletes_the_cluster_through_the_operator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowException

    from ephemeral.airflow import operators

    backend = ScriptedBackend([Phase.STARTING])
    handle = backend.create(SPEC, identity=ident("prod"))
    monkeypatch.setattr(operators, "task_backend", lambda *_a: backend)
    op = operators.CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu")
    with pytest.raises(AirflowException, match="did not become ready"):
        op.execute_complete({}, {"status": "failed", "message": "ValueError: list",
                                 "handle": handle.model_dump(mode="json")})
    assert backend.deleted == [handle.name]


# -- the teardown's backend ----------------------------------------------------------------

def teardown_context() -> dict[str, Any]:
    return {"dag": SimpleNamespace(dag_id="train"), "run_id": RUN,
            "ti": SimpleNamespace(task_id="delete", map_index=-1)}


@pytest.mark.parametrize(("configured", "why"), [
    ({"backend": "local"}, "backend 'local' but the cluster is on 'kubernetes'"),
    ({"kubernetes_conn_id": "prod_k8s"}, "made through 'staging_k8s'"),
])
def test_a_teardown_configured_for_another_backend_fails_loudly(
        configured: dict[str, str], why: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.operators import DeleteClusterOperator

    handle = InMemoryBackend().create(SPEC, identity=ident(get_settings().instance))
    handle = handle.model_copy(update={"backend": "kubernetes", "connection": "staging_k8s"})
    op = DeleteClusterOperator(task_id="delete", setup_task_id="create",
                               cluster=handle.model_dump(mode="json"), **configured)
    with pytest.raises(AirflowFailException, match=why):
        op.execute(teardown_context())


def test_a_teardown_in_another_instance_than_its_setup_fails_loudly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.operators import DeleteClusterOperator

    handle = InMemoryBackend().create(SPEC, identity=ident("staging"))
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    op = DeleteClusterOperator(task_id="delete", setup_task_id="create",
                               cluster=handle.model_dump(mode="json"))
    with pytest.raises(AirflowFailException, match="EPHEMERAL_INSTANCE differs"):
        op.execute(teardown_context())


def test_the_teardown_deletes_through_the_handles_own_backend(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.airflow import operators

    backend = ScriptedBackend([Phase.READY])
    handle = backend.create(SPEC, identity=ident(get_settings().instance))
    asked: list[tuple[Any, ...]] = []

    def task_backend(*args: Any) -> ScriptedBackend:
        asked.append(args)
        return backend

    monkeypatch.setattr(operators, "task_backend", task_backend)
    op = operators.DeleteClusterOperator(task_id="delete", setup_task_id="create",
                                         cluster=handle.model_dump(mode="json"))
    assert op.execute(teardown_context()) == {"deleted": [handle.name]}
    assert asked == [("fake", None)]
    assert backend.deleted == [handle.name]


# -- a broken state file -------------------------------------------------------------------

def test_an_unreadable_state_hides_no_other_cluster_and_still_deletes(
        ephemeral_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ephemeral.backends.local import LocalBackend, procs

    backend = LocalBackend(ephemeral_home)
    broken = ephemeral_home / "clusters" / "eph-old-schema"
    broken.mkdir(parents=True)
    old_uid = f"u-old-{uuid.uuid4().hex}"  # killed by marker: another run's must never match
    from ephemeral.backends.local.slots import runtime_dir

    temp_root = runtime_dir() / f"r99-{uuid.uuid4().hex[:6]}"  # its nodes' TMPDIR, with a spill
    (temp_root / "tmp").mkdir(parents=True)
    (temp_root / "tmp" / "spill.bin").write_bytes(b"x")
    elsewhere = ephemeral_home / "not-a-temp-root"  # a path the file names outside of them
    elsewhere.mkdir()
    (broken / "state.json").write_text(json.dumps({"uid": old_uid, "version": 0, "nodes": 3,
                                                   "ray_temp_root": str(temp_root)}))
    garbage = ephemeral_home / "clusters" / "eph-garbage"
    garbage.mkdir()
    (garbage / "state.json").write_text("{not json")
    odd = ephemeral_home / "clusters" / "eph-odd"
    odd.mkdir()
    (odd / "state.json").write_text(json.dumps({"uid": "u-odd", "temp_root": str(elsewhere)}))
    # Processes of those clusters, marked as the backend marks every node it starts.
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 env=os.environ | marker, start_new_session=True)
                for marker in ({procs.UID_ENV: old_uid}, {procs.DIR_ENV: str(garbage)})]
    try:
        good = InMemoryBackend().create(SPEC, identity=ident(get_settings().instance))
        from ephemeral.backends.local.state import ClusterState, save

        save(ephemeral_home / "clusters" / good.name,
             ClusterState(handle=good, uid="u-good", slot=0, plan=[]))
        assert [h.name for h in backend.list_owned()] == [good.name]
        assert "eph-old-schema" in caplog.text
        assert "eph-garbage" in caplog.text
        backend.delete("eph-old-schema", wait=True)
        backend.delete("eph-garbage", wait=True)
        for p in sleepers:
            assert p.wait(timeout=5) is not None  # killed
        assert not broken.exists()
        assert not garbage.exists()
        assert not temp_root.exists()  # its temp root went with it
        backend.delete("eph-odd", wait=True)
        assert not odd.exists()
        assert elsewhere.is_dir()  # only temp roots where they are made are removed
        assert [h.name for h in backend.list_owned()] == [good.name]
    finally:
        for p in sleepers:
            p.kill()


def test_a_stray_entry_or_an_unreadable_state_stops_no_cleanup_of_the_home(
        ephemeral_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file in clusters/ (.DS_Store), a state.json that is a folder, one of bytes that are no
    text (or, on a home shared by OS users, another user's 0700 folder): each raised an OSError
    from every listing, so ls, reap, down --all and the teardowns of that home all failed and
    its expired clusters ran on."""
    from typer.testing import CliRunner

    from ephemeral.backends.local import LocalBackend
    from ephemeral.backends.local.state import ClusterState, save
    from ephemeral.cli import main

    clusters = ephemeral_home / "clusters"
    clusters.mkdir(parents=True)
    (clusters / ".DS_Store").write_bytes(b"\x00\x01")
    (clusters / "eph-dir-state" / "state.json").mkdir(parents=True)
    (clusters / "eph-bytes").mkdir()
    (clusters / "eph-bytes" / "state.json").write_bytes(b"\xff\xfe{")
    good = InMemoryBackend().create(SPEC, identity=ident(get_settings().instance))
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    expired = good.model_copy(update={"expires_at": past})
    save(clusters / good.name, ClusterState(handle=expired, uid="u-good", slot=0, plan=[]))
    backend = LocalBackend(ephemeral_home)
    assert [h.name for h in backend.list_owned()] == [good.name]
    assert "eph-dir-state" in caplog.text
    assert "eph-bytes" in caplog.text
    assert ".DS_Store" not in caplog.text  # no cluster, nothing to say
    listed = CliRunner().invoke(main.app, ["ls", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [c["handle"]["name"] for c in json.loads(listed.stdout)] == [good.name]
    decided = reap(backend, lookup=None, memory_file=ephemeral_home / "memory.json")
    assert [(d.cluster, d.deleted) for d in decided] == [(good.name, True)], decided
    assert "expired" in decided[0].reason
    assert not (clusters / good.name).exists()
    for name in ("eph-dir-state", "eph-bytes"):  # each still deleted by name
        backend.delete(name, wait=True)
        assert not (clusters / name).exists()


# -- a job may not outlive its cluster ----------------------------------------------------

@pytest.mark.parametrize("operator", ["RayJobOperator", "EphemeralSparkSubmitOperator"])
def test_a_job_timeout_past_the_clusters_expiry_is_refused_before_submitting(
        operator: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import operators, spark_submit

    spec = SPEC if operator == "RayJobOperator" else resolve("spark/etl", "ci-cpu")
    handle = InMemoryBackend().create(spec, identity=ident(get_settings().instance))
    ttl = spec.spec.lifetime.ttl_seconds
    kwargs: dict[str, Any] = ({"entrypoint": "python hello_ray.py"}
                              if operator == "RayJobOperator" else {"application": "app.py"})
    module = operators if operator == "RayJobOperator" else spark_submit
    op = getattr(module, operator)(task_id="job", cluster=handle.model_dump(mode="json"),
                                      job_timeout=ttl + 3600, **kwargs)
    with pytest.raises(AirflowFailException, match=rf"job_timeout.*{ttl + 3600}"):
        op.execute({"ti": SimpleNamespace(xcom_push=lambda **_k: None, try_number=1)})


def test_spark_submit_to_a_cluster_without_a_master_says_what_to_use() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator
    from ephemeral.backends.base import Endpoints

    spec = resolve("spark/etl", "ci-cpu")
    handle = InMemoryBackend().create(spec, identity=ident(get_settings().instance))
    connect_only = handle.model_copy(update={"endpoints": Endpoints(
        spark_connect="sc://x-server:15002", spark_ui="http://x-server:4040")})
    op = EphemeralSparkSubmitOperator(task_id="etl", cluster=connect_only.model_dump(mode="json"),
                                      application="app.py")
    with pytest.raises(AirflowFailException, match=r"no Spark master .* use Spark Connect"):
        op.execute({"ti": SimpleNamespace(xcom_push=lambda **_k: None, try_number=1)})


def test_ls_in_another_instances_shell_says_whose_clusters_it_hides(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell without the stack's $AIRFLOW_HOME is another instance: its empty listing names
    the instances whose clusters are there, and how to see them, instead of "no clusters"."""
    from typer.testing import CliRunner

    from ephemeral.cli import main

    backend = InMemoryBackend()
    monkeypatch.setattr(main, "_backend", lambda name: backend)
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    assert CliRunner().invoke(main.app, ["ls"]).output.strip() == "no clusters"
    backend.create(SPEC, identity=ident("staging"))
    run = CliRunner().invoke(main.app, ["ls"])
    assert run.exit_code == 0
    assert "no clusters of instance prod; staging has some here (--all-instances" in run.output
    listed = CliRunner().invoke(main.app, ["ls", "--all-instances"])
    assert "staging" in listed.output
