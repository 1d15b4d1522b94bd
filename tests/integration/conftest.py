"""One real ``ray/train-gpu`` cluster (ci-cpu: head + 2 one-CPU workers) for the modules that
only run jobs on it (test_gate, test_jobs): one cluster start fewer. Those modules run last in
this package, together, so the cluster idles through no other test and is deleted (and checked
gone) as soon as they are done."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeral.backends.base import ClusterHandle
from ephemeral.backends.local import LocalBackend
from ephemeral.lifecycle import provision
from tests.conftest import manual, small

HERE = Path(__file__).resolve().parent
SHARED = "train_ray"


@pytest.fixture(scope="package")
def train_ray(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[LocalBackend, ClusterHandle]]:
    from tests.airflow.live.probes import cluster_processes

    home = tmp_path_factory.mktemp("train-ray-home")
    backend = LocalBackend(home)
    spec = small("ray/train-gpu")
    try:
        yield backend, provision(backend, spec, manual(spec, "train-ray"), timeout=240).handle
    finally:
        for h in backend.list_owned():
            backend.delete(h, wait=True)
        # This home's processes only (each carries its cluster folder in its environment),
        # Ray Serve's actors included: other agents start engines on this machine meanwhile.
        assert cluster_processes(home) == {}, "processes of the shared Ray cluster left behind"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within tests/integration: the modules that use the shared cluster last, side by side
    (each module kept whole, files in their order). Other folders are left as they are."""
    places = [i for i, item in enumerate(items) if item.path.is_relative_to(HERE)]
    sharing = {items[i].path for i in places
               if SHARED in getattr(items[i], "fixturenames", ())}
    ordered = sorted((items[i] for i in places), key=lambda item: item.path in sharing)
    for i, item in zip(places, ordered, strict=True):
        items[i] = item
