"""A Spark spec's ``conf`` is the default of every application on the cluster, spark-submit's
included, not only the Connect server's: the handle carries it (with an executor's GPUs), and
the CLI and the operator put the application's own conf over it."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ephemeral.backends.fake import InMemoryBackend
from ephemeral.errors import SpecError
from ephemeral.specs import ClusterIdentity, resolve
from ephemeral.specs.loader import load_file


def handle_of(ref: str, profile: str | None) -> dict[str, str]:
    spec = resolve(ref, profile)
    identity = ClusterIdentity(spec_name=spec.spec.name, dag_id="d", run_id="r", task_id="t")
    return InMemoryBackend().create(spec, identity=identity).spark_conf


def test_a_gpu_spec_gives_every_application_its_workers_gpus_and_its_conf() -> None:
    # Without the executor's GPUs, the spec's task GPU share fails every spark-submit.
    assert handle_of("spark/etl-gpu", None) == {
        "spark.executor.cores": "8", "spark.executor.memory": "16384m",
        "spark.executor.resource.gpu.amount": "1", "spark.sql.shuffle.partitions": "16",
        "spark.task.resource.gpu.amount": "0.125"}
    assert handle_of("spark/etl-gpu", "ci-cpu") == {
        "spark.executor.cores": "1", "spark.executor.memory": "2048m",
        "spark.sql.shuffle.partitions": "4", "spark.task.resource.gpu.amount": "0"}


def test_every_application_gets_executors_of_its_workers_size() -> None:
    """spark-submit's executors took Spark's default of 1 GiB whatever workers.memory said
    (only the Connect server's were sized): one rule sizes both, on each backend to what its
    worker offers executors, and an application's own conf still wins."""
    from ephemeral.backends.base import executor_size, submit_defaults
    from ephemeral.backends.kubernetes.render import spark
    from ephemeral.backends.kubernetes.render.spark import heap_sizes

    s = resolve("spark/etl", None).spec
    assert executor_size(s, "local") == {"spark.executor.cores": "4",
                                         "spark.executor.memory": "8192m"}
    on_kubernetes = executor_size(s, "kubernetes")
    assert on_kubernetes["spark.executor.memory"] == f"{heap_sizes('8Gi')[1]}m" != "8192m"
    assert spark.connect_conf(s).items() >= on_kubernetes.items()
    assert submit_defaults(s, "kubernetes").items() >= on_kubernetes.items()
    own = s.model_copy(update={"conf": s.conf | {"spark.executor.memory": "3g"}})
    assert submit_defaults(own, "local")["spark.executor.memory"] == "3g"


def test_the_specs_driver_settings_stay_the_connect_servers() -> None:
    """A spark-submit driver runs where its task runs: the spec's spark.driver.* (the Connect
    server's memory, JVM options, address) would size the Airflow worker's JVM or move a local
    driver's callback address."""
    from ephemeral.backends.base import application_conf, submit_defaults

    spec = resolve("spark/etl", "ci-cpu")
    conf = spec.spec.conf | {"spark.driver.memory": "8g", "spark.driver.host": "10.0.0.9"}
    spark = spec.spec.model_copy(update={"conf": conf})
    assert application_conf(spark)["spark.driver.memory"] == "8g"  # the Connect server's
    assert submit_defaults(spark, "local") == {"spark.executor.cores": "1",
                                               "spark.executor.memory": "2048m",
                                               "spark.sql.shuffle.partitions": "8"}


def test_a_ray_handle_has_no_spark_defaults() -> None:
    assert handle_of("ray/adhoc-cpu", None) == {}


def test_the_cli_puts_the_applications_conf_over_the_clusters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``ephemeral spark-submit`` hands the driver (the driver itself: test_cli.py)."""
    from ephemeral.cli import main

    spec = resolve("spark/etl", "ci-cpu")
    handle = InMemoryBackend().create(spec, identity=ClusterIdentity.manual("etl", "etl-1"))
    seen: dict[str, object] = {}
    monkeypatch.setattr(main, "_cluster", lambda *_a: handle)
    monkeypatch.setattr("ephemeral.jobs.spark_jobs.spark_auth_for", lambda *_a: None)

    def fake_submit(master: str, application: str, args: list[str], **kw: object) -> object:
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr("ephemeral.jobs.spark_jobs.spark_submit", fake_submit)
    CliRunner().invoke(main.app, ["spark-submit", "etl-1", __file__, "--conf",
                                  "spark.sql.shuffle.partitions=2", "--conf", "spark.a=b"])
    assert seen["conf"] == {"spark.executor.cores": "1", "spark.executor.memory": "2048m",
                            "spark.sql.shuffle.partitions": "2", "spark.a": "b"}


@pytest.mark.parametrize(("where", "key"), [
    ("conf", "spark.hadoop.fs.s3a.secret.key"), ("conf", "spark.hadoop.fs.s3a.access.key"),
    ("conf", "spark.hadoop.fs.s3a.session.token"), ("connect.conf", "spark.ssl.keyPassword"),
    ("conf", "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net"),
    ("conf", "spark.hadoop.fs.s3a.server-side-encryption.key")])
def test_a_conf_key_spark_would_redact_is_refused_in_a_spec(tmp_path: Path, where: str,
                                                           key: str) -> None:
    """The conf reaches the handle (XCom), annotations and the Connect server's argv."""
    data = yaml.safe_load((Path("cluster_specs/spark/etl.yaml")).read_text())
    if where == "conf":
        data["conf"] = {key: "AKIA-not-in-a-spec"}
    else:
        data["connect"]["conf"] = {key: "AKIA-not-in-a-spec"}
    path = tmp_path / "etl.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_file(path)
    assert err.value.fields == [where]
    assert f"{key}: a secret has no place in a spec" in str(err.value)
    # Nor in the traceback (a DAG import error, a task log): the error it was raised from.
    assert "AKIA-not-in-a-spec" not in "".join(traceback.format_exception(err.value))


def test_a_url_with_credentials_in_a_conf_value_is_refused(tmp_path: Path) -> None:
    data = yaml.safe_load((Path("cluster_specs/spark/etl.yaml")).read_text())
    data["conf"] = {"spark.jars.repositories": "https://bob:MAVENTOKEN@repo.example.com/m2"}
    path = tmp_path / "etl.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_file(path)
    assert "spark.jars.repositories: a secret has no place in a spec" in str(err.value)
    assert "MAVENTOKEN" not in "".join(traceback.format_exception(err.value))


def test_where_a_secret_is_and_a_credentials_provider_are_no_secrets(tmp_path: Path) -> None:
    data = yaml.safe_load((Path("cluster_specs/spark/etl.yaml")).read_text())
    data["conf"] = {"spark.hadoop.fs.s3a.aws.credentials.provider": "com.example.Provider",
                    "spark.kubernetes.driver.secrets.spark-secret": "/etc/spark/secret",
                    "spark.hadoop.fs.s3a.delegation.token.binding": "com.example.Binding",
                    "spark.kubernetes.authenticate.oauthTokenFile": "/var/run/token"}
    path = tmp_path / "etl.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_file(path).conf == data["conf"]


def test_every_connect_server_releases_its_executors_the_same_way(tmp_path: Path) -> None:
    """Local, standalone on Kubernetes and the spark-operator: a Connect server's executors
    go when idle, shuffle files or not (shuffle tracking alone kept them, and their cores and
    GPUs, until the cluster's deletion, and the reaper counted the cluster busy)."""
    from ephemeral.backends.base import CONNECT_ALLOCATION
    from ephemeral.backends.kubernetes.render import spark, spark_operator
    from ephemeral.backends.local import spark_nodes

    spec = resolve("spark/etl", "ci-cpu")
    s = spec.spec
    assert CONNECT_ALLOCATION["spark.dynamicAllocation.shuffleTracking.timeout"] == "60s"
    (local,) = [n for n in spark_nodes.plan(s, 3, tmp_path, auth_props=tmp_path / "a",
                                             connect_props=tmp_path / "c")
                if n.role == "connect"]
    local_conf = dict(a.split("=", 1) for a in local.argv[local.argv.index("--conf") + 1::2]
                      if "=" in a)
    for conf in (local_conf, spark.connect_conf(s), spark_operator.spark_conf(s)):
        assert conf.items() >= CONNECT_ALLOCATION.items()


def test_executors_keep_their_temporary_files_in_the_clusters_folder(tmp_path: Path) -> None:
    """A SIGKILLed executor leaves its native libraries (liblz4-java-*.so) in its
    java.io.tmpdir: executors inherit their worker's environment, so it says where."""
    from ephemeral.backends.local import spark_nodes

    spec = resolve("spark/etl", "ci-cpu")
    nodes = spark_nodes.plan(spec.spec, 2, tmp_path, auth_props=tmp_path / "a",  # type: ignore[arg-type]
                             connect_props=tmp_path / "c")
    workers = [n for n in nodes if n.role == "worker"]
    assert workers
    for w in workers:
        assert w.env["JAVA_TOOL_OPTIONS"] == f"-Djava.io.tmpdir={spark_nodes.tmp_dir(tmp_path)}"
