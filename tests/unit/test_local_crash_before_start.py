"""A setup SIGKILLed between the local backend's slot (and GPU) claim and its first nodes leaves
a state that every deleter sees: the folder, and with it the claims, go with the cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ephemeral.backends.local import LocalBackend
from ephemeral.backends.local.slots import runtime_dir
from ephemeral.specs import ClusterIdentity, resolve

SPEC = resolve("ray/adhoc-cpu", "ci-cpu")
IDENT = ClusterIdentity(spec_name=SPEC.spec.name, dag_id="d", run_id="r", task_id="create")

CRASH = textwrap.dedent("""
    import os
    from ephemeral.backends.local import LocalBackend
    from ephemeral.specs import ClusterIdentity, resolve
    LocalBackend._start = lambda *a, **k: os.kill(os.getpid(), 9)  # killed after the claims
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    LocalBackend().create(spec, identity=ClusterIdentity(spec_name=spec.spec.name, dag_id="d",
                                                         run_id="r", task_id="create"))
""")


def test_a_crash_after_the_slot_claim_is_listed_deleted_and_releases_the_slot(
        ephemeral_home: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])}
    assert subprocess.run([sys.executable, "-c", CRASH], env=env, timeout=120).returncode == -9
    claims = [p for p in (runtime_dir() / "slots").iterdir()
              if p.read_text().strip() == str(ephemeral_home / "clusters" / IDENT.name)]
    assert claims, "the crash came after the slot claim"
    backend = LocalBackend()
    [listed] = backend.list_owned()
    assert listed.name == IDENT.name
    assert listed.run == ("d", "r")  # its run's deleters find it by its owner labels
    assert backend.delete(listed) is True
    assert backend.list_owned() == []
    assert not (ephemeral_home / "clusters" / IDENT.name).exists()  # the claims lapse with it


def test_a_retry_never_adopts_a_cluster_its_creator_left_before_any_node(
        ephemeral_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.backends.base import Endpoints, make_handle
    from ephemeral.backends.local.state import ClusterState, save

    backend = LocalBackend()
    cdir = ephemeral_home / "clusters" / IDENT.name
    made = make_handle(SPEC, IDENT, backend="local", endpoints=Endpoints())
    save(cdir, ClusterState(handle=made, uid="u", slot=-1, plan=[]))
    started: list[str] = []

    def start(_self: LocalBackend, _spec: object, handle: object, *_a: object) -> object:
        started.append("yes")
        return handle

    monkeypatch.setattr(LocalBackend, "_start", start)
    again = backend.create(SPEC, identity=IDENT)
    assert started == ["yes"]
    assert not again.adopted


def test_a_refused_slot_claim_leaves_no_cluster_listed(ephemeral_home: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every slot in use: the create fails, and the state saved before the claim goes with it
    (ls, the reaper and run-end would list a cluster that was never made)."""
    from ephemeral.backends.base import OwnerSelector
    from ephemeral.backends.local import backend as local_backend
    from ephemeral.errors import BackendUnavailable

    def full(*_a: object, **_k: object) -> int:
        raise BackendUnavailable("all 16 local cluster slots are in use")

    monkeypatch.setattr(local_backend.slots, "claim", full)
    backend = LocalBackend(ephemeral_home)
    with pytest.raises(BackendUnavailable, match="slots are in use"):
        backend.create(SPEC, identity=IDENT)
    assert backend.list_owned(OwnerSelector.everything()) == []
    assert not list((ephemeral_home / "clusters").glob("*"))
