"""A create that finds its own cluster past its TTL does not adopt it: the reaper would delete
it under the work the create is for (a retry after a long ``retry_delay``, a run cleared hours
later). The setup fails naming the fix; the run's end deletes the cluster."""

from __future__ import annotations

import pytest

from ephemeral.backends.fake import InMemoryBackend
from ephemeral.errors import IdentityConflict
from ephemeral.specs import ClusterIdentity, resolve


def test_an_expired_cluster_is_never_adopted() -> None:
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    identity = ClusterIdentity(spec_name=spec.spec.name, dag_id="train",
                               run_id="scheduled__2026-01-01T00:00:00+00:00",
                               task_id="create_cluster")
    backend = InMemoryBackend()
    first = backend.create(spec, identity=identity)
    assert backend.create(spec, identity=identity).adopted  # a retry adopts it...
    record = backend._clusters[first.name]
    record.handle = first.model_copy(update={"expires_at": "2026-01-01T00:00:00Z"})
    with pytest.raises(IdentityConflict, match=r"expired at 2026-01-01T00:00:00Z") as err:
        backend.create(spec, identity=identity)  # ...but not once its TTL is over
    assert f"ephemeral down {first.name}" in str(err.value)
    assert backend.created_total == 1


def test_a_run_id_equal_to_another_runs_hashed_label_selects_only_its_own() -> None:
    """Every backend confirms a label match by the full ids (``OwnerSelector.of_run``)."""
    from ephemeral.backends import OwnerSelector
    from ephemeral.specs.identity import label_value

    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    long_run = "manual__" + "x" * 70
    backend = InMemoryBackend()
    made = {run: backend.create(spec, identity=ClusterIdentity(
        spec_name=spec.spec.name, dag_id="train", run_id=run, task_id="create"))
        for run in (long_run, label_value(long_run))}
    for run, handle in made.items():
        assert [h.name for h in backend.list_owned(OwnerSelector.of_run("train", run))] == [
            handle.name]
        assert backend.owned(handle, OwnerSelector.of_run("train", run, "create")) is not None
    other = made[label_value(long_run)]
    assert backend.owned(other, OwnerSelector.of_run("train", long_run, "create")) is None
