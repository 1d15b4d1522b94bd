"""A Spark spec as a standalone cluster made of core objects (no operator needed).

Objects, in creation order (all named after the cluster, all with the owner labels):

- ``<name>-master`` Deployment (the primary: it carries the handle) and Service (7077, 8080);
- ``<name>-worker`` Deployment: workers are interchangeable and register with the master by
  their pod IP, so they need neither stable names nor the ordered start of a StatefulSet;
- ``<name>-connect`` Deployment and Service (15002, and its UI 4040: the reaper and the run
  report read its sessions and operations there) when Spark Connect is enabled;
- NetworkPolicies ``<name>`` and ``<name>-spark-worker`` (``render.network``).

The master and the workers advertise their pod IP: a Deployment's pod names do not resolve in
cluster DNS, and executors and drivers must reach them. The spec's ``conf`` (with an executor's
GPUs, ``application_conf``) is the default of every application: the Connect server's here,
each spark-submit's through the handle, as on the local backend.
"""

from __future__ import annotations

from ephemeral.backends.base import (
    CONNECT_ALLOCATION,
    ClusterHandle,
    Endpoints,
    application_conf,
    executor_size,
)
from ephemeral.backends.kubernetes.render.common import (
    POD_IP_ENV,
    SHM_MOUNT,
    Manifest,
    Rendered,
    check_name,
    container_security,
    jvm_heap,
    literal,
    metadata,
    namespace_of,
    placement,
    pod_labels,
    pod_security,
    resources,
    selector_labels,
    service_host,
    shm_volume,
)
from ephemeral.backends.kubernetes.render.network import Clients, policies
from ephemeral.specs.models import Placement, SparkSpec
from ephemeral.specs.quantities import memory_bytes
from ephemeral.specs.resolve import ResolvedSpec

SPARK_HOME = "/opt/spark"  # of the apache/spark images
MASTER_PORT, MASTER_UI_PORT, WORKER_UI_PORT, CONNECT_PORT = 7077, 8080, 8081, 15002
CONNECT_UI_PORT = 4040  # the Connect server's own UI (its driver's): sessions and operations
CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
SCRATCH = "/tmp/spark"  # an emptyDir: the image's own directories are not writable by its user
_MIB = 2**20


def master_service(name: str) -> str:
    return f"{name}-master"


def connect_service(name: str) -> str:
    return f"{name}-connect"


def endpoints(handle: ClusterHandle, cluster_domain: str, *, connect: bool) -> Endpoints:
    ns = namespace_of(handle)
    master = service_host(master_service(handle.name), ns, cluster_domain)
    return Endpoints(
        spark_master=f"spark://{master}:{MASTER_PORT}",
        spark_ui=f"http://{master}:{MASTER_UI_PORT}",
        spark_connect=(f"sc://{service_host(connect_service(handle.name), ns, cluster_domain)}:"
                       f"{CONNECT_PORT}" if connect else None),
    )


def connect_ui(handle: ClusterHandle, cluster_domain: str) -> str:
    """The Connect server's UI in cluster DNS: no endpoint of the handle, only the reaper and
    the run report read it (``ClusterAccess``)."""
    host = service_host(connect_service(handle.name), namespace_of(handle), cluster_domain)
    return f"http://{host}:{CONNECT_UI_PORT}"


def heap_sizes(memory: str) -> tuple[int, int]:
    """(daemon heap, memory offered to executors) in MiB for a worker pod of ``memory``.

    The pod's limit is the spec's memory. A JVM uses more than its heap, so only three quarters
    of it are handed out as heaps: a small one for the worker daemon, the rest to executors.
    """
    total = memory_bytes(memory) // _MIB
    daemon = min(512, total // 4)
    return daemon, max(256, total * 3 // 4 - daemon)


def _port(name: str, port: int) -> Manifest:
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def _http_probe(port: str) -> Manifest:
    return {"httpGet": {"path": "/", "port": port}, "initialDelaySeconds": 5,
            "periodSeconds": 5, "failureThreshold": 6}


def _deployment(handle: ClusterHandle, name: str, component: str, replicas: int,
                container: Manifest, place: Placement, *, primary: bool = False,
                recreate: bool = False) -> Manifest:
    pod_spec: Manifest = {
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        # Service links would put <SERVICE>_PORT variables of the namespace into the pods; a
        # Service called spark-master there would set SPARK_MASTER_PORT and break the master.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,  # no process of the cluster calls the API
        "securityContext": pod_security(),
        **placement(place),
    }
    spec: Manifest = {
        "replicas": replicas,
        "selector": {"matchLabels": selector_labels(handle, component)},
        "template": {"metadata": {"labels": pod_labels(handle, component)}, "spec": pod_spec},
    }
    if recreate:  # never two masters (or Connect servers) at a time
        spec["strategy"] = {"type": "Recreate"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": metadata(handle, name, component, primary=primary), "spec": spec}


def _service(handle: ClusterHandle, name: str, component: str,
             ports: list[tuple[str, int]]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(handle, name, component),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(handle, component),
            "ports": [{"name": p, "port": n, "targetPort": p, "protocol": "TCP"}
                      for p, n in ports],
        },
    }


def _container(s: SparkSpec, name: str, command: list[str], env: dict[str, str], *,
               cpu: float, memory: str, ports: list[Manifest], probe: Manifest,
               gpus: int = 0) -> Manifest:
    return {
        "name": name,
        "image": s.image,
        "command": command,
        "env": [POD_IP_ENV, *({"name": k, "value": v} for k, v in env.items())],
        "ports": ports,
        "resources": resources(cpu, memory, gpus, s.workers.gpu_resource),
        "readinessProbe": probe,
        "securityContext": container_security(),
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}],
    }


def _master(s: SparkSpec, handle: ClusterHandle) -> Manifest:
    heap = jvm_heap(s.master.memory)
    container = _container(
        s, "spark-master",
        [f"{SPARK_HOME}/bin/spark-class", "org.apache.spark.deploy.master.Master",
         "--host", "$(POD_IP)", "--port", str(MASTER_PORT),
         "--webui-port", str(MASTER_UI_PORT)],
        {"SPARK_DAEMON_MEMORY": f"{heap}m", "SPARK_LOCAL_DIRS": f"{SCRATCH}/local"},
        cpu=s.master.cpu, memory=s.master.memory,
        ports=[_port("spark", MASTER_PORT), _port("web-ui", MASTER_UI_PORT)],
        probe=_http_probe("web-ui"))
    return _deployment(handle, master_service(handle.name), "spark-master", 1, container,
                       s.master, primary=True, recreate=True)


def _workers(s: SparkSpec, handle: ClusterHandle, master_url: str) -> Manifest:
    w = s.workers
    daemon, offered = heap_sizes(w.memory)
    worker_opts = ""
    if w.gpus:
        # The worker runs the discovery script and hands its GPUs out to executors.
        worker_opts = (f"-Dspark.worker.resource.gpu.amount={w.gpus} "
                       f"-Dspark.worker.resource.gpu.discoveryScript={w.discovery_script}")
    env = {"SPARK_DAEMON_MEMORY": f"{daemon}m", "SPARK_LOCAL_DIRS": f"{SCRATCH}/local",
           "PYSPARK_PYTHON": "python3"}
    if worker_opts:
        env["SPARK_WORKER_OPTS"] = worker_opts
    container = _container(
        s, "spark-worker",
        [f"{SPARK_HOME}/bin/spark-class", "org.apache.spark.deploy.worker.Worker",
         "--host", "$(POD_IP)", "--webui-port", str(WORKER_UI_PORT),
         "--cores", str(w.cores), "--memory", f"{offered}m",
         "--work-dir", f"{SCRATCH}/work", master_url],
        env, cpu=w.cores, memory=w.memory, gpus=w.gpus,
        ports=[_port("web-ui", WORKER_UI_PORT)], probe=_http_probe("web-ui"))
    workers = _deployment(handle, f"{handle.name}-worker", "spark-worker", w.replicas,
                          container, w)
    if w.gpus:  # NCCL and DataLoader workers in GPU tasks need more than 64 MiB of /dev/shm
        container["volumeMounts"].append(dict(SHM_MOUNT))
        workers["spec"]["template"]["spec"]["volumes"].append(shm_volume(w.memory))
    return workers


def connect_conf(s: SparkSpec) -> dict[str, str]:
    """The Connect server's conf, as its command line holds it: derived settings, then what
    every application of the cluster gets (``application_conf``), then connect.conf. The
    spec's values are ``literal``: Kubernetes expands ``$(VAR)`` on a command line, which the
    derived ``spark.driver.host`` needs and a user's value must not meet."""
    conf = {
        "spark.connect.grpc.binding.port": str(CONNECT_PORT),
        "spark.driver.host": "$(POD_IP)",
        "spark.driver.bindAddress": "0.0.0.0",
        "spark.ui.port": str(CONNECT_UI_PORT),  # published on its Service: never another port
        # One executor per worker, sized to it, only while there is work.
        **executor_size(s, "kubernetes"),
        **CONNECT_ALLOCATION,
        "spark.local.dir": f"{SCRATCH}/local",
        "spark.sql.warehouse.dir": f"{SCRATCH}/warehouse",
    }
    assert s.connect is not None
    given = application_conf(s) | s.connect.conf
    return conf | {k: literal(v) for k, v in given.items()}


def _connect(s: SparkSpec, handle: ClusterHandle, master_url: str) -> Manifest:
    assert s.connect is not None
    c = s.connect
    command = [f"{SPARK_HOME}/bin/spark-submit", "--class", CONNECT_CLASS,
               "--master", master_url, "--name", f"{handle.name}-connect",
               "--driver-memory", f"{jvm_heap(c.memory)}m"]
    for key, value in connect_conf(s).items():
        command += ["--conf", f"{key}={value}"]
    command.append("spark-internal")
    container = _container(
        s, "spark-connect", command, {"PYSPARK_PYTHON": "python3"},
        cpu=c.cpu, memory=c.memory,
        ports=[_port("grpc", CONNECT_PORT), _port("web-ui", CONNECT_UI_PORT)],
        probe={"tcpSocket": {"port": "grpc"}, "initialDelaySeconds": 10, "periodSeconds": 5,
               "failureThreshold": 12})
    return _deployment(handle, connect_service(handle.name), "spark-connect", 1, container, c,
                       recreate=True)


def render_spark(spec: ResolvedSpec, handle: ClusterHandle, cluster_domain: str,
                 clients: Clients) -> Rendered:
    s = spec.spec
    if not isinstance(s, SparkSpec):
        raise TypeError(f"{spec.ref} is not a Spark spec")
    check_name(spec, handle.name)
    from ephemeral.backends.kubernetes.render.checks import refuse  # here: it imports this module

    refuse(spec)
    with_connect = bool(s.connect and s.connect.enabled)
    eps = endpoints(handle, cluster_domain, connect=with_connect)
    assert eps.spark_master is not None
    primary_handle = handle.model_copy(update={"endpoints": eps})
    master = _master(s, primary_handle)
    objects = [
        master,
        _service(handle, master_service(handle.name), "spark-master",
                 [("spark", MASTER_PORT), ("web-ui", MASTER_UI_PORT)]),
        _workers(s, handle, eps.spark_master),
    ]
    if with_connect:
        objects += [_connect(s, handle, eps.spark_master),
                    _service(handle, connect_service(handle.name), "spark-connect",
                             [("grpc", CONNECT_PORT), ("web-ui", CONNECT_UI_PORT)])]
    api_ports = [MASTER_PORT, MASTER_UI_PORT] + \
        ([CONNECT_PORT, CONNECT_UI_PORT] if with_connect else [])
    objects += policies(handle, api_ports, clients, open_to_clients="spark-worker")
    return Rendered(objects=objects, primary=master, endpoints=eps)
