"""One real ``ray/train-gpu`` cluster (ci-cpu: head + 2 one-CPU workers) and one real
``spark/etl`` cluster (master + 2 workers + Connect) for the modules that only run jobs on them
or look at them (test_gate, test_jobs, test_local_clusters): two cluster starts fewer per
engine user. Those modules run last in this package, together, so the clusters idle through no
other test and are deleted (and checked gone: every node's session empty, the cluster's folder
removed, no process of their home left) as soon as they are done."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ephemeral.backends.base import ClusterHandle
from ephemeral.backends.local import LocalBackend
from ephemeral.backends.local.backend import load
from ephemeral.lifecycle import provision
from tests.conftest import manual, small

HERE = Path(__file__).resolve().parent
SHARED = ("train_ray", "etl_spark")


def sessions_alive(backend: LocalBackend, name: str) -> list[int]:
    state = load(backend.home / "clusters" / name)
    assert state is not None
    return [n.sid for n in state.nodes]


def no_process_in(sids: list[int]) -> bool:
    for p in psutil.process_iter(["pid", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getsid(p.info["pid"]) in sids:
                return False
        except OSError:
            continue
    return True


def shared_cluster(tmp_path_factory: pytest.TempPathFactory, ref: str, name: str
                   ) -> Iterator[tuple[LocalBackend, ClusterHandle]]:
    """A cluster for the package's sharing modules; deleted at the end, with the checks a test
    that deletes its own makes: no process in its nodes' sessions, its folder gone."""
    from tests.airflow.live.probes import cluster_processes

    home = tmp_path_factory.mktemp(f"{name}-home")
    backend = LocalBackend(home)
    spec = small(ref)
    handle = None
    try:
        handle = provision(backend, spec, manual(spec, name), timeout=240).handle
        yield backend, handle
    finally:
        sids = sessions_alive(backend, handle.name) if handle is not None else []
        state = load(home / "clusters" / handle.name) if handle is not None else None
        for h in backend.list_owned():
            backend.delete(h, wait=True)
        if handle is not None:
            assert backend.pids(handle.name) == []
            assert no_process_in(sids), f"a process of the shared {ref} cluster is left"
            assert not (home / "clusters" / handle.name).exists()
            assert state is not None
            assert state.temp_root
            assert not Path(state.temp_root).exists(), "its temporary folder is left"
        # This home's processes only (each carries its cluster folder in its environment),
        # Ray Serve's actors included: other agents start engines on this machine meanwhile.
        assert cluster_processes(home) == {}, f"processes of the shared {ref} cluster left behind"


@pytest.fixture(scope="package")
def train_ray(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[LocalBackend, ClusterHandle]]:
    yield from shared_cluster(tmp_path_factory, "ray/train-gpu", "train-ray")


@pytest.fixture(scope="package")
def etl_spark(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[LocalBackend, ClusterHandle]]:
    yield from shared_cluster(tmp_path_factory, "spark/etl", "etl-spark")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within tests/integration: the modules that use the shared cluster last, side by side
    (each module kept whole, files in their order). Other folders are left as they are."""
    places = [i for i, item in enumerate(items) if item.path.is_relative_to(HERE)]
    sharing = {items[i].path for i in places
               if set(SHARED) & set(getattr(items[i], "fixturenames", ()))}
    ordered = sorted((items[i] for i in places), key=lambda item: item.path in sharing)
    for i, item in zip(places, ordered, strict=True):
        items[i] = item
