"""Spark on the local backend: a standalone master, workers and a Spark Connect server.

Everything runs from the pyspark distribution (its ``bin/spark-class`` and ``spark-submit``) on
the machine's Java. The master and the Connect server start at once, the workers the moment the
master's port opens (a worker that finds no master retries only 5-15 s later; the Connect driver
builds its whole SparkContext before it first asks the master, seconds after the master is up).

Master, workers, executors and the Connect driver authenticate each other with the cluster's
``spark.authenticate`` secret, and Connect clients with the server's bearer token. Both come
from 0600 properties files of the cluster's state folder (``--properties-file``), never from an
argv or a node's recorded environment. The README says what stays open (the web UIs).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ephemeral.backends.base import (
    CONNECT_ALLOCATION,
    ClusterStatus,
    Endpoints,
    Phase,
    application_conf,
    executor_size,
    spark_size,
)
from ephemeral.backends.http import GRPC_NO_PROXY, get_json
from ephemeral.backends.local import gpus, jvm_share, slots
from ephemeral.backends.local.state import PlannedNode
from ephemeral.errors import BackendUnavailable
from ephemeral.jobs.spark_jobs import FAST_START_JVM as FAST_START_JVM  # bench/by_hand.sh
from ephemeral.jobs.spark_jobs import driver_java_options
from ephemeral.specs.models import SparkSpec

MASTER, MASTER_UI = 0, 1
WORKER, WORKER_UI = 0, 1
CONNECT_GRPC, CONNECT_UI, DRIVER, BLOCK_MANAGER = 0, 1, 2, 3

CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def spark_home() -> Path:
    try:
        from pyspark.find_spark_home import _find_spark_home
    except ImportError as err:
        raise BackendUnavailable("the local Spark backend needs pyspark: "
                                 "pip install 'airflow-provider-ephemeral[local]'") from err
    return Path(_find_spark_home())


def endpoints(spec: SparkSpec, slot: int) -> Endpoints:
    ip = slots.node_ip(slot, 0)
    connect = None
    if spec.connect and spec.connect.enabled:
        cip = slots.node_ip(slot, spec.workers.replicas + 1)
        connect = f"sc://{cip}:{slots.named_port(slot, spec.workers.replicas + 1, CONNECT_GRPC)}"
    return Endpoints(
        spark_master=f"spark://{ip}:{slots.named_port(slot, 0, MASTER)}",
        spark_ui=f"http://{ip}:{slots.named_port(slot, 0, MASTER_UI)}",
        spark_connect=connect,
    )


def connect_ui(ep: Endpoints) -> str | None:
    """The Connect server's UI: it listens on the address of the gRPC endpoint, at the node's
    next named port."""
    url = urlsplit(ep.spark_connect or "")
    if url.hostname is None or url.port is None:
        return None
    return f"http://{url.hostname}:{url.port - CONNECT_GRPC + CONNECT_UI}"


def tmp_dir(work_root: Path) -> Path:
    """``java.io.tmpdir`` of the cluster's JVMs (the backend makes it before they start)."""
    return work_root / "tmp"


def _resources_file(work_root: Path, worker: int) -> Path:
    return work_root / f"worker-{worker}" / "gpus.json"


def resource_files(work_root: Path, devices: list[list[str]]) -> dict[Path, str]:
    """The resources file of each worker with GPUs (``devices`` in plan order: the master,
    the workers, the Connect server), for the backend to write before they start."""
    return {_resources_file(work_root, i): gpus.resources_file(len(mine))
            for i, mine in enumerate(devices[1:]) if mine}


def plan(spec: SparkSpec, slot: int, work_root: Path, *, auth_props: Path,
         connect_props: Path, devices: list[list[str]] | None = None) -> list[PlannedNode]:
    """``auth_props``: the ``spark.authenticate`` settings of every node; ``connect_props``:
    those plus the Connect server's token; ``devices``: each node's GPUs in plan order (a
    worker with its own takes them from its resources file, not from a discovery script that
    lists every GPU of the host)."""
    home = spark_home()
    spark_class = str(home / "bin" / "spark-class")
    master_ip = slots.node_ip(slot, 0)
    master_url = f"spark://{master_ip}:{slots.named_port(slot, 0, MASTER)}"
    master_rpc = f"{master_ip}:{slots.named_port(slot, 0, MASTER)}"
    common = {"SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable,
              "SPARK_LOG_DIR": str(work_root / "logs"), "SPARK_NO_DAEMONIZE": "1",
              # spark-class's launcher JVM does little work: a client compiler and serial GC
              # make it start with far less CPU.
              "SPARK_LAUNCHER_OPTS": FAST_START_JVM}
    # Every JVM of the cluster keeps its temporary files (spark-submit's spark-<uuid> folder,
    # native libraries Netty unpacks) in the cluster's folder: deletion kills the JVMs before
    # their shutdown hooks can remove them from /tmp, and removes the folder.
    tmpdir = f"-Djava.io.tmpdir={tmp_dir(work_root)}"
    # Master and worker daemons too, and they map their class-data-sharing archive if built.
    # A port of the slot that is taken (a cluster of another OS user in the same slot while
    # both start) fails the node, which fails the create: Spark's default retries the next
    # ports, which are the slot's other nodes' or the next slot's.
    no_port_retry = "-Dspark.port.maxRetries=0"
    daemon_opts = {role: f"{FAST_START_JVM} {tmpdir} {no_port_retry} "
                         f"{jvm_share.java_options(role)}".strip()
                   for role in ("master", "worker")}
    nodes = [PlannedNode(
        name="master", role="master", ip=master_ip,
        argv=[spark_class, "org.apache.spark.deploy.master.Master",
              "--properties-file", str(auth_props), "--host", master_ip, "--port", str(slots.named_port(slot, 0, MASTER)),
              "--webui-port", str(slots.named_port(slot, 0, MASTER_UI))],
        env=common | gpus.node_env(devices, 0) | {
            "SPARK_LOCAL_IP": master_ip, "SPARK_DAEMON_MEMORY": spark_size(spec.master.memory),
            "SPARK_DAEMON_JAVA_OPTS": daemon_opts["master"],
            # No REST submission server: nothing here uses it, it takes no
            # spark.authenticate secret, and it binds the host's port 6066 (clusters
            # side by side would queue for it) before the master goes ALIVE.
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"},
    )]
    w = spec.workers
    for i in range(w.replicas):
        n = i + 1
        ip = slots.node_ip(slot, n)
        work_dir = work_root / f"worker-{i}"
        worker_opts = ""
        if w.gpus:
            found = (f"-Dspark.worker.resourcesFile={_resources_file(work_root, i)}"
                     if devices and devices[n] else
                     f"-Dspark.worker.resource.gpu.discoveryScript={w.discovery_script}")
            worker_opts = f"-Dspark.worker.resource.gpu.amount={w.gpus} {found}"
        nodes.append(PlannedNode(
            name=f"worker-{i}", role="worker", ip=ip,
            argv=[spark_class, "org.apache.spark.deploy.worker.Worker",
                  "--properties-file", str(auth_props), "--host", ip, "--port", str(slots.named_port(slot, n, WORKER)),
                  "--webui-port", str(slots.named_port(slot, n, WORKER_UI)),
                  "--cores", str(w.cores), "--memory", spark_size(w.memory),
                  "--work-dir", str(work_dir), master_url],
            env=common | gpus.node_env(devices, n) | {
                "SPARK_LOCAL_IP": ip, "SPARK_WORKER_OPTS": worker_opts,
                "SPARK_DAEMON_JAVA_OPTS": daemon_opts["worker"],
                "SPARK_LOCAL_DIRS": str(work_dir / "tmp"),
                # Executors inherit their worker's environment, not its JVM options: their
                # temporary files (lz4's and snappy's native libraries) in the cluster's folder
                # too. An application's own -Djava.io.tmpdir comes later, so it wins.
                "JAVA_TOOL_OPTIONS": tmpdir},
            wait_for=master_rpc,
        ))
    if spec.connect and spec.connect.enabled:
        n = w.replicas + 1
        ip = slots.node_ip(slot, n)
        conf = {
            "spark.connect.grpc.binding.address": ip,
            "spark.connect.grpc.binding.port": str(slots.named_port(slot, n, CONNECT_GRPC)),
            "spark.driver.host": ip,
            "spark.driver.bindAddress": ip,
            "spark.driver.port": str(slots.named_port(slot, n, DRIVER)),
            # The driver's own: spark.blockManager.port would also pin every executor.
            "spark.driver.blockManager.port": str(slots.named_port(slot, n, BLOCK_MANAGER)),
            "spark.ui.port": str(slots.named_port(slot, n, CONNECT_UI)),
            # The ports above are the slot's: one taken fails the server, as for the daemons,
            # rather than moving it onto another node's or slot's (executors bind port 0).
            "spark.port.maxRetries": "0",
            # One executor per worker, sized to it, only while there is work.
            **executor_size(spec, "local"),
            **CONNECT_ALLOCATION,
            "spark.sql.warehouse.dir": str(work_root / "warehouse"),
            # The Connect server is on the critical path to ready: the client compiler halves
            # its start-up CPU (measured ~45% less to the first session); a spec may override.
            "spark.driver.extraJavaOptions": driver_java_options(),
            **application_conf(spec),
            **spec.connect.conf,
        }
        argv = [str(home / "bin" / "spark-submit"), "--class", CONNECT_CLASS,
                "--extra-properties-file", str(connect_props),
                "--master", master_url, "--name", "ephemeral-connect",
                "--driver-memory", spark_size(spec.connect.memory)]
        for key, value in conf.items():
            argv += ["--conf", f"{key}={value}"]
        argv.append("spark-internal")
        # Not waiting for the master's port: the Connect server is the critical path to ready,
        # and its JVM start and SparkContext (before it first registers) overlap the master's.
        nodes.append(PlannedNode(
            name="connect", role="connect", ip=ip, argv=argv,
            env=common | gpus.node_env(devices, n) | {"SPARK_LOCAL_IP": ip,
                          "SPARK_LOCAL_DIRS": str(work_root / "connect" / "tmp"),
                          "SPARK_SUBMIT_OPTS": tmpdir},  # the Connect server's own JVM
        ))
    return nodes


def connect_metadata(token: str | None) -> list[tuple[str, str]]:
    """gRPC metadata that authenticates a Spark Connect call (the server's pre-shared token)."""
    return [("authorization", f"Bearer {token}")] if token else []


def connect_accepts_session(target: str, timeout: float = 5.0, *,
                            token: str | None = None) -> bool:
    """Open a real Spark Connect session and ask for the Spark version through it."""
    try:
        import grpc
        from pyspark.sql.connect.proto import base_pb2, base_pb2_grpc
    except ImportError as err:
        raise BackendUnavailable("probing Spark Connect needs pyspark[connect]") from err
    channel = grpc.insecure_channel(target, options=list(GRPC_NO_PROXY))  # never a proxy
    try:
        stub = base_pb2_grpc.SparkConnectServiceStub(channel)  # type: ignore[no-untyped-call]
        req = base_pb2.AnalyzePlanRequest(
            session_id=str(uuid.uuid4()),
            user_context=base_pb2.UserContext(user_id="ephemeral-probe"),
            spark_version=base_pb2.AnalyzePlanRequest.SparkVersion(),
        )
        resp = stub.AnalyzePlan(req, timeout=timeout, metadata=connect_metadata(token))
        return bool(resp.spark_version.version)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def probe(workers: int, ep: Endpoints, connect_token: str | None = None) -> ClusterStatus:
    """Ready when the master lists every worker ALIVE and Connect (if any) serves a session."""
    expected = workers + (1 if ep.spark_connect else 0)
    body: Any = get_json(f"{ep.spark_ui}/json/", timeout=3)
    if body is None:
        return ClusterStatus(phase=Phase.STARTING, nodes_expected=expected,
                             message="the master does not answer yet")
    alive = [wk for wk in body.get("workers", []) if wk.get("state") == "ALIVE"]
    if len(alive) < workers:
        return ClusterStatus(phase=Phase.STARTING, nodes_ready=len(alive), nodes_expected=expected,
                             message=f"{len(alive)}/{workers} workers ALIVE")
    if ep.spark_connect and not connect_accepts_session(ep.spark_connect.removeprefix("sc://"),
                                                        token=connect_token):
        return ClusterStatus(phase=Phase.STARTING, nodes_ready=len(alive), nodes_expected=expected,
                             message="Spark Connect does not accept a session yet")
    return ClusterStatus(phase=Phase.READY, nodes_ready=expected, nodes_expected=expected,
                         message=f"{len(alive)} workers ALIVE" + (", Connect up" if ep.spark_connect
                                                                   else ""))
