"""Class-data-sharing archives of the local Spark JVMs (``jvm_share``): ``make setup`` builds
them; masters, workers and drivers map them; ``off`` turns them off; a JVM that cannot map one
still starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ephemeral.backends.local import jvm_share, spark_nodes
from ephemeral.jobs.spark_jobs import driver_conf
from ephemeral.specs.resolve import resolve

BUILD_HINT = "make setup builds them: python -m ephemeral.backends.local"


def _spark_command(tmp_path: Path) -> tuple[str, list[str]]:
    """The class path and module flags Spark's launcher gives a master here."""
    home = jvm_share.spark_home()
    assert home is not None
    out = subprocess.run(
        [str(home / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master", "--help"],
        env={"SPARK_HOME": str(home), "SPARK_PRINT_LAUNCH_COMMAND": "1",
             "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60, check=False)
    log = tmp_path / "launch.log"
    log.write_text(out.stdout + out.stderr)
    return jvm_share._command_flags(log)


@pytest.mark.parametrize("role", jvm_share.ROLES)
def test_every_role_has_an_archive_built_for_this_java_and_spark(role: str) -> None:
    path = jvm_share.archive_path(role)
    assert path is not None
    assert path.is_file(), f"no {role} archive at {path}: {BUILD_HINT}"
    assert jvm_share.java_options(role) == (
        f"-XX:SharedArchiveFile={path} -Xshare:auto -Xlog:cds=off -Xlog:cds+dynamic=off")


def test_a_master_jvm_loads_sparks_classes_from_the_archive(tmp_path: Path) -> None:
    archive = jvm_share.archive_path("master")
    assert archive is not None
    assert archive.is_file(), BUILD_HINT
    java = jvm_share.java_bin()
    assert java is not None
    cp, flags = _spark_command(tmp_path)
    # -Xshare:on fails instead of starting without the archive: it must map.
    out = subprocess.run(
        [java, "-Xshare:on", f"-XX:SharedArchiveFile={archive}", "-Xlog:class+load=info",
         *flags, "-cp", cp, "org.apache.spark.deploy.master.Master", "--help"],
        capture_output=True, text=True, timeout=120, check=False)
    loads = [line for line in out.stdout.splitlines() if "org.apache.spark.deploy.master" in line]
    assert loads, out.stdout[-2000:] + out.stderr[-2000:]
    assert all("shared objects file" in line for line in loads), loads[:5]


def test_the_local_nodes_and_drivers_map_their_archives(tmp_path: Path) -> None:
    spec = resolve("spark/etl@1", "ci-cpu").spec
    nodes = spark_nodes.plan(spec, 7, tmp_path, auth_props=tmp_path / "a",
                             connect_props=tmp_path / "c")
    by_role = {n.role: n for n in nodes}
    assert jvm_share.java_options("master") in by_role["master"].env["SPARK_DAEMON_JAVA_OPTS"]
    assert jvm_share.java_options("worker") in by_role["worker"].env["SPARK_DAEMON_JAVA_OPTS"]
    connect = " ".join(by_role["connect"].argv)
    assert f"spark.driver.extraJavaOptions={driver_conf('spark://127.0.0.1:7077')['spark.driver.extraJavaOptions']}" \
        in connect
    local = driver_conf("spark://127.0.0.1:7077")["spark.driver.extraJavaOptions"]
    assert "SharedArchiveFile" in local
    assert driver_conf("spark://spark-master.ml.svc:7077") == {}  # a remote cluster's driver


def test_off_turns_them_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EPHEMERAL_JVM_ARCHIVES", "off")
    assert jvm_share.archive_path("master") is None
    assert jvm_share.java_options("driver") == ""
    spec = resolve("spark/etl@1", "ci-cpu").spec
    for node in spark_nodes.plan(spec, 7, tmp_path, auth_props=tmp_path / "a",
                                 connect_props=tmp_path / "c"):
        assert "SharedArchiveFile" not in " ".join([*node.argv, *node.env.values()])
    assert "SharedArchiveFile" not in \
        driver_conf("spark://127.0.0.1:7077")["spark.driver.extraJavaOptions"]


def test_a_jvm_that_cannot_map_its_archive_still_starts(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An archive of another Spark install (or a cut file) under the expected name.
    monkeypatch.setenv("EPHEMERAL_JVM_ARCHIVES", str(tmp_path))
    path = jvm_share.archive_path("master")
    assert path is not None
    path.write_bytes(b"\0" * 4096)
    java = jvm_share.java_bin()
    assert java is not None
    out = subprocess.run([java, *jvm_share.java_options("master").split(), "-version"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "mixed mode)" in out.stderr, out.stderr  # started, and without sharing
    assert "[warning]" not in out.stdout + out.stderr


def test_archives_of_removed_or_replaced_installs_are_pruned(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EPHEMERAL_JVM_ARCHIVES", str(tmp_path))
    java, home = jvm_share.java_bin(), jvm_share.spark_home()
    kept = jvm_share.archive_path("master")
    assert kept is not None
    removed = tmp_path / "spark-master-removedvenv.jsa"  # its install is gone
    replaced = tmp_path / "spark-master-oldjars.jsa"  # same install, jars changed since
    for archive, spark in ((kept, home), (removed, tmp_path / "deleted-venv"), (replaced, home)):
        archive.write_bytes(b"x")
        archive.with_suffix(".json").write_text(
            f'{{"java": "{java}", "spark_home": "{spark}"}}')

    jvm_share.prune(tmp_path)
    assert kept.is_file()
    assert kept.with_suffix(".json").is_file()
    for gone in (removed, replaced):
        assert not gone.exists()
        assert not gone.with_suffix(".json").exists()


def test_a_reinstalled_spark_gets_a_new_archive_name(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A copy of the jars folder with one jar's time changed: the JVM would refuse the archive.
    home = tmp_path / "pyspark"
    (home / "jars").mkdir(parents=True)
    real = jvm_share.spark_home()
    assert real is not None
    for jar in sorted((real / "jars").iterdir())[:5]:
        (home / "jars" / jar.name).write_bytes(b"jar")
    java = jvm_share.java_bin()
    assert java is not None
    before = jvm_share._digest(java, home)
    first = sorted((home / "jars").iterdir())[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    assert jvm_share._digest(java, home) != before


def test_an_archive_others_can_write_is_not_used(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "jvm"
    folder.mkdir(mode=0o755)
    monkeypatch.setenv("EPHEMERAL_JVM_ARCHIVES", str(folder))
    path = jvm_share.archive_path("worker")
    assert path is not None
    path.write_bytes(b"x")
    path.chmod(0o644)
    assert jvm_share.java_options("worker")
    path.chmod(0o666)
    assert jvm_share.java_options("worker") == ""
    path.chmod(0o644)
    folder.chmod(0o777)
    assert jvm_share.java_options("worker") == ""


@pytest.mark.local  # starts a recording's Spark master, worker and driver
def test_recording_keeps_the_jvms_temporary_files_in_its_folder(tmp_path: Path) -> None:
    """The recording's master, worker and driver are killed, so their shutdown hooks never
    remove their temporary folders: those are in the recording's own folder, which ``build``
    removes, not in /tmp (every ``make setup`` and CI run left some there)."""
    work = tmp_path / "rec"
    lists = jvm_share.record(work)
    assert all(classlist.stat().st_size > 0 for classlist, _ in lists.values())
    assert list((work / "local").glob("spark-*")), "the worker's local folder is elsewhere"
    for _, log in lists.values():
        assert f"-Djava.io.tmpdir={work / 'tmp'}" in log.read_text()


@pytest.mark.local  # starts a recording's Spark master, worker and driver
def test_a_recording_stopped_by_sigterm_leaves_no_jvm(tmp_path: Path) -> None:
    """`make setup` stopped by a CI runner's timeout (SIGTERM) mid-recording: the recording's
    JVMs run in sessions of their own, so only the recorder can stop them, and it does."""
    import signal
    import sys
    import time

    import psutil

    def jvms() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"])
                if "java" in " ".join(p.info["cmdline"] or [])[:200]
                and "ephemeral-jvm-" in " ".join(p.info["cmdline"] or [])
                and p.status() != psutil.STATUS_ZOMBIE]

    before = {p.pid for p in jvms()}
    env = dict(os.environ) | {"EPHEMERAL_JVM_ARCHIVES": str(tmp_path / "archives")}
    recorder = subprocess.Popen([sys.executable, "-m", "ephemeral.backends.local", "--force"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not {p.pid for p in jvms()} - before:
            assert recorder.poll() is None, "the recording ended before a JVM started"
            assert time.monotonic() < deadline, "no recording JVM started in 60 s"
            time.sleep(0.2)
        recorder.send_signal(signal.SIGTERM)
        recorder.wait(timeout=60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
    time.sleep(1)
    left = {p.pid for p in jvms()} - before
    for pid in left:  # the test's own cleanup, so a failure leaves nothing either
        psutil.Process(pid).kill()
    assert recorder.returncode == 143
    assert not left, f"recording JVMs left: {sorted(left)}"
