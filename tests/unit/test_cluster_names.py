"""A cluster name from outside (the CLI, a backend call, a handle) is one DNS-1123 label of at
most NAME_MAX characters, refused before anything happens: on the local backend it becomes a
folder (``down ""`` once removed every cluster's state, ``down ../../x`` any folder), on
Kubernetes a label selector. The local backend also keeps every path it builds from a name
inside its clusters folder, and removes a folder without a state only after killing what
carries its marker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from ephemeral.backends.base import ClusterBackend
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.backends.local import LocalBackend, procs
from ephemeral.cli import main as cli_main
from ephemeral.errors import BackendError, SpecError
from ephemeral.specs import ClusterIdentity
from ephemeral.specs.identity import NAME_MAX
from tests.conftest import small

RAY = small("ray/adhoc-cpu", replicas=1)

BAD_NAMES = ["", "../x", "../../victim", "a,b!=c", "a/b", ".", "..", "Upper", "x" * (NAME_MAX + 1),
             "-lead", "trail-", "under_score", "/etc", "ok\n", "ok\r"]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_main.app, list(args))
    return result.exit_code, result.output


class Recording(InMemoryBackend):
    """The in-memory backend, noting every name delete and get were called with."""

    def __init__(self) -> None:
        super().__init__(ready_after_probes=1)
        self.calls: list[tuple[str, str]] = []

    def delete(self, target, *, wait=True):  # type: ignore[no-untyped-def]
        self.calls.append(("delete", ClusterBackend.target_name(target)))
        super().delete(target, wait=wait)

    def get(self, name, *, all_instances=False):  # type: ignore[no-untyped-def]
        self.calls.append(("get", name))
        return super().get(name, all_instances=all_instances)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Recording:
    backend = Recording()
    backend.create(RAY, identity=ClusterIdentity.manual(RAY.spec.name, "keep-me"))
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)
    return backend


# -- the CLI ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BAD_NAMES)
def test_down_refuses_a_name_that_is_not_a_cluster_name_and_touches_nothing(
        fake: Recording, name: str) -> None:
    code, output = invoke("down", "--", name)  # "--": "-lead" is not an option
    assert code == 2, output
    said = " ".join(output.split())
    assert "SpecError" in said
    assert "NAME" in said
    assert f"at most {NAME_MAX} characters" in said
    assert "lowercase letters" in said
    assert fake.calls == []  # refused before the backend was asked anything
    assert fake.get("keep-me") is not None


def test_down_refuses_every_name_before_deleting_any(fake: Recording) -> None:
    code, output = invoke("down", "keep-me", "../x", "--json")
    assert code == 2, output
    assert json.loads(output)["error"] == "SpecError"
    assert fake.calls == []
    assert fake.get("keep-me") is not None


def test_down_with_a_legitimate_name_still_deletes(fake: Recording) -> None:
    code, output = invoke("down", "keep-me", "--json")
    assert code == 0, output
    [done] = json.loads(output)["deleted"]
    assert (done["name"], done["existed"]) == ("keep-me", True)
    assert fake.get("keep-me") is None
    code, output = invoke("down", "never-was", "--json")
    assert code == 0
    # no deletion: listed apart, so that a script does not count it as one
    assert (json.loads(output)["deleted"], json.loads(output)["not_found"][0]["name"]) == (
        [], "never-was")


@pytest.mark.parametrize("command", [["submit", "{}", "--", "true"],
                                     ["spark-submit", "{}", "app.py"]])
@pytest.mark.parametrize("name", ["", "../x", "a,b!=c", "Upper", "x" * (NAME_MAX + 1)])
def test_job_commands_refuse_a_bad_cluster_name(fake: Recording, command: list[str],
                                                name: str) -> None:
    code, output = invoke(*[name if a == "{}" else a for a in command])
    assert code == 2, output
    assert "CLUSTER" in output
    assert "lowercase letters" in " ".join(output.split())
    assert fake.calls == []


# -- the local backend, as the hostile review ran it ---------------------------------------------

@pytest.fixture
def local_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "a" / "home"
    (home / "clusters" / "other" / "keep.txt").parent.mkdir(parents=True)
    (home / "clusters" / "other" / "keep.txt").write_text("x")
    (tmp_path / "victim" / "data.txt").parent.mkdir(parents=True)
    (tmp_path / "victim" / "data.txt").write_text("precious")
    monkeypatch.setenv("EPHEMERAL_HOME", str(home))
    monkeypatch.delenv("EPHEMERAL_BACKEND", raising=False)
    return home


@pytest.mark.parametrize("name", ["", "../../victim", "..", ".", "clusters/../../../victim"])
def test_local_down_of_a_path_like_name_deletes_no_folder(local_home: Path, name: str) -> None:
    code, output = invoke("down", name)
    assert code == 2, output
    assert (local_home.parent.parent / "victim" / "data.txt").read_text() == "precious"
    assert (local_home / "clusters" / "other" / "keep.txt").exists()


@pytest.mark.parametrize("name", ["", "..", ".", "../x", "a/b", "/etc", "x/../y"])
def test_local_paths_stay_direct_children_of_their_folders(tmp_path: Path, name: str) -> None:
    """Defence in depth: even a caller that skips the name rule cannot leave the folders."""
    backend = LocalBackend(tmp_path)
    with pytest.raises(BackendError, match="not a direct child"):
        backend._dir(name)
    with pytest.raises(BackendError, match="not a direct child"):
        with backend._lock(name):
            pass
    assert backend._dir("ok-name") == tmp_path.resolve() / "clusters" / "ok-name"


@pytest.mark.parametrize("name", ["", "../x", "a,b!=c", "Upper", "x" * (NAME_MAX + 1)])
def test_backends_refuse_a_bad_name_before_doing_anything(tmp_path: Path, name: str) -> None:
    backend = LocalBackend(tmp_path)
    (tmp_path / "clusters").mkdir()
    with pytest.raises(SpecError, match="name"):
        backend.delete(name)
    with pytest.raises(SpecError, match="name"):
        backend.get(name)
    with pytest.raises(SpecError, match="name"):
        InMemoryBackend().delete(name)
    with pytest.raises(SpecError, match="name"):
        ClusterBackend.target_name(name)
    assert (tmp_path / "clusters").is_dir()


@pytest.mark.parametrize("name", ["", "..", "../x"])
def test_local_extras_by_name_stay_in_the_clusters_folder(tmp_path: Path, name: str) -> None:
    backend = LocalBackend(tmp_path)
    with pytest.raises(BackendError, match="not a direct child"):
        backend.pids(name)
    with pytest.raises(BackendError, match="not a direct child"):
        backend._probe(name)


@pytest.fixture
def marked_sleeper(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A process carrying a cluster folder's marker, the folder holding no state.json."""
    cdir = tmp_path.resolve() / "clusters" / "lost"
    cdir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            env=dict(os.environ) | {procs.DIR_ENV: str(cdir)})
    try:
        yield cdir, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_a_folder_without_state_goes_only_after_its_marked_processes(
        tmp_path: Path, marked_sleeper: tuple[Path, subprocess.Popen[bytes]]) -> None:
    cdir, proc = marked_sleeper
    deadline = time.monotonic() + 10  # its environment is readable once it has exec'd
    while procs.DIR_ENV not in psutil.Process(proc.pid).environ() and time.monotonic() < deadline:
        time.sleep(0.05)
    LocalBackend(tmp_path).delete("lost")
    assert proc.wait(timeout=10) is not None  # killed, not orphaned
    assert not cdir.exists()


def test_down_refuses_names_together_with_all(fake: Recording) -> None:
    """`down NAME --all` deleted every cluster of the instance, NAME ignored: refused, and
    nothing is touched."""
    fake.create(RAY, identity=ClusterIdentity.manual(RAY.spec.name, "train"))
    code, output = invoke("down", "train", "--all", "--json")
    assert code == 2, output
    doc = json.loads(output)
    assert doc["error"] == "RequestError"
    assert "--all" in doc["message"]
    assert "train" in doc["message"]
    assert fake.calls == []
    assert fake.get("keep-me") is not None
    assert fake.get("train") is not None
