"""The browser tests drive the shared live stack (tests/airflow/conftest.py: ``ephemeral.devstack``
on a throwaway PostgreSQL, what ``make airflow`` starts) as its users do: a person in headless
Chromium, a client over REST API v2."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots of the browser tests (kept under pytest's temporary folder)."""
    return tmp_path_factory.mktemp("screenshots")
