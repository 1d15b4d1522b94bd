"""A cluster handle that came through XCom is a pointer, never an authority.

Anyone who may edit a task's XCom (Airflow's REST API has ``PATCH .../xcomEntries``), or a
DAG that passes one setup's output where another's belongs, could otherwise point a teardown,
a job or an early deletion at any cluster the backend reaches, and send that cluster's
credentials to whatever endpoints the handle names. So a task acts only on the backend's own
record of the named cluster, and only when that record carries this DAG run's owner labels
(deployment instance, DAG, run and setup task): what the cluster is, whose it is and where it
answers come from the backend. The handle adds only what its setup learnt after creating it
(the connection it went through, when it was ready).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from ephemeral.airflow.context import owner_selector
from ephemeral.backends.base import ClusterBackend, ClusterHandle, OwnerSelector


def pointer(value: Any) -> ClusterHandle:
    """The handle a task was given (the setup task's XCom), checked for shape only."""
    if isinstance(value, ClusterHandle):
        return value
    if not isinstance(value, dict):
        raise AirflowFailException(f"expected a cluster handle (the setup task's XCom), got "
                                   f"{type(value).__name__}")
    from pydantic import ValidationError

    try:
        return ClusterHandle.model_validate(value)
    except ValidationError as err:  # its fields, never the value (a traceback of the whole)
        wrong = sorted({".".join(map(str, e["loc"])) or "(the value)" for e in err.errors()})
        raise AirflowFailException(
            f"not a cluster handle (the setup task's XCom): {', '.join(wrong)} missing or "
            "invalid. Pass the setup task's output (CreateClusterOperator(...).output) as it "
            "is.") from None


def setup_operator(task: Any, setup_id: str | None) -> Any:
    """The ``CreateClusterOperator`` that ``task``'s DAG has as ``setup_id``; None when there
    is nothing to read (no task or DAG, no such task, a mapped or another kind of setup)."""
    from ephemeral.airflow.operators import CreateClusterOperator

    if task is None or setup_id is None or not task.has_dag() or not task.dag.has_task(setup_id):
        return None
    setup = task.dag.get_task(setup_id)
    return setup if isinstance(setup, CreateClusterOperator) else None


def setup_args(task: Any, setup_id: str) -> tuple[str | None, str | None, str | None] | None:
    """(backend, conn_id, kubernetes_conn_id) of the setup ``setup_id`` of ``task``'s DAG as the
    DAG gives them, a mapped setup's from its ``partial()`` when none is expanded; None when
    the DAG does not say (no such setup, or they vary per map index)."""
    if (setup := setup_operator(task, setup_id)) is not None:
        return setup.backend, setup.conn_id, setup.kubernetes_conn_id
    if task is None or not task.has_dag() or not task.dag.has_task(setup_id):
        return None
    from ephemeral.airflow.operators import CreateClusterOperator
    from ephemeral.airflow.release import is_a

    mapped = task.dag.get_task(setup_id)
    fields = ("backend", "conn_id", "kubernetes_conn_id")
    expanded = getattr(getattr(mapped, "expand_input", None), "value", None)
    if not is_a(mapped, CreateClusterOperator) or not isinstance(expanded, dict) or expanded.keys() & set(fields):
        return None
    partial = getattr(mapped, "partial_kwargs", {})
    return partial.get("backend"), partial.get("conn_id"), partial.get("kubernetes_conn_id")


def made_through(task: Any, handle: ClusterHandle, setup_id: str | None) -> None:
    """Fail unless ``handle`` names the connection (and backend, where the setup names one)
    that the setup task ``setup_id`` of ``task``'s DAG is configured with. The handle's
    connection picks the API server, the namespace and the deployment instance a task looks the
    cluster up in: an edited handle naming another connection of this Airflow (another team's,
    another deployment's) would otherwise point the task at clusters there. The DAG says which,
    as written (the setup's ``conn_id``, ``kubernetes_conn_id`` and ``backend`` are no
    templates), without resolving anything here: a setup that names none reaches this worker's
    configured backend, whichever that is. Nothing to compare without a DAG (a task run outside
    one), for a mapped setup (``.partial().expand()``: it may differ per map index) or a
    templated value."""
    if task is None or setup_id is None or not task.has_dag():
        return
    if not task.dag.has_task(setup_id):
        raise AirflowFailException(
            f"cluster {handle.name}: its handle names setup task {setup_id!r}, which DAG "
            f"{task.dag.dag_id} does not have. Pass this DAG's setup output as it is.")
    if (setup := setup_operator(task, setup_id)) is None:
        return
    from ephemeral.airflow.backends import deployment_connection

    named = setup.conn_id or setup.kubernetes_conn_id
    said = {"connection": named or deployment_connection(setup.backend, None),
            "backend": setup.backend}
    if any("{{" in str(value) for value in said.values()):
        return
    # A handle a setup naming no connection recorded before the deployment's connection was
    # set (None) is that setup's too.
    also = {None} if named is None else set()
    wrong = [f"{field} {getattr(handle, field)!r} where {setup_id} says {value!r}"
             for field, value in said.items()
             if (value is not None or field == "connection") and getattr(handle, field) != value
             and not (field == "connection" and getattr(handle, field) in also)]
    if wrong:
        raise AirflowFailException(
            f"cluster {handle.name}: its handle names {'; '.join(wrong)}: an edited handle, or "
            "another setup's. Nothing was looked up through it; pass the setup's output as it "
            "is.")


def with_setup_facts(record: ClusterHandle, handle: ClusterHandle) -> ClusterHandle:
    """The backend's record plus what only the setup's handle knows."""
    return record.model_copy(update={"connection": handle.connection,
                                     "ready_ts": handle.ready_ts})


def confirm(backend: ClusterBackend, handle: ClusterHandle,
            selector: OwnerSelector) -> ClusterHandle | None:
    """The backend's record of ``handle``'s cluster within ``selector``, or None."""
    record = backend.owned(handle, selector)
    return None if record is None else with_setup_facts(record, handle)


def job_cluster(context: Any, backend: ClusterBackend, handle: ClusterHandle,
                instance: str | None) -> ClusterHandle:
    """What a job task runs on (and may delete): the backend's record of the handle's cluster,
    when its setup made it in this DAG run for deployment ``instance``; else the task fails
    before it submits anything."""
    setup = handle.setup_task
    if setup is None:
        raise AirflowFailException(
            f"cluster {handle.name}: its handle records no setup task, so it is no handle a "
            "setup task of a DAG run pushed. Pass the output of this run's "
            "CreateClusterOperator as it is; jobs never run on another run's cluster.")
    record = confirm(backend, handle,
                     owner_selector(context, setup, instance, any_map_index=True))
    if record is not None:
        return record
    from ephemeral.airflow.report import released

    if (rel := released(context, handle)) is not None:
        why = f"it was deleted already, by {rel.task}"
    else:
        why = ("it is gone (deleted, or expired and reaped), or it is not this run's: another "
               "run's, another deployment's, or an edited handle")
    raise AirflowFailException(
        f"cluster {handle.name} (the task's cluster argument) is not a cluster {setup} made in "
        f"this DAG run on the {backend.name} backend"
        f"{f' for deployment instance {instance!r}' if instance else ''}: {why}. Jobs never "
        "run on, or delete, another run's cluster: pass this run's setup output as it is.")
