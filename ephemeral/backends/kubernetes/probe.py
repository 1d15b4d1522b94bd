"""Is a cluster on Kubernetes ready? One probe, no waiting: the backend loops over it, and so
does Airflow's deferred trigger (through ``backend.wait_ready(handle, timeout=0)``).

Ray: the RayCluster's ``status.state == "ready"`` (or conditions HeadPodReady and
RayClusterProvisioned both True), then the dashboard answers ``GET /api/version`` with the
cluster's token (token auth is always on; the probe reaches the dashboard however
``ClusterAccess`` says, Service DNS, ingress or the API server's proxy). KubeRay
reports an invalid spec only as a Warning Event ``InvalidRayClusterSpec`` (no status): that
fails the cluster at once. Spark: every Deployment available, then the master UI's ``/json/``
lists as many ALIVE workers as the worker Deployment wants. A SparkConnect (Spark's operator
mode): the spark-operator's ``status.state == "Ready"`` (its server pod is ready; condition
``ServerPodReady``), then the Connect server's UI lists its application
(``/api/v1/applications``: the driver's SparkContext runs). Without a ``ClusterAccess`` the
HTTP step is left out.

Which Deployments and pods are the cluster's is decided as its deletion decides it
(``ownership``): from its primary down the ownerReferences; labels only find candidates.
"""

from __future__ import annotations

from typing import Any

from ephemeral.backends.base import ClusterHandle, ClusterStatus, HeadState, HeadView, Phase
from ephemeral.backends.kubernetes.access import ClusterAccess
from ephemeral.backends.kubernetes.client import (
    DEPLOYMENT,
    EVENT,
    POD,
    RAYCLUSTER,
    SPARKCONNECT,
    KubeClient,
    kind_of,
    name_of,
)
from ephemeral.backends.kubernetes.ownership import Owned, deployment_of
from ephemeral.backends.kubernetes.render import COMPONENT_LABEL
from ephemeral.backends.kubernetes.render.spark import master_service
from ephemeral.backends.kubernetes.render.spark_operator import is_operator
from ephemeral.errors import BackendUnavailable, ClusterFailed
from ephemeral.specs.identity import PREFIX, parse_rfc3339

INVALID_SPEC_REASON = "InvalidRayClusterSpec"
RAY_NOT_READY = "RayCluster not ready"
CONNECT_NOT_READY = "SparkConnect not ready"
CONNECT_FAILED = "Failed"  # a state of the CRD's status (the 2.5 controller does not set it yet)
SPARK_NOT_AVAILABLE = "not available yet"
HEAD_LABEL = "ray.io/node-type"  # KubeRay's: head or worker


def probe(client: KubeClient, handle: ClusterHandle, *,
          http: ClusterAccess | None = None) -> ClusterStatus:
    """One look at the cluster; ``http`` (None: skip the HTTP step) reaches its endpoints."""
    if handle.engine == "ray":
        return _probe_ray(client, handle, http)
    if is_operator(handle):
        return _probe_spark_connect(client, handle, http)
    return _probe_spark(client, handle, http)


def pod_selectors(name: str) -> tuple[str, str]:
    """The label selectors of a cluster's pods, Ray's then Spark's: KubeRay labels its pods
    ``ray.io/cluster``, the Spark Deployments' pods carry the owner labels."""
    return f"ray.io/cluster={name}", f"{PREFIX}cluster={name}"


def pod_selector(handle: ClusterHandle) -> str:
    """The label selector of the pods of a cluster whose engine is known."""
    ray, spark = pod_selectors(handle.name)
    return ray if handle.engine == "ray" else spark


def spark_deployments(client: KubeClient, handle: ClusterHandle) -> list[dict[str, Any]]:
    """A standalone Spark cluster's Deployments: its master (the primary, by its name) and
    those it owns; empty without a master. Another Deployment with the cluster's labels
    (someone's copy, maybe being deleted) is none of them (``ownership``)."""
    master = client.get(DEPLOYMENT, master_service(handle.name))
    if master is None:
        return []
    owned = Owned()
    owned.add(DEPLOYMENT, master)
    listed = client.list_objects(DEPLOYMENT, labels=f"{PREFIX}cluster={handle.name}")
    others = [d for d in listed if d["metadata"].get("uid") != master["metadata"].get("uid")]
    return [master, *owned.take(DEPLOYMENT, others)]


def cluster_pods(client: KubeClient, handle: ClusterHandle, primaries: list[dict[str, Any]],
                 labels: str = "") -> list[dict[str, Any]]:
    """The pods of the cluster whose objects ``primaries`` are (its RayCluster, SparkConnect
    or Spark Deployments), with ``labels`` too: the pods they own, and those these own. The
    label selector only finds candidates: a pod of someone else's with the cluster's labels
    counts for nothing (``ownership``)."""
    owned = Owned()
    for obj in primaries:
        owned.add(kind_of(obj), obj)
    selector = f"{pod_selector(handle)},{labels}" if labels else pod_selector(handle)
    return owned.take(POD, client.list_objects(POD, labels=selector))


def _gone_or_deleting(primary: dict[str, Any] | None, kind: str) -> ClusterStatus | None:
    """The phase of a cluster whose primary object is missing or being deleted; None else."""
    if primary is None:
        return ClusterStatus(phase=Phase.GONE, message=f"no such {kind}")
    if primary["metadata"].get("deletionTimestamp"):
        return ClusterStatus(phase=Phase.DELETING, message=f"{kind} is being deleted")
    return None


def _probe_ray(client: KubeClient, handle: ClusterHandle,
               http: ClusterAccess | None) -> ClusterStatus:
    cluster = client.get(RAYCLUSTER, handle.name)
    if (gone := _gone_or_deleting(cluster, "RayCluster")) is not None:
        return gone
    assert cluster is not None
    # By uid: events outlive their object (an hour by default), and a RayCluster made again
    # under the same name (a cleared task) must not fail on its predecessor's events.
    invalid = [e for e in cluster_events(client, "RayCluster", handle.name,
                                         uid=cluster["metadata"].get("uid"))
               if e.get("reason") == INVALID_SPEC_REASON]
    if invalid:
        raise ClusterFailed(f"KubeRay refused RayCluster {handle.name!r} "
                            f"({INVALID_SPEC_REASON})", invalid[-1].get("message", ""))
    expected = 1 + sum(int(g.get("replicas", 0)) * int(g.get("numOfHosts", 1))
                       for g in cluster.get("spec", {}).get("workerGroupSpecs", []))
    pods = cluster_pods(client, handle, [cluster])
    ready_pods = sum(1 for p in pods if pod_ready(p))
    status = cluster.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    ready = status.get("state") == "ready" or (
        conditions.get("HeadPodReady") == "True"
        and conditions.get("RayClusterProvisioned") == "True")
    counts = {"nodes_ready": min(ready_pods, expected), "nodes_expected": expected}
    if not ready:
        return ClusterStatus(phase=Phase.STARTING, message=f"{RAY_NOT_READY}: state="
                             f"{status.get('state') or 'none'}", **counts)
    if http is not None:
        try:
            token = http.ray_token(cluster)
        except BackendUnavailable as exc:  # KubeRay has not made the Secret yet
            return ClusterStatus(phase=Phase.STARTING, message=str(exc), **counts)
        if http.get_json("dashboard", "/api/version", token) is None:
            return ClusterStatus(phase=Phase.STARTING, message=f"dashboard "
                                 f"{http.where('dashboard')} does not answer yet", **counts)
    return ClusterStatus(phase=Phase.READY, nodes_ready=expected, nodes_expected=expected)


def _probe_spark(client: KubeClient, handle: ClusterHandle,
                 http: ClusterAccess | None) -> ClusterStatus:
    deployments = spark_deployments(client, handle)
    if not deployments:
        return ClusterStatus(phase=Phase.GONE, message="no Deployments of this cluster")
    if any(d["metadata"].get("deletionTimestamp") for d in deployments):
        return ClusterStatus(phase=Phase.DELETING, message="cluster is being deleted")
    wanted = {_component(d): int(d.get("spec", {}).get("replicas", 1)) for d in deployments}
    available = {_component(d): int((d.get("status") or {}).get("availableReplicas") or 0)
                 for d in deployments}
    expected = sum(wanted.values())
    ready = sum(min(available[c], n) for c, n in wanted.items())
    not_available = sorted(c for c, n in wanted.items() if available[c] < n)
    if not_available:
        return ClusterStatus(phase=Phase.STARTING, nodes_ready=ready, nodes_expected=expected,
                             message=f"{SPARK_NOT_AVAILABLE}: " + ", ".join(not_available))
    workers = wanted.get("spark-worker", 0)
    if http is not None:
        ui = http.where("spark_ui")
        alive = _alive_workers(http.get_json("spark_ui", "/json/", None))
        if alive < workers:
            return ClusterStatus(
                phase=Phase.STARTING, nodes_ready=expected - workers + alive,
                nodes_expected=expected,
                message=f"{alive} of {workers} workers ALIVE at the master ({ui})")
    return ClusterStatus(phase=Phase.READY, nodes_ready=expected, nodes_expected=expected)


def _probe_spark_connect(client: KubeClient, handle: ClusterHandle,
                         http: ClusterAccess | None) -> ClusterStatus:
    conn = client.get(SPARKCONNECT, handle.name)
    if (gone := _gone_or_deleting(conn, "SparkConnect")) is not None:
        return gone
    assert conn is not None
    status = conn.get("status") or {}
    state = status.get("state") or "none"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    pod = conditions.get("ServerPodReady") or {}
    if state == CONNECT_FAILED:
        raise ClusterFailed(f"the spark-operator failed SparkConnect {handle.name!r}",
                            str(pod.get("message") or ""))
    if state != "Ready" or pod.get("status") != "True":
        why = f" ({pod['message']})" if pod.get("message") else ""
        return ClusterStatus(phase=Phase.STARTING, nodes_ready=0, nodes_expected=1,
                             message=f"{CONNECT_NOT_READY}: state={state}{why}")
    if http is not None:
        apps = http.get_json("spark_ui", "/api/v1/applications", None)
        if not isinstance(apps, list) or not apps:
            return ClusterStatus(phase=Phase.STARTING, nodes_ready=0, nodes_expected=1,
                                 message=f"the Connect server's UI {http.where('spark_ui')} "
                                         "lists no application yet")
    return ClusterStatus(phase=Phase.READY, nodes_ready=1, nodes_expected=1)


def head_view(client: KubeClient, handle: ClusterHandle) -> HeadView:
    """A Ray cluster's head as its objects show it (``ClusterBackend.head_view``). GONE: the
    RayCluster is gone or being deleted, or no head pod runs the head the job was submitted
    to (none left, Failed, being deleted, a Pending replacement, its Ray container exited or
    waiting to restart: either way its GCS, and every job with it, is gone). NOT_READY: the
    head pod runs but is not Ready (its readiness probe fails: maybe passing). RUNNING: a
    head pod is Running and Ready, whatever an API-server proxy in front of it answers."""
    if handle.engine != "ray":
        return HeadView(state=HeadState.UNKNOWN, reason="only a Ray cluster's head is looked at")
    cluster = client.get(RAYCLUSTER, handle.name)
    if cluster is None or cluster["metadata"].get("deletionTimestamp"):
        return HeadView(state=HeadState.GONE, reason=f"its RayCluster {handle.name} is "
                        + ("gone" if cluster is None else "being deleted"))
    pods = cluster_pods(client, handle, [cluster], f"{HEAD_LABEL}=head")
    if not pods:
        return HeadView(state=HeadState.GONE, reason="it has no head pod (the one its job ran "
                                                     "on was deleted)")
    seen = [(_head_pod_state(p), p["metadata"]["name"]) for p in pods]
    for want in (HeadState.RUNNING, HeadState.NOT_READY):
        found = [(why, name) for (state, why), name in seen if state is want]
        if found:
            why, name = found[0]
            return HeadView(state=want, reason=f"its head pod {name} {why}")
    return HeadView(state=HeadState.GONE, reason="its head pod " + "; ".join(
        f"{name} {why}" for (_, why), name in seen))


def _head_pod_state(pod: dict[str, Any]) -> tuple[HeadState, str]:
    """One head pod's state and a clause saying why."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Unknown"
    if pod["metadata"].get("deletionTimestamp"):
        return HeadState.GONE, "is being deleted"
    if phase in ("Failed", "Succeeded"):
        why = ": ".join(str(x) for x in (status.get("reason"), status.get("message")) if x)
        return HeadState.GONE, f"is {phase}" + (f" ({why})" if why else "")
    if phase == "Pending":  # a replacement: a job runs only on a head that has run
        return HeadState.GONE, "is Pending (a replacement: the head its job ran on is gone)"
    if phase != "Running":  # Unknown: its node stopped reporting
        return HeadState.NOT_READY, f"is {phase} (its node does not report)"
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    ray = containers[0].get("name")  # KubeRay's Ray container comes first
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if cs.get("name") == ray and "running" not in state and state:
            what, info = next(iter(state.items()))
            reason = (info or {}).get("reason") or ""
            return HeadState.GONE, (f"has its Ray container {ray} {what}"
                                    + (f" ({reason})" if reason else ""))
    if pod_ready(pod):
        return HeadState.RUNNING, "is Running and Ready"
    return HeadState.NOT_READY, "is Running but not Ready"


def waits_on_api(status: ClusterStatus) -> bool:
    """Whether the cluster waits for its primary objects to change (what a watch sees), rather
    than for an HTTP endpoint to answer (what only polling sees)."""
    return status.phase is Phase.STARTING and status.message.startswith(
        (RAY_NOT_READY, SPARK_NOT_AVAILABLE, CONNECT_NOT_READY))


def _component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"].get("labels", {}).get(COMPONENT_LABEL) or obj["metadata"]["name"])


def _alive_workers(state: Any) -> int:
    if not isinstance(state, dict):
        return 0
    return sum(1 for w in state.get("workers") or [] if w.get("state") == "ALIVE")


def pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or [])


def cluster_events(client: KubeClient, kind: str, name: str | None,
                   uid: str | None = None) -> list[dict[str, Any]]:
    """Warning events about one object (this very object when ``uid`` is given: events of an
    earlier object of the same name are kept for an hour), or about every object of ``kind``
    when ``name`` is None; oldest first."""
    fields = f"involvedObject.kind={kind}"
    if name:
        fields += f",involvedObject.name={name}"
    if uid:
        fields += f",involvedObject.uid={uid}"
    events = client.list_objects(EVENT, fields=fields)
    warnings = [e for e in events if e.get("type") == "Warning"]
    return sorted(warnings, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))


def diagnose(client: KubeClient, handle: ClusterHandle) -> str:
    """Why a cluster is not ready: its Warning events and its pods' waiting reasons."""
    lines: list[str] = []
    operator = is_operator(handle)
    if operator:
        primaries = [c for c in [client.get(SPARKCONNECT, handle.name)] if c is not None]
    elif handle.engine == "spark":
        primaries = spark_deployments(client, handle)
    else:
        primaries = [c for c in [client.get(RAYCLUSTER, handle.name)] if c is not None]
    pods = cluster_pods(client, handle, primaries)
    for pod in pods:
        lines += pod_problems(pod)
    for obj in primaries:
        lines += replica_failures(obj)
    objects = [(str(o.get("kind") or "Deployment"), o) for o in primaries]
    if handle.engine == "spark" and not operator:
        # A pod the API refuses (quota, PodSecurity) never exists: the refusal is an event of
        # the Deployment's ReplicaSet, named "<deployment>-<template hash>" (``deployment_of``).
        # An earlier cluster of the name had ReplicaSets of the same names, whose events are
        # kept for an hour: only those since this Deployment was made count.
        made = {name_of(o): parse_rfc3339(o["metadata"].get("creationTimestamp")) for o in primaries}
        for e in cluster_events(client, "ReplicaSet", None):
            rs = str(e["involvedObject"].get("name", ""))
            owner = deployment_of(rs)
            if owner not in made:
                continue
            at, since = parse_rfc3339(e.get("lastTimestamp") or e.get("eventTime")), made[owner]
            if at is None or since is None or at >= since:
                lines.append(f"event replicaset/{rs}: Warning {e.get('reason')}: "
                             f"{e.get('message', '')}")
    for kind, obj in objects + [("Pod", p) for p in pods]:
        meta = obj["metadata"]
        name = meta["name"]
        for event in cluster_events(client, kind, name, uid=meta.get("uid")):
            count = event.get("count")
            times = f" (x{count})" if count and int(count) > 1 else ""
            lines.append(f"event {kind.lower()}/{name}: Warning {event.get('reason')}: "
                         f"{event.get('message', '')}{times}")
    if not pods:
        lines.append(f"no pods with {pod_selector(handle)} exist")
        if operator:
            lines.append(
                "the spark-operator makes the Connect server pod: if it did not, see its logs "
                "(kubectl logs -n <its namespace> deploy/spark-operator-controller); it must "
                "watch this namespace (spark.jobNamespaces), its ServiceAccount for Spark must "
                "exist here, and the pod must pass PodSecurity admission")
    return "\n".join(lines)


def replica_failures(obj: dict[str, Any]) -> list[str]:
    """A Deployment's or RayCluster's ``ReplicaFailure`` condition: its pods could not even be
    created (a ResourceQuota, PodSecurity admission, a missing ServiceAccount)."""
    kind, name = obj.get("kind", "object").lower(), obj["metadata"]["name"]
    return [f"{kind}/{name}: ReplicaFailure: {c.get('reason')}: {c.get('message', '')}"
            for c in (obj.get("status") or {}).get("conditions") or []
            if c.get("type") == "ReplicaFailure" and c.get("status") == "True"]


def pod_problems(pod: dict[str, Any]) -> list[str]:
    """``pod/x: ImagePullBackOff ...`` and ``pod/x: Unschedulable ...`` lines of one pod."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    out: list[str] = []
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            out.append(f"pod/{name}: not scheduled: {cond.get('reason')}: "
                       f"{cond.get('message', '')}")
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses")
                                                                or []):
        state = cs.get("state") or {}
        for what in ("waiting", "terminated"):
            info = state.get(what)
            if info and info.get("reason") not in (None, "ContainerCreating", "PodInitializing",
                                                   "Completed"):
                out.append(f"pod/{name}: container {cs.get('name')} {what}: {info.get('reason')}"
                           f": {info.get('message', '')}".rstrip(": "))
    return out

