"""A setup whose cluster name holds a cluster of another spec (the spec file edited, or the
profile changed, between a setup's tries): the create refuses to adopt it, and every retry
would meet the same cluster while it sits idle, so the setup fails at once. An expired one is
the reaper's to delete, after which a retry can make the cluster anew: that stays retryable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from airflow.exceptions import AirflowFailException

from ephemeral.airflow.context import cluster_identity
from ephemeral.airflow.operators import CreateClusterOperator
from ephemeral.backends.fake import process_backend
from ephemeral.errors import ClusterExpired
from ephemeral.specs import resolve

SPEC = "ray/adhoc-cpu@1"


def first_try(run_id: str, replicas: int) -> tuple[dict[str, Any], str]:
    """What a first try left: the cluster of ``SPEC`` with ``replicas`` workers."""
    dag = type("Dag", (), {"dag_id": "conflicts"})()
    context: dict[str, Any] = {"dag": dag, "run_id": run_id,
                               "ti": type("TI", (), {"task_id": "create", "map_index": -1})()}
    spec = resolve(SPEC, "ci-cpu", {"workers": {"replicas": replicas}})
    made = process_backend().create(spec, identity=cluster_identity(context, spec.spec.name))
    return context, made.name


def setup() -> CreateClusterOperator:
    return CreateClusterOperator(task_id="create", spec=SPEC, profile="ci-cpu", backend="fake",
                                 overrides={"workers": {"replicas": 2}}, deferrable=False)


def test_a_name_holding_another_specs_cluster_fails_the_setup_without_retries() -> None:
    context, name = first_try("manual__conflict", replicas=1)
    try:
        with pytest.raises(AirflowFailException, match=f"cluster '{name}' already exists"):
            setup().execute(context)
    finally:
        process_backend().delete(name)


def test_an_expired_cluster_under_the_name_stays_retryable() -> None:
    context, name = first_try("manual__expired", replicas=2)
    record = process_backend()._clusters[name]
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    record.handle = record.handle.model_copy(update={"expires_at": past})
    try:
        with pytest.raises(ClusterExpired, match="expired at"):
            setup().execute(context)
    finally:
        process_backend().delete(name)
