"""Local nodes get a UTF-8 locale when the Airflow worker has none: under ``LC_ALL=C`` (or no
locale at all, as in many service units and CI runners) a JVM encodes file names as ASCII and a
Spark node cannot open its properties file in a home such as ``/srv/équipe``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ephemeral.backends.local.backend import utf8_locale

READ = ("public class R { public static void main(String[] a) throws Exception { System.out"
        ".print(new String(java.nio.file.Files.readAllBytes(java.nio.file.Paths.get(a[0])))); } }")


@pytest.mark.parametrize("given", [{}, {"LC_ALL": "C"}, {"LANG": "POSIX"},
                                   {"LANG": "en_US.UTF-8", "LC_ALL": "C"}])
def test_a_locale_without_utf8_becomes_one(given: dict[str, str]) -> None:
    assert utf8_locale(given)["LC_ALL"] == "C.UTF-8"


@pytest.mark.parametrize("given", [{"LANG": "en_US.UTF-8"}, {"LC_ALL": "de_DE.utf8"},
                                   {"LC_CTYPE": "C.UTF-8", "LANG": "C"}])
def test_a_utf8_locale_is_kept(given: dict[str, str]) -> None:
    assert utf8_locale(given) == given


@pytest.mark.skipif(shutil.which("javac") is None, reason="needs a JDK")
def test_a_jvm_reads_a_file_in_a_non_ascii_folder_with_the_nodes_locale(tmp_path: Path) -> None:
    home = tmp_path / "équipe"
    home.mkdir()
    (home / "p.properties").write_text("a=b")
    (tmp_path / "R.java").write_text(READ)
    subprocess.run(["javac", "R.java"], cwd=tmp_path, check=True)

    def read(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["java", "-cp", str(tmp_path), "R", str(home / "p.properties")],
                              env={"PATH": os.environ["PATH"], **env}, capture_output=True,
                              text=True, check=False)

    assert read({"LC_ALL": "C"}).returncode != 0  # what a worker without a locale gave nodes
    assert read(utf8_locale({"LC_ALL": "C"})).stdout == "a=b"


def test_a_user_without_a_home_starts_spark_without_archives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A container's user without a passwd entry and no $HOME: the JVM archives only speed a
    start up, so they are off rather than a reason the create fails."""
    from ephemeral.backends.local import jvm_share

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("EPHEMERAL_JVM_ARCHIVES", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert jvm_share.archive_dir() is None
    monkeypatch.setenv("EPHEMERAL_JVM_ARCHIVES", "/srv/jvm")
    assert jvm_share.archive_dir() == Path("/srv/jvm")
