"""A Spark spec as one ``SparkConnect`` of the Kubeflow spark-operator (``sparkoperator.k8s.io/
v1alpha1``, operator 2.5), and its NetworkPolicy.

What the operator makes from it (``internal/controller/sparkconnect`` at v2.5.2), all owned by the
SparkConnect: the server pod ``<name>-server`` from ``server.template`` (its container
``spark-kubernetes-driver`` gets ``start-connect-server.sh`` with ``--master k8s://...``), the
Service ``<name>-server`` (ports ``driver-rpc`` 7078, ``blockmanager`` 7079, ``web-ui`` 4040,
``spark-connect-server`` 15002) and a ConfigMap ``<name>-conf`` with the executor template. The
server is a Spark driver in client mode: it creates its executor pods itself, from
``executor.template``, as dynamic allocation asks, so it needs a ServiceAccount that may create
pods (``service_account``, the chart's ``<release>-spark``) and its token.

Differences from standalone mode: there is no master (no ``spark://`` endpoint: spark-submit to
the cluster is refused), ``workers.replicas`` is the most executors at once (created when work
comes, released after 30 s idle), and the Spark UI is the Connect server's own (port 4040).
A spec's ``master`` has nothing to size or place here (the SparkConnect CRD has a server and
executors only): ``unhonoured`` refuses it, at spec validation when the spec chooses this mode
and at render when the deployment does.
"""

from __future__ import annotations

import math

from ephemeral.backends.base import CONNECT_ALLOCATION, ClusterHandle, Endpoints
from ephemeral.backends.kubernetes.render.common import (
    SHM_MOUNT,
    Manifest,
    Rendered,
    check_name,
    container_security,
    jvm_heap,
    metadata,
    namespace_of,
    placement,
    pod_labels,
    pod_security,
    resources,
    service_host,
    shm_volume,
)
from ephemeral.backends.kubernetes.render.network import Clients, policies
from ephemeral.backends.kubernetes.render.spark import CONNECT_PORT
from ephemeral.specs.models import SparkMaster, SparkSpec, whole_cores
from ephemeral.specs.quantities import memory_bytes
from ephemeral.specs.resolve import ResolvedSpec

UI_PORT = 4040
API_PORTS = [CONNECT_PORT, UI_PORT]
DRIVER_CONTAINER = "spark-kubernetes-driver"  # the container the operator fills in
EXECUTOR_CONTAINER = "spark-kubernetes-executor"  # Spark's pod template container name
SCRATCH = "/tmp/scratch"  # not /tmp/spark: the operator mounts the executor template there
_MIB = 2**20
# What the operator's webhook refuses in sparkConf (internal/webhook/sparkconf_validator.go).
WEBHOOK_DENIED = (
    "spark.master", "spark.kubernetes.driver.master", "spark.kubernetes.container.image",
    "spark.kubernetes.driver.container.image", "spark.kubernetes.executor.container.image",
    "spark.kubernetes.authenticate.driver.serviceAccountName",
    "spark.kubernetes.authenticate.executor.serviceAccountName",
    "spark.kubernetes.authenticate.oauthTokenFile", "spark.kubernetes.authenticate.oauthToken",
    "spark.kubernetes.authenticate.driver.oauthTokenFile",
    "spark.kubernetes.authenticate.driver.oauthToken",
    "spark.kubernetes.authenticate.executor.oauthTokenFile",
    "spark.kubernetes.authenticate.executor.oauthToken", "spark.kubernetes.namespace")
# What the operator sets itself (v2.5.2, internal/controller/sparkconnect/options.go): it drops
# the driver pod's name from sparkConf, and puts these after sparkConf on the server's
# spark-submit line, where the last --conf wins (the pod template ones as the SparkConnect has
# an executor template, which ours always has). A value in the spec's conf never applied.
OPERATOR_SET = (
    "spark.kubernetes.driver.pod.name", "spark.kubernetes.executor.podNamePrefix",
    "spark.kubernetes.executor.podTemplateFile",
    "spark.kubernetes.executor.podTemplateContainerName")
# The conf keys operator mode refuses, with why (``checks``).
DENIED_CONF: dict[str, str] = {
    **dict.fromkeys(WEBHOOK_DENIED, "its webhook refuses them"),
    **dict.fromkeys(OPERATOR_SET, "it sets them after sparkConf, so a value here never applies")}


def server_service(name: str) -> str:
    """The operator's name for the Connect server's Service (and pod) of SparkConnect ``name``."""
    return f"{name}-server"


def endpoints(handle: ClusterHandle, cluster_domain: str) -> Endpoints:
    host = service_host(server_service(handle.name), namespace_of(handle), cluster_domain)
    return Endpoints(spark_ui=f"http://{host}:{UI_PORT}",
                     spark_connect=f"sc://{host}:{CONNECT_PORT}")


def is_operator(handle: ClusterHandle) -> bool:
    """Whether ``handle`` is a SparkConnect cluster: the only Spark clusters without a master."""
    return handle.engine == "spark" and handle.endpoints.spark_master is None \
        and handle.endpoints.spark_connect is not None


def unhonoured(s: SparkSpec) -> list[tuple[str, str]]:
    """(field, why and fix) for each field of ``s`` operator mode cannot honour: the one rule,
    used by the spec model (``kubernetesMode: operator``), the renderer (the deployment's mode)
    and the CLI's notes. The SparkConnect CRD has a server and executors, no standalone master,
    so every ``master`` field other than its default is refused; one at its default asks for
    nothing a spec without it does not (``spark/etl`` writes them out, and runs in either
    mode)."""
    default = SparkMaster()
    m = s.master
    changed = [name for name, differs in (
        ("cpu", m.cpu != default.cpu),
        ("memory", memory_bytes(m.memory) != memory_bytes(default.memory)),
        ("nodeSelector", bool(m.node_selector)),
        ("tolerations", bool(m.tolerations))) if differs]
    where = {"cpu": "sized by connect.cpu", "memory": "sized by connect.memory",
             "nodeSelector": "placed by connect.nodeSelector",
             "tolerations": "placed by connect.tolerations"}
    caps = [(f"{path}.{key}", f"operator mode caps the executors at workers.replicas "
             f"({s.workers.replicas}), which the run report costs: set workers.replicas "
             "instead") for path, conf in s.confs() for key in EXECUTOR_CAPS
            if key in conf and not (key == DYNAMIC and conf[key].strip().lower() == "true")]
    # An executor pod requests and is limited to workers.cores (spark_conf): an executor of
    # fewer cores would hold CPUs it never uses. (More is refused in any mode by the spec.)
    cores = [(f"{path}.{EXECUTOR_CORES}", f"{conf[EXECUTOR_CORES]}: operator mode makes each "
              f"executor pod workers.cores ({s.workers.cores}) CPUs (its request and limit), "
              "so an executor of fewer cores would leave the rest unused; remove "
              f"{EXECUTOR_CORES} and set workers.cores instead") for path, conf in s.confs()
             if EXECUTOR_CORES in conf and whole_cores(conf[EXECUTOR_CORES]) != s.workers.cores]
    return [(f"master.{name}", "operator mode (a SparkConnect) has no standalone master: its "
             f"Connect server is the driver, {where[name]}, and executors by workers.*; remove "
             f"master.{name}, or use kubernetesMode: standalone") for name in changed] + caps \
        + cores


# What would lift the executor cap operator mode sets from workers.replicas (spark_conf).
DYNAMIC = "spark.dynamicAllocation.enabled"  # true as the backend sets it; false lifts the cap
EXECUTOR_CAPS = ("spark.dynamicAllocation.maxExecutors", "spark.executor.instances", DYNAMIC)
EXECUTOR_CORES = "spark.executor.cores"  # an executor's; operator mode sizes its pod to them


def executor_heap(memory: str) -> int:
    """An executor's heap, in MiB, in a pod of ``memory`` (the spec's workers.memory): the
    JVM's share; the rest is its ``memoryOverhead``, so heap and overhead are the pod."""
    return jvm_heap(memory)


def spark_conf(s: SparkSpec) -> dict[str, str]:
    """Derived settings, then the spec's conf, then connect.conf (as in standalone mode). The
    operator puts them into the server's `bash -c` line, where no escape holds: a value bash or
    Kubernetes would read there ($, spaces, quotes) is refused (``checks``)."""
    assert s.connect is not None
    w = s.workers
    total = memory_bytes(w.memory) // _MIB
    heap = executor_heap(w.memory)
    conf = {
        "spark.connect.grpc.binding.port": str(CONNECT_PORT),
        "spark.driver.memory": f"{jvm_heap(s.connect.memory)}m",
        # An executor pod is the spec's worker: its cores, its memory as heap plus overhead.
        EXECUTOR_CORES: str(w.cores),
        "spark.kubernetes.executor.request.cores": str(w.cores),
        "spark.kubernetes.executor.limit.cores": str(w.cores),
        "spark.executor.memory": f"{heap}m",
        "spark.executor.memoryOverhead": f"{total - heap}m",
        # Executors only while there is work, at most workers.replicas of them.
        **CONNECT_ALLOCATION,
        "spark.dynamicAllocation.maxExecutors": str(w.replicas),
        "spark.local.dir": f"{SCRATCH}/local",
        "spark.sql.warehouse.dir": f"{SCRATCH}/warehouse",
        "spark.ui.port": str(UI_PORT),
    }
    if w.gpus:
        conf["spark.executor.resource.gpu.amount"] = str(w.gpus)
        # <vendor>/gpu: other names are refused (checks)
        conf["spark.executor.resource.gpu.vendor"] = w.gpu_resource.rpartition("/")[0]
        assert w.discovery_script is not None  # the spec model requires it with GPUs
        conf["spark.executor.resource.gpu.discoveryScript"] = w.discovery_script
    return conf | s.conf | s.connect.conf


def _server(s: SparkSpec, handle: ClusterHandle, service_account: str) -> Manifest:
    assert s.connect is not None
    c = s.connect
    container: Manifest = {
        "name": DRIVER_CONTAINER,
        "resources": resources(c.cpu, c.memory),
        "securityContext": container_security(),
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}],
    }
    return {
        "metadata": {"labels": pod_labels(handle, "spark-connect")},
        "spec": {
            "serviceAccountName": service_account,
            # The driver creates and deletes its executor pods: it needs its token. It is the
            # one pod of the cluster that has one (docs/kubernetes.md, operator mode).
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            "securityContext": pod_security(),
            "containers": [container],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            **placement(c),
        },
    }


def _executor(s: SparkSpec, handle: ClusterHandle) -> Manifest:
    w = s.workers
    container: Manifest = {"name": EXECUTOR_CONTAINER, "securityContext": container_security()}
    pod: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        "containers": [container],
        **placement(w),
    }
    if w.gpus:  # NCCL and DataLoader workers in GPU tasks need more than 64 MiB of /dev/shm
        container["volumeMounts"] = [dict(SHM_MOUNT)]
        pod["volumes"] = [shm_volume(w.memory)]
    return {"metadata": {"labels": pod_labels(handle, "spark-executor")}, "spec": pod}


def render_spark_connect(spec: ResolvedSpec, handle: ClusterHandle, cluster_domain: str,
                         clients: Clients, service_account: str) -> Rendered:
    s = spec.spec
    if not isinstance(s, SparkSpec):
        raise TypeError(f"{spec.ref} is not a Spark spec")
    check_name(spec, handle.name)
    from ephemeral.backends.kubernetes.render.checks import refuse  # here: it imports this module

    refuse(spec, operator=True)
    assert s.connect is not None
    eps = endpoints(handle, cluster_domain)
    primary_handle = handle.model_copy(update={"endpoints": eps})
    conn: Manifest = {
        "apiVersion": "sparkoperator.k8s.io/v1alpha1",
        "kind": "SparkConnect",
        "metadata": metadata(primary_handle, handle.name, "spark-connect", primary=True),
        "spec": {
            "sparkVersion": s.spark_version,
            "image": s.image,
            "sparkConf": spark_conf(s),
            "server": {"cores": max(1, math.ceil(s.connect.cpu)),
                       "template": _server(s, handle, service_account)},
            "executor": {"template": _executor(s, handle)},
        },
    }
    return Rendered(objects=[conn, *policies(handle, API_PORTS, clients)], primary=conn,
                    endpoints=eps)
