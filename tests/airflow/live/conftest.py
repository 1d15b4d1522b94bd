"""The fault matrix's recorder (the live stack itself is tests/airflow/conftest.py's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.airflow.live import reliability


@pytest.fixture(scope="session")
def matrix() -> Iterator[reliability.Results]:
    """Scenario results; merged into the results file and docs/reliability.md at the end."""
    results = reliability.Results()
    yield results
    if results.rows:
        reliability.save(results.rows)
