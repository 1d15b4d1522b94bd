"""A teardown deletes every cluster its setup made in the run, or fails saying why: never a
success ("nothing to delete") while its setup's clusters run on."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.conftest import task_states

CASES = Path(__file__).parent / "dags" / "teardown_cases.py"


@pytest.fixture(scope="module")
def bag(airflow_db: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    found = DagBag(dag_folder=str(CASES))
    assert found.import_errors == {}
    return found


def _clusters() -> set[str]:
    from ephemeral.backends.fake import process_backend

    return {h.name for h in process_backend().list_owned()}


@pytest.mark.parametrize("dag_id", ["teardown_mapped_no_handle", "teardown_mapped_handles",
                                    "teardown_mapped_per_index", "teardown_in_group"])
def test_a_teardown_deletes_every_cluster_of_its_setup(bag: Any, dag_id: str,
                                                       ephemeral_home: Path) -> None:
    before = _clusters()
    run = bag.get_dag(dag_id).test()
    states = task_states(run)
    assert set(states.values()) == {"success"}, states
    assert _clusters() - before == set()


def test_a_setup_task_id_the_dag_does_not_bear_out_fails_the_teardown_naming_the_id(
        bag: Any, ephemeral_home: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    run = bag.get_dag("teardown_unprefixed_mapped").test()
    assert task_states(run)["g.delete[0]"] == "failed"
    said = caplog.text + "".join(capfd.readouterr())
    assert "setup_task_id='create' names no setup of this teardown" in said
    assert "It could mean 'g.create'" in said


def test_a_teardown_named_beyond_its_setups_still_takes_that_setup_at_execute() -> None:
    """Its DAG fails to parse (create_a has no teardown: test_wiring.py), but a DAG changed
    after it was parsed can run it: refusing the named setup there would leave its clusters
    running."""
    from airflow.sdk.exceptions import AirflowFailException

    from tests.airflow.wiring_cases import teardown_named_beyond_its_setups as dag

    delete_a = dag.get_task("delete_a")
    assert delete_a._setup_task(AirflowFailException, running=True) == "create_a"
    with pytest.raises(AirflowFailException, match="names no setup of this teardown"):
        delete_a._setup_task(AirflowFailException)


def test_a_setup_task_id_missing_its_group_prefix_is_refused_at_parse() -> None:
    from airflow.sdk import DAG, TaskGroup

    from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator

    with DAG(dag_id="d", schedule=None, start_date=datetime(2026, 1, 1)), TaskGroup("g"):
        create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1")
        delete = DeleteClusterOperator(task_id="delete", setup_task_id="create")
        with pytest.raises(ValueError, match=r"It could mean 'g\.create'"):
            create >> delete.as_teardown(setups=create)


def test_a_teardown_of_two_setups_must_name_one() -> None:
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.operators import CreateClusterOperator, DeleteClusterOperator

    with DAG(dag_id="d", schedule=None, start_date=datetime(2026, 1, 1)):
        a = CreateClusterOperator(task_id="a", spec="ray/adhoc-cpu@1")
        b = CreateClusterOperator(task_id="b", spec="ray/adhoc-cpu@1")
        delete = DeleteClusterOperator(task_id="delete").as_teardown(setups=[a, b])
        with pytest.raises(AirflowFailException, match=r"2 cluster setups \(a, b\)"):
            delete._setup_task(AirflowFailException)
        assert DeleteClusterOperator(task_id="d2", setup_task_id="b").as_teardown(
            setups=[a, b])._setup_task(AirflowFailException) == "b"


def test_a_mapped_teardown_deletes_the_cluster_its_handle_names_at_another_map_index(
        bag: Any, ephemeral_home: Path) -> None:
    from ephemeral.backends.fake import process_backend

    before = _clusters()
    run = bag.get_dag("teardown_mapped_after_a_failed_setup").test()
    states = task_states(run)
    assert (states["create[0]"], states["create[1]"]) == ("failed", "success"), states
    assert states["delete[0]"] == "success", states
    assert "delete[1]" not in states
    left = [h for h in process_backend().list_owned() if h.name not in before]
    assert left == [], [h.labels for h in left]


def test_a_mapped_teardown_with_a_handle_leaves_other_map_indexes_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """delete[0] got create[1]'s handle: create[0]'s cluster (kept after its failure,
    on_failure='keep') is not its to delete, though it is at the teardown's own map index."""
    from types import SimpleNamespace

    from ephemeral.airflow import operators
    from ephemeral.airflow.context import SetupIdentity
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.specs import resolve

    backend = InMemoryBackend()
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    kept, used = (backend.create(spec, identity=SetupIdentity(
        spec_name="adhoc-cpu", dag_id="d", run_id="r", task_id="create", map_index=i,
        on_failure=("keep", "delete")[i])) for i in (0, 1))
    monkeypatch.setattr(operators, "task_backend", lambda *_a: backend)
    op = operators.DeleteClusterOperator(task_id="delete", setup_task_id="create",
                                         cluster=used.model_dump(mode="json"))
    context = {"dag": SimpleNamespace(dag_id="d"), "run_id": "r",
               "ti": SimpleNamespace(task_id="delete", map_index=0)}
    assert op.execute(context) == {"deleted": [used.name]}
    assert [h.name for h in backend.list_owned()] == [kept.name]
