"""`up` of a name that already exists adopts that cluster; when the adopting call's wait
fails (its timeout, Ctrl-C), the cluster is not its to delete: someone else's work runs on it.
What a call created it still deletes when its own wait fails."""

from __future__ import annotations

import pytest

from ephemeral.backends.fake import InMemoryBackend
from ephemeral.errors import ReadinessTimeout
from ephemeral.lifecycle import provision
from ephemeral.specs import resolve
from ephemeral.specs.identity import ClusterIdentity


def test_a_failed_wait_deletes_only_what_this_call_created() -> None:
    backend = InMemoryBackend(ready_after_probes=10**6)  # never ready: every wait times out
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    first = ClusterIdentity.manual(spec.spec.name, "team-shared")
    # Another terminal's `up`, still starting, in the same second: create says it adopted,
    # nothing compares whole-second creation times.
    backend.create(spec, identity=first)

    with pytest.raises(ReadinessTimeout):
        provision(backend, spec, ClusterIdentity.manual(spec.spec.name, "team-shared"),
                  timeout=0.3, poll=0.05)
    assert [h.name for h in backend.list_owned()] == ["team-shared"]

    with pytest.raises(ReadinessTimeout):
        provision(backend, spec, ClusterIdentity.manual(spec.spec.name, "mine"),
                  timeout=0.3, poll=0.05)
    assert [h.name for h in backend.list_owned()] == ["team-shared"]


def test_an_adopted_cluster_says_so_and_a_new_one_does_not() -> None:
    backend = InMemoryBackend(ready_after_probes=1)
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    made = provision(backend, spec, ClusterIdentity.manual(spec.spec.name, "x"), poll=0.01)
    again = provision(backend, spec, ClusterIdentity.manual(spec.spec.name, "x"), poll=0.01)
    assert (made.adopted, again.adopted) == (False, True)
    assert again.handle.name == made.handle.name


def test_up_by_hand_never_adopts_a_dag_runs_cluster_nor_a_task_anothers() -> None:
    """Adopted, a cluster is the adopter's to delete (`ephemeral down`, a teardown): a name
    typed by hand that is a running DAG task's cluster, or a task whose name is another task's
    by hand, is refused, naming the owner; the cluster is left as it was."""
    from ephemeral.errors import IdentityConflict

    backend = InMemoryBackend(ready_after_probes=1)
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    task = ClusterIdentity(spec_name=spec.spec.name, dag_id="train", run_id="r1",
                           task_id="create")
    made = backend.create(spec, identity=task)
    with pytest.raises(IdentityConflict, match="task create of run r1 of DAG train"):
        backend.create(spec, identity=ClusterIdentity.manual(spec.spec.name, made.name))
    other = ClusterIdentity(spec_name=spec.spec.name, dag_id="train", run_id="r2",
                            task_id="create", explicit_name=made.name)
    with pytest.raises(IdentityConflict, match=r"not to this create \(task create of run r2"):
        backend.create(spec, identity=other)
    assert backend.create(spec, identity=task).adopted  # its own retry still adopts
    assert [h.created_at for h in backend.list_owned()] == [made.created_at]
