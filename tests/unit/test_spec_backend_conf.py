"""A spec's conf and connect.conf, and a spark-submit job's conf, leave alone what the backends
set themselves: a value there came last on the Connect server's command line and won without a
word (authentication off, a driver address or port nothing publishes, scratch on a disk the pod
does not mount). One rule (``backend_keys``), checked against what the backends derive."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ephemeral.errors import JobRefused, SpecError
from ephemeral.specs.loader import parse_spec
from ephemeral.specs.models import SparkSpec, backend_keys

SPARK = yaml.safe_load((Path(__file__).resolve().parents[2] / "cluster_specs" / "spark"
                        / "etl.yaml").read_text())
# What the backends derive that a spec may still tune: executor sizes (checked against the
# workers), dynamic allocation, the warehouse, the driver's JVM options.
TUNABLE = ("spark.executor.cores", "spark.executor.memory", "spark.dynamicAllocation.",
           "spark.sql.warehouse.dir", "spark.driver.extraJavaOptions")
REVIEWED = {"spark.authenticate": "false", "spark.driver.host": "10.9.9.9",
            "spark.driver.port": "1", "spark.local.dir": "/",
            "spark.authenticate.secret.file": "/tmp/s", "spark.driver.bindAddress": "0.0.0.0",
            "spark.driver.blockManager.port": "2", "spark.port.maxRetries": "16",
            "spark.connect.grpc.binding.address": "0.0.0.0", "spark.ui.port": "1",
            "spark.master": "local[*]", "spark.driver.memory": "64g", "spark.driver.cores": "4"}


def spark(conf: dict[str, str] | None = None, connect_conf: dict[str, str] | None = None,
          **workers: Any) -> dict[str, Any]:
    data = copy.deepcopy(SPARK)
    data["conf"] |= conf or {}
    data["connect"]["conf"] = connect_conf or {}
    data["workers"] |= workers
    return data


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as err:
        parse_spec(data, "etl.yaml")
    return dict(err.value.problems)


def derived_keys(s: SparkSpec, tmp_path: Path) -> set[str]:
    """The conf keys each backend gives a Connect server of ``s`` itself."""
    from ephemeral.backends.kubernetes.render import spark as standalone
    from ephemeral.backends.kubernetes.render import spark_operator
    from ephemeral.backends.local import spark_nodes

    argv = spark_nodes.plan(s, 3, tmp_path, auth_props=tmp_path / "a",
                            connect_props=tmp_path / "c")[-1].argv
    local = {argv[i + 1].split("=", 1)[0] for i, a in enumerate(argv) if a == "--conf"}
    return local | set(standalone.connect_conf(s)) | set(spark_operator.spark_conf(s))


@pytest.mark.parametrize("where", ["conf", "connect.conf"])
@pytest.mark.parametrize(("key", "value"), sorted(REVIEWED.items()))
def test_what_the_backends_set_is_refused_in_conf(where: str, key: str, value: str) -> None:
    data = spark(**{"conf" if where == "conf" else "connect_conf": {key: value}})
    assert f"{key} is the backend's" in problems(data)[where]


def test_every_key_a_backend_derives_is_the_backends_or_tunable(tmp_path: Path) -> None:
    gpu = parse_spec(spark(gpus=1, discoveryScript="/opt/gpus.sh"), "etl.yaml")
    assert isinstance(gpu, SparkSpec)
    derived = derived_keys(gpu, tmp_path) - set(gpu.conf)  # less the spec's own
    assert len(derived) > 15
    open_keys = {k for k in derived
                 if not any(k.startswith(t) if t.endswith(".") else k == t for t in TUNABLE)}
    assert set(backend_keys(open_keys)) == open_keys


@pytest.mark.parametrize("where", ["conf", "connect.conf"])
def test_an_executor_bigger_than_a_worker_is_refused(where: str) -> None:
    key = "conf" if where == "conf" else "connect_conf"
    assert "more than a worker has (workers.memory: 8Gi)" in problems(
        spark(**{key: {"spark.executor.memory": "64g"}}))[f"{where}.spark.executor.memory"]
    assert "workers.cores: 4" in problems(
        spark(**{key: {"spark.executor.cores": "5"}}))[f"{where}.spark.executor.cores"]


@pytest.mark.parametrize("memory", ["8g", "8192m", "8192", "4G", " 2g "])
def test_an_executor_within_a_worker_passes(memory: str) -> None:
    s = parse_spec(spark(connect_conf={"spark.executor.memory": memory}), "etl.yaml")
    assert isinstance(s, SparkSpec)


@pytest.mark.parametrize(("conf", "key", "said"), [
    ({"spark.executor.memory": "8Gi"}, "spark.executor.memory", "no size Spark reads"),
    ({"spark.executor.memory": "1.5g"}, "spark.executor.memory", "nor fractions"),
    ({"spark.executor.memory": "1024 mb"}, "spark.executor.memory", "no size Spark reads"),
    ({"spark.executor.cores": "2.5"}, "spark.executor.cores", "not a whole number"),
    ({"spark.task.cpus": "8"}, "spark.task.cpus", "more than an executor has (4;"),
    ({"spark.executor.cores": "2", "spark.task.cpus": "3"}, "spark.task.cpus",
     "more than an executor has (2;"),
    # The master starts no executor with fewer cores left to the application than one has.
    ({"spark.cores.max": "2"}, "spark.cores.max", "fewer than one executor's cores (4;"),
    ({"spark.worker.cleanup.enabled": "true"}, "conf", "standalone master and worker daemons"),
    ({"spark.deploy.defaultCores": "2"}, "conf", "standalone master and worker daemons"),
    ({"spark.shuffle.service.enabled": "true"}, "conf", "no external shuffle service"),
    ({"spark.app.name": "etl"}, "conf", "names the Connect server's application"),
    # Cluster mode moved the Connect server and ephemeral spark-submit's drivers off the host
    # that reaches them; the operator's --deploy-mode client ignored it.
    ({"spark.submit.deployMode": "cluster"}, "conf", "runs every driver in client mode"),
], ids=["Gi", "fraction", "space", "fractional-cores", "task-cpus", "task-over-executor",
        "cores-max", "worker-daemon", "master-daemon", "shuffle-service", "app-name", "deploy-mode"])
def test_what_spark_refuses_or_never_sees_is_refused_before_the_cluster(
        conf: dict[str, str], key: str, said: str) -> None:
    """Spark's own refusals came once its Connect server started, after the cluster was made;
    daemon settings reached only applications and did nothing."""
    found = problems(spark(conf=conf))
    where = "conf" if key == "conf" else f"conf.{key}"
    assert said in found[where], found


def test_a_task_asking_more_gpus_than_an_executor_has_is_refused() -> None:
    found = problems(spark(conf={"spark.task.resource.gpu.amount": "2"}, gpus=1,
                           discoveryScript="/opt/spark/examples/src/main/scripts/"
                                           "getGpusResources.sh"))
    assert "more than an executor has (workers.gpus: 1)" in \
        found["conf.spark.task.resource.gpu.amount"]


@pytest.mark.parametrize("key", ["spark.authenticate", "spark.authenticate.secret",
                                 "spark.authenticate.secret.file", "spark.master"])
def test_a_jobs_conf_leaves_the_clusters_own_alone(key: str) -> None:
    from ephemeral.jobs.spark_jobs import check_submit_input

    with pytest.raises(JobRefused) as err:
        check_submit_input("spark-submit", {key: "false", "spark.driver.host": "10.0.0.9"})
    assert f"conf sets {key}, which is the cluster's" in str(err.value)
    assert "spark.driver.host" not in str(err.value)  # a driver's own where it runs


def test_a_hardening_the_backend_does_not_set_is_the_users() -> None:
    """spark.authenticate.enableSaslEncryption is no key the backends write: a user may add it."""
    from ephemeral.jobs.spark_jobs import check_submit_input

    check_submit_input("spark-submit", {"spark.authenticate.enableSaslEncryption": "true"})
    s = parse_spec(spark(conf={"spark.authenticate.enableSaslEncryption": "true"}), "etl.yaml")
    assert isinstance(s, SparkSpec)


@pytest.mark.parametrize("key", ["spark.dynamicAllocation.maxExecutors",
                                 "spark.executor.instances", "spark.dynamicAllocation.enabled"])
def test_operator_mode_keeps_its_executor_cap(key: str) -> None:
    """Operator mode caps executors at workers.replicas, which the run report costs: conf
    lifted it without a word. Standalone mode's executors are its workers': the key is the
    application's own there."""
    data = spark(conf={key: "50" if "Executors" in key or "instances" in key else "false"})
    assert isinstance(parse_spec(data, "etl.yaml"), SparkSpec)
    found = problems({**data, "kubernetesMode": "operator"})
    assert "operator mode caps the executors at workers.replicas" in found[f"conf.{key}"]


@pytest.mark.parametrize("where", ["conf", "connect.conf"])
def test_operator_mode_executors_have_the_workers_cores(where: str) -> None:
    """An operator-mode executor pod requests and is limited to workers.cores: an executor of
    fewer cores held the rest of its pod unused. Standalone mode fits several such executors
    into a worker: the key is the application's own there. The value it has anyway may be
    stated."""
    conf = {"spark.executor.cores": "2"}  # spark/etl's workers have 4
    data = spark(conf=conf) if where == "conf" else spark(connect_conf=conf)
    assert isinstance(parse_spec(data, "etl.yaml"), SparkSpec)
    found = problems({**data, "kubernetesMode": "operator"})
    assert list(found) == [f"{where}.spark.executor.cores"]
    assert found[f"{where}.spark.executor.cores"].startswith(
        "2: operator mode makes each executor pod workers.cores (4) CPUs")
    assert "remove spark.executor.cores and set workers.cores instead" in \
        found[f"{where}.spark.executor.cores"]
    same = spark(conf={"spark.executor.cores": "4"}, connect_conf={"spark.executor.cores": "04"})
    assert isinstance(parse_spec({**same, "kubernetesMode": "operator"}, "etl.yaml"), SparkSpec)


def test_what_the_backend_has_anyway_may_be_stated() -> None:
    """Spark's own default (no shuffle service) and operator mode's dynamic allocation are no
    change: refused, a spec stating them would be a puzzle."""
    data = spark(conf={"spark.shuffle.service.enabled": "false",
                       "spark.dynamicAllocation.enabled": "true"})
    assert isinstance(parse_spec({**data, "kubernetesMode": "operator"}, "etl.yaml"), SparkSpec)
    assert "no external shuffle service" in problems(
        spark(conf={"spark.shuffle.service.enabled": "true"}))["conf"]


def test_the_connect_server_is_judged_by_what_it_gets_from_both_confs() -> None:
    """Its executors' cores from conf, its tasks' cpus from connect.conf: it gets both."""
    found = problems(spark(conf={"spark.executor.cores": "2"},
                           connect_conf={"spark.task.cpus": "4"}))
    assert "more than an executor has (2;" in found["connect.conf.spark.task.cpus"]
    assert "conf.spark.executor.cores" not in found
