"""One real Airflow stack on a throwaway PostgreSQL for this package (``ephemeral.devstack``,
what ``make airflow`` starts), driven as its users drive it: a person in headless Chromium,
a client over REST API v2. Starting it is the expensive part, so every module shares it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeral.devstack import Stack


def clean_env() -> dict[str, str]:
    """This process's environment without the test session's Airflow and ephemeral settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "PYTEST_", "EPHEMERAL_"))}


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("services")
    s = Stack(home=base / "airflow", db="postgres", ephemeral_home=base / "ephemeral", port=0,
              base_env=clean_env())
    try:
        s.start()
        yield s
    finally:
        deleted = s.stop()
        left = s.processes()
        assert not left, f"processes of the stack left: {[p.cmdline() for p in left]}"
        # stop() deleted what the runs left; a passing run leaves nothing to delete.
        assert s.delete_clusters() == [], deleted


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots of the browser tests (kept under pytest's temporary folder)."""
    return tmp_path_factory.mktemp("screenshots")
