"""Real clusters on this machine: Ray head + 2 workers, Spark master + 2 workers + Connect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ephemeral.backends.base import ClusterHandle
from ephemeral.backends.local import LocalBackend, ray_nodes
from ephemeral.backends.local import secrets as cluster_secrets
from ephemeral.backends.local.backend import load, node_tmp
from ephemeral.backends.local.spark_nodes import spark_home
from ephemeral.errors import ClusterFailed
from ephemeral.jobs.spark_jobs import CONNECT_MODE_VARS
from ephemeral.lifecycle import provision
from tests.conftest import manual, small
from tests.integration.conftest import no_process_in, sessions_alive

pytestmark = pytest.mark.local
SCRIPTS = Path(__file__).parent / "scripts"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CONNECT_MODE_VARS}


def run_script(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> dict:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env={**clean_env(), **(env or {})}, check=False)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ray_head_and_two_workers_on_distinct_ips(
        train_ray: tuple[LocalBackend, ClusterHandle]) -> None:
    """On the package's shared ray/train-gpu cluster (ci-cpu: head + 2 one-CPU workers, no
    GPUs); its deletion is checked when the package's last test is done (conftest.py): no
    process in its nodes' sessions, its folder gone."""
    local_backend, handle = train_ray
    assert local_backend.probe(handle).nodes_ready == 3
    plan = local_backend.node_plan(handle.name)
    expected_ips = sorted(n.ip for n in plan)
    assert len(set(expected_ips)) == 3

    # A driver joins the cluster only with its token (Ray's token auth is on).
    token_file = cluster_secrets.path(local_backend.home / "clusters" / handle.name,
                                      cluster_secrets.RAY_TOKEN)
    out = run_script(str(SCRIPTS / "ray_each_node.py"), handle.endpoints.gcs or "", plan[0].ip,
                     env=ray_nodes.auth_env(token_file))
    assert out["nodes"] == expected_ips
    assert out["ran_on"] == expected_ips  # a task really ran on each of the three nodes
    # What a job leaves in its temporary folder (a killed process never cleans up) is in the
    # cluster's temp root: the package's deletion check sees it go with the cluster.
    state = load(local_backend.home / "clusters" / handle.name)
    assert state is not None
    assert state.temp_root
    for left in out["left"]:
        assert Path(left).parent == node_tmp(state.temp_root), left
        assert Path(left).is_dir(), left
    assert local_backend.pids(handle.name)


def test_spark_master_two_workers_and_connect(local_backend: LocalBackend) -> None:
    """On a cluster of its own: on the package's shared one, an earlier test's Connect session
    leaves the Connect server holding executors for its 60 s shuffle-tracking timeout, and
    this spark-submit waited that long for cores."""
    spec = small("spark/etl")
    result = provision(local_backend, spec, manual(spec, "spark-etl"), timeout=240)
    ep = result.handle.endpoints
    assert ep.spark_master
    assert ep.spark_master.startswith("spark://127.0.")
    assert ep.spark_connect
    assert ep.spark_connect.startswith("sc://")
    worker_ips = sorted(n.ip for n in local_backend.node_plan(result.handle.name)
                        if n.role == "worker")
    assert len(worker_ips) == 2

    submit = str(spark_home() / "bin" / "spark-submit")
    auth_file = local_backend.home / "clusters" / result.handle.name / \
        cluster_secrets.SPARK_PROPERTIES  # the cluster's spark.authenticate secret
    proc = subprocess.run(
        [submit, "--master", ep.spark_master, "--extra-properties-file", str(auth_file),
         "--conf", "spark.driver.host=127.0.0.1",
         "--conf", "spark.driver.bindAddress=127.0.0.1",
         str(SCRIPTS / "spark_both_workers.py")],
        capture_output=True, text=True, timeout=300, check=False,
        env={**clean_env(), "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sum"] == 500500
    assert out["ran_on"] == worker_ips  # tasks ran on both workers
    assert set(worker_ips) <= set(out["executor_hosts"])
    state = load(local_backend.home / "clusters" / result.handle.name)
    assert state is not None
    assert state.temp_root
    assert out["task_tmp"] == [str(node_tmp(state.temp_root))]  # PySpark's workers' TMPDIR

    token = local_backend.spark_auth(result.handle).connect_token or ""
    session = run_script(str(SCRIPTS / "spark_connect_session.py"), ep.spark_connect,
                         env={"CONNECT_TOKEN": token})
    assert session == {"groups": 10, "total": 1000, "version": "4.3.0"}

    # The cluster's JVMs keep their temporary files in the cluster's folder, which deletion
    # removes: SIGKILLed, their shutdown hooks never clean /tmp. (Executors keep theirs in the
    # worker's local dirs, also in the cluster's folder.)
    cdir = local_backend.home / "clusters" / result.handle.name
    tmp = cdir / "spark" / "tmp"
    sids = sessions_alive(local_backend, result.handle.name)
    mains = ("deploy.master.Master", "deploy.worker.Worker", "deploy.SparkSubmit")
    jvms = [p.info["cmdline"] for p in psutil.process_iter(["pid", "cmdline"])
            if os.getsid(p.info["pid"]) in sids and p.info["cmdline"]
            and p.info["cmdline"][0].endswith("/java")
            and any(c.endswith(mains) for c in p.info["cmdline"])]
    assert len(jvms) == 4, jvms  # the master, two workers and the Connect server
    for cmdline in jvms:
        assert f"-Djava.io.tmpdir={tmp}" in cmdline, cmdline
    assert list(tmp.glob("spark-*")), "spark-submit's temporary folder is not in the cluster's"
    local_backend.delete(result.handle, wait=True)
    assert no_process_in(sids)
    assert not cdir.exists()
    assert not Path(state.temp_root).exists()


def test_two_clusters_side_by_side(local_backend: LocalBackend) -> None:
    spec = small("ray/adhoc-cpu", replicas=1)
    a = local_backend.create(spec, identity=manual(spec, "side-a"))
    b = local_backend.create(spec, identity=manual(spec, "side-b"))
    assert a.endpoints.dashboard != b.endpoints.dashboard
    assert a.endpoints.gcs != b.endpoints.gcs
    for h in (a, b):
        assert local_backend.wait_ready(h, timeout=180).nodes_ready == 2
    ips_a = {n.ip for n in local_backend.node_plan(a.name)}
    ips_b = {n.ip for n in local_backend.node_plan(b.name)}
    assert not ips_a & ips_b
    local_backend.delete(a, wait=True)
    # Deleting one leaves the other untouched and still ready.
    assert local_backend.wait_ready(b, timeout=0).ready
    local_backend.delete(b, wait=True)


def test_a_node_that_dies_while_starting_fails_provision_and_nothing_is_left(
    local_backend: LocalBackend,
) -> None:
    spec = small("ray/adhoc-cpu", replicas=1)
    ident = manual(spec, "dies")
    handle = local_backend.create(spec, identity=ident)
    state = load(local_backend.home / "clusters" / handle.name)
    assert state is not None
    worker = next(n for n in state.nodes if n.name != "head")
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == worker.sid:
                p.kill()
        except (OSError, psutil.Error):
            continue
    sids = [n.sid for n in state.nodes]
    with pytest.raises(ClusterFailed) as err:
        provision(local_backend, spec, ident, timeout=120)
    assert "cpu-0" in str(err.value)
    assert "log" in err.value.details
    assert local_backend.list_owned() == []
    assert no_process_in(sids)


def test_half_a_cluster_left_by_a_dead_creator_is_replaced_not_adopted(
    local_backend: LocalBackend,
) -> None:
    spec = small("ray/adhoc-cpu", replicas=1)
    ident = manual(spec, "half")
    first = local_backend.create(spec, identity=ident)
    cdir = local_backend.home / "clusters" / first.name
    state = json.loads((cdir / "state.json").read_text())
    state["nodes"] = state["nodes"][:1]  # the creator died after starting the head only
    (cdir / "state.json").write_text(json.dumps(state))
    time.sleep(1.1)
    second = local_backend.create(spec, identity=ident)
    fresh = load(cdir)
    assert fresh is not None
    assert fresh.uid != state["uid"]  # a new cluster, not the half one
    assert second.created_at >= first.created_at
    assert local_backend.wait_ready(second, timeout=180).nodes_ready == 2
    local_backend.delete(second, wait=True)
