"""Airflow discovers ephemeral as a provider, and its links and operators are registered."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any


def test_the_provider_entry_point_resolves() -> None:
    [ep] = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith(
        "ephemeral.")]
    info: dict[str, Any] = ep.load()()
    assert info["package-name"] == "airflow-provider-ephemeral"
    for path in info["extra-links"]:
        module, _, name = path.rpartition(".")
        link = getattr(__import__(module, fromlist=[name]), name)()
        assert link.name in {"Ray dashboard", "Spark master UI", "Run report"}
    assert info["triggers"][0]["python-modules"] == ["ephemeral.airflow.triggers"]


def test_airflow_lists_the_provider(airflow_db: str) -> None:
    from airflow.providers_manager import ProvidersManager

    providers = ProvidersManager().providers
    assert "airflow-provider-ephemeral" in providers
    assert "ephemeral.airflow.links.RayDashboardLink" in ProvidersManager().extra_links_class_names


def test_triggers_serialize_to_an_importable_path() -> None:
    from ephemeral.airflow.triggers import ClusterReadyTrigger, RayJobTrigger

    path, kwargs = ClusterReadyTrigger(backend="local", handle={"name": "x"}, timeout=5).serialize()
    assert path == "ephemeral.airflow.triggers.ClusterReadyTrigger"
    assert ClusterReadyTrigger(**kwargs).serialize() == (path, kwargs)
    path, kwargs = RayJobTrigger(handle={"name": "c"}, backend="local", job_id="j").serialize()
    assert set(kwargs) == {"handle", "backend", "conn_id", "job_id", "timeout", "deadline",
                           "poll_interval", "release", "settles_at"}  # no URL, header or token
    assert RayJobTrigger(**kwargs).serialize() == (path, kwargs)


def test_readiness_probes_start_fast_and_back_off_to_the_poll_interval() -> None:
    from itertools import islice

    from ephemeral.airflow.triggers import backoff

    assert list(islice(backoff(2.0), 6)) == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert list(islice(backoff(0.1), 3)) == [0.1, 0.1, 0.1]
