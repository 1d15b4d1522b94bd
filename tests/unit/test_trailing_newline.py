"""A value that ends in a newline is not the value it looks like: every validating pattern
matches the whole text (``re.match`` with ``$`` lets a trailing newline through, and such a
name reaches folders, labels and selectors)."""

from __future__ import annotations

from typing import Any

import pytest

from ephemeral.errors import EphemeralError, SpecError
from ephemeral.settings import instance_of
from ephemeral.specs import resolve
from ephemeral.specs.identity import check_cluster_name
from ephemeral.specs.loader import parse_spec
from ephemeral.specs.quantities import duration_seconds, memory_bytes


def _spec(**changes: Any) -> dict[str, Any]:
    doc = resolve("ray/adhoc-cpu").spec.model_dump(mode="json", by_alias=True)
    return doc | changes


@pytest.mark.parametrize("check", [
    lambda: duration_seconds("1h\n"),
    lambda: memory_bytes("2Gi\n"),
    lambda: resolve("ray/adhoc-cpu\n"),
    lambda: check_cluster_name("team\n"),
    lambda: parse_spec(_spec(name="adhoc-cpu\n"), "<test>"),
    lambda: parse_spec(_spec(version="1.0.0\n"), "<test>"),
    lambda: instance_of({"EPHEMERAL_INSTANCE": "prod\n"}),
], ids=["duration", "memory", "spec-ref", "cluster-name", "spec-name", "spec-version",
        "instance"])
def test_a_trailing_newline_is_refused(check: Any) -> None:
    with pytest.raises((EphemeralError, SpecError, ValueError)):
        check()


def test_the_same_values_without_it_pass() -> None:
    assert duration_seconds("1h") == 3600
    assert memory_bytes("2Gi") == 2 * 2**30
    assert check_cluster_name("team") == "team"
    assert parse_spec(_spec(), "<test>").name == "adhoc-cpu"
    assert instance_of({"EPHEMERAL_INSTANCE": "prod"}) == "prod"
