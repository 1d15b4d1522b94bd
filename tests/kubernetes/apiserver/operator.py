"""The controllers a real cluster runs, played as the test decides: KubeRay (a RayCluster
becomes ready, or stays stuck pulling its image, or unschedulable, or is refused as invalid; with
``authOptions.mode: token`` it first makes the token Secret, named after the cluster and owned by
it, as KubeRay 1.7's reconcileAuthSecret does), the Kubeflow spark-operator's SparkConnect
controller (2.5's ``internal/controller/sparkconnect``: the ConfigMap, the server pod and the
Service ``<name>-server``, all owned by the SparkConnect, then ``status.state`` Ready with the
``ServerPodReady`` condition; the executors the server would create are played too),
the Deployment controller (a ReplicaSet, its pods, availableReplicas) and the garbage collector (foreground
deletion waits for dependents; pods take ``pod_grace`` seconds to terminate)."""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import secrets
import threading
import time
from typing import Any

from tests.kubernetes.apiserver.store import BY_KIND, FOREGROUND, RESOURCES, Store, now


class ConnectScenario(enum.StrEnum):
    READY = "ready"
    IMAGE_PULL = "image-pull-backoff"  # the server pod never gets ready: state NotReady
    NO_POD = "no-server-pod"  # the operator cannot make the pod (e.g. PodSecurity): no status
    FAILED = "failed"


CONNECT_LABEL = "sparkoperator.k8s.io/connect-name"


class RayScenario(enum.StrEnum):
    READY = "ready"
    IMAGE_PULL = "image-pull-backoff"
    UNSCHEDULABLE = "unschedulable"
    INVALID = "invalid-spec"
    STUCK_FINALIZER = "stuck-finalizer"  # ready, but a finalizer nobody removes


STUCK = "ray.io/gcs-ft-redis-cleanup-finalizer"


class Operator:
    def __init__(self, store: Store, *, tick: float = 0.01) -> None:
        self.store = store
        self.tick = tick
        self.ray_scenario = RayScenario.READY
        self.scenarios: dict[str, RayScenario] = {}
        self.provision_delay = 0.05
        self.paused = False
        """While True the controllers do nothing (a test that must see a wait watch holds them
        until the wait has started)."""
        self.pod_grace = 0.05
        self.deployments_ready = True
        self.connect_scenario = ConnectScenario.READY
        self.connect_executors = 0
        """Executor pods each ready SparkConnect's server makes (owned by the server pod)."""
        self.slow_collection: set[tuple[str, str]] = set()
        """(owner kind, plural) pairs: objects the collector does not delete when such an owner
        goes, as a client listing them sees a real collector that has not come round to them."""
        self._seen: set[str] = set()
        self._first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="k8s-operator-mock")

    def start(self) -> Operator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self.reconcile()

    def reconcile(self) -> None:
        if self.paused:
            return
        with self.store.lock:
            for obj in self.store.list("rayclusters"):
                self._ray(obj)
            for obj in self.store.list("deployments"):
                self._deployment(obj)
            for obj in self.store.list("sparkconnects"):
                self._spark_connect(obj)
            self._collect_garbage()

    # -- KubeRay -------------------------------------------------------------------------------

    def _ray(self, rc: dict[str, Any]) -> None:
        meta = rc["metadata"]
        if meta.get("deletionTimestamp") or meta["uid"] in self._seen:
            return
        first = self._first_seen.setdefault(meta["uid"], time.monotonic())
        if time.monotonic() - first < self.provision_delay:
            return
        self._seen.add(meta["uid"])
        ns, name = meta["namespace"], meta["name"]
        scenario = self.scenarios.get(name, self.ray_scenario)
        if scenario is RayScenario.INVALID or "headGroupSpec" not in rc.get("spec", {}):
            self.event(rc, "InvalidRayClusterSpec", "headGroupSpec should have at least one "
                       "container")
            return
        spec = rc["spec"]
        auth = spec.get("authOptions") or {}
        if auth.get("mode") == "token" and not auth.get("secretName") and \
                self.store.get("secrets", ns, name) is None:
            token = base64.b64encode(secrets.token_bytes(32)).decode()
            self.store.put("secrets", ns, {
                "metadata": {"name": name, "labels": {"ray.io/cluster": name},
                             "ownerReferences": [_owner(rc)]},
                "type": "Opaque",
                "data": {"auth_token": base64.b64encode(token.encode()).decode()}})
        pods = [("head", "headgroup", spec["headGroupSpec"]["template"])]
        for group in spec.get("workerGroupSpecs", []):
            for i in range(int(group.get("replicas", 0)) * int(group.get("numOfHosts", 1))):
                pods.append((f"{group['groupName']}-worker-{i}", group["groupName"],
                             group["template"]))
        for suffix, group, template in pods:
            labels = dict(template.get("metadata", {}).get("labels", {})) | {
                "ray.io/cluster": name, "ray.io/group": group,
                "ray.io/node-type": "head" if suffix == "head" else "worker",
                "app.kubernetes.io/created-by": "kuberay-operator"}
            pod = self._pod(rc, f"{name}-{suffix}", labels, template, scenario)
            if scenario is RayScenario.IMAGE_PULL:
                image = template["spec"]["containers"][0]["image"]
                self.event(pod, "Failed", f'Failed to pull image "{image}": rpc error: '
                           "code = NotFound desc = manifest unknown")
                self.event(pod, "BackOff", f'Back-off pulling image "{image}"')
            if scenario is RayScenario.UNSCHEDULABLE:
                self.event(pod, "FailedScheduling", "0/3 nodes are available: 3 Insufficient "
                           "nvidia.com/gpu. preemption: 0/3 nodes are available")
        self.store.put("services", ns, {"metadata": {
            "name": f"{name}-head-svc", "labels": {"ray.io/cluster": name},
            "ownerReferences": [_owner(rc)]}, "spec": {"clusterIP": "None", "ports": [
                {"name": "gcs-server", "port": 6379}, {"name": "dashboard", "port": 8265},
                {"name": "client", "port": 10001}]}})
        if scenario in (RayScenario.READY, RayScenario.STUCK_FINALIZER):
            workers = len(pods) - 1

            def ready(obj: dict[str, Any]) -> None:
                if scenario is RayScenario.STUCK_FINALIZER:
                    obj["metadata"].setdefault("finalizers", []).append(STUCK)
                obj["status"] = {
                    "state": "ready", "readyWorkerReplicas": workers,
                    "availableWorkerReplicas": workers, "desiredWorkerReplicas": workers,
                    "endpoints": {"dashboard": "8265", "client": "10001", "gcs-server": "6379"},
                    "conditions": [
                        {"type": "HeadPodReady", "status": "True",
                         "reason": "HeadPodRunningAndReady"},
                        {"type": "RayClusterProvisioned", "status": "True",
                         "reason": "AllPodRunningAndReadyFirstTime"}]}
            self.store.update("rayclusters", ns, name, ready)
        else:
            self.store.update("rayclusters", ns, name, lambda o: o.update(status={
                "conditions": [{"type": "HeadPodReady", "status": "False",
                                "reason": "ContainersNotReady"},
                               {"type": "RayClusterProvisioned", "status": "False",
                                "reason": "RayClusterPodsProvisioning"}]}))

    def _pod(self, owner: dict[str, Any], name: str, labels: dict[str, str],
             template: dict[str, Any], scenario: RayScenario) -> dict[str, Any]:
        containers = template["spec"]["containers"]
        if scenario is RayScenario.IMAGE_PULL:
            status = {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
                "containerStatuses": [{"name": c["name"], "ready": False, "state": {"waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{c["image"]}"'}}} for c in containers]}
        elif scenario is RayScenario.UNSCHEDULABLE:
            status = {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. "
                           "preemption: 0/3 nodes are available"}]}
        else:
            status = {"phase": "Running", "podIP": "10.0.0.1", "conditions": [
                {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": c["name"], "ready": True,
                                       "state": {"running": {"startedAt": now()}}}
                                      for c in containers]}
        return self.store.put("pods", owner["metadata"]["namespace"], {
            "metadata": {"name": name, "labels": labels, "ownerReferences": [_owner(owner)]},
            "spec": template["spec"], "status": status})

    def event(self, obj: dict[str, Any], reason: str, message: str) -> None:
        meta = obj["metadata"]
        self.store.put("events", meta["namespace"], {
            "metadata": {"name": f"{meta['name']}.{meta['uid'][:8]}{reason.lower()}"},
            "type": "Warning", "reason": reason, "message": message, "count": 3,
            "lastTimestamp": now(),
            "involvedObject": {"kind": obj["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"],
                               "apiVersion": obj["apiVersion"]}})

    # -- the spark-operator's SparkConnect controller -----------------------------------------

    def _spark_connect(self, conn: dict[str, Any]) -> None:
        meta = conn["metadata"]
        if meta.get("deletionTimestamp") or meta["uid"] in self._seen:
            return
        first = self._first_seen.setdefault(meta["uid"], time.monotonic())
        if time.monotonic() - first < self.provision_delay:
            return
        self._seen.add(meta["uid"])
        ns, name, spec = meta["namespace"], meta["name"], conn["spec"]
        common = {"sparkoperator.k8s.io/created-by-spark-operator": "true", CONNECT_LABEL: name}
        self.store.put("configmaps", ns, {
            "metadata": {"name": f"{name}-conf", "labels": common,
                         "ownerReferences": [_owner(conn)]},
            "data": {"executor-pod-template.yaml": "{}"}})
        scenario = self.connect_scenario
        if scenario is ConnectScenario.NO_POD:
            return  # the reconcile fails before any status is written
        template = spec["server"].get("template") or {}
        pod_spec = dict(template.get("spec") or {})
        containers = [dict(c) for c in pod_spec.get("containers") or [{"name": "driver"}]]
        for c in containers:
            c.setdefault("image", spec.get("image"))
        pod_spec["containers"] = containers
        selector = {"sparkoperator.k8s.io/launched-by-spark-operator": "true",
                    CONNECT_LABEL: name, "spark-role": "connect-server",
                    "spark-version": spec["sparkVersion"]}
        labels = dict((template.get("metadata") or {}).get("labels") or {}) | selector
        pod = self._pod(conn, f"{name}-server", labels, {"spec": pod_spec},
                        RayScenario.IMAGE_PULL if scenario is ConnectScenario.IMAGE_PULL
                        else RayScenario.READY)
        self.store.put("services", ns, {
            "metadata": {"name": f"{name}-server", "labels": common,
                         "ownerReferences": [_owner(conn)]},
            "spec": {"selector": selector, "ports": [
                {"name": "driver-rpc", "port": 7078}, {"name": "blockmanager", "port": 7079},
                {"name": "web-ui", "port": 4040}, {"name": "spark-connect-server",
                                                   "port": 15002}]}})
        ready = scenario is ConnectScenario.READY
        if ready:
            executor = spec["executor"].get("template") or {}
            for i in range(self.connect_executors):
                # Spark labels its executors with spark.kubernetes.executor.label.*: the
                # operator passes the SparkConnect's own labels that way.
                ex_labels = dict(meta.get("labels") or {}) | dict(
                    (executor.get("metadata") or {}).get("labels") or {}) | {
                    CONNECT_LABEL: name, "spark-role": "executor"}
                self._pod(pod, f"{name}-exec-{i + 1}", ex_labels,
                          {"spec": executor.get("spec") or {"containers": [{"name": "x"}]}},
                          RayScenario.READY)
        condition = {"type": "ServerPodReady", "status": "True" if ready else "False",
                     "reason": "ServerPodReady" if ready else "ServerPodNotReady",
                     "message": "Server pod is ready" if ready else
                     "Server pod is not ready: containers with unready status",
                     "lastTransitionTime": now()}
        state = {ConnectScenario.READY: "Ready", ConnectScenario.FAILED: "Failed"}.get(
            scenario, "NotReady")
        self.store.update("sparkconnects", ns, name, lambda o: o.update(status={
            "state": state, "conditions": [condition], "startTime": now(),
            "lastUpdateTime": now(),
            "server": {"podName": pod["metadata"]["name"], "podIp": "10.0.0.1",
                       "serviceName": f"{name}-server"},
            "executors": {"running": self.connect_executors} if ready else {}}))

    # -- the Deployment controller -------------------------------------------------------------

    def _deployment(self, dep: dict[str, Any]) -> None:
        meta = dep["metadata"]
        if meta.get("deletionTimestamp") or meta["uid"] in self._seen:
            return
        if not self.deployments_ready:
            return
        self._seen.add(meta["uid"])
        replicas = int(dep["spec"].get("replicas", 1))
        template = dep["spec"]["template"]
        # As the real controller: a ReplicaSet "<deployment>-<pod-template-hash>" owned by the
        # Deployment, and pods "<replicaset>-<5 random>" owned by the ReplicaSet.
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
        labels = dict(template.get("metadata", {}).get("labels", {})) | {
            "pod-template-hash": digest[:10]}
        rs = self.store.put("replicasets", meta["namespace"], {
            "metadata": {"name": f"{meta['name']}-{digest[:10]}", "labels": labels,
                         "ownerReferences": [_owner(dep)]},
            "spec": {"replicas": replicas, "selector": dep["spec"].get("selector", {}),
                     "template": template}})
        for i in range(replicas):
            self._pod(rs, f"{rs['metadata']['name']}-{meta['uid'][:4]}{i}", labels, template,
                      RayScenario.READY)
        self.store.update("deployments", meta["namespace"], meta["name"],
                          lambda o: o.update(status={
                              "observedGeneration": 1, "replicas": replicas,
                              "readyReplicas": replicas, "availableReplicas": replicas,
                              "conditions": [{"type": "Available", "status": "True"}]}))

    # -- the garbage collector -----------------------------------------------------------------

    def _collect_garbage(self) -> None:
        objects = self.store.all()
        alive_uids = {o["metadata"]["uid"] for _, o in objects}
        deleting = {o["metadata"]["uid"] for _, o in objects
                    if o["metadata"].get("deletionTimestamp")}
        for plural, obj in objects:
            meta = obj["metadata"]
            ns, name = meta["namespace"], meta["name"]
            owners = {r["uid"] for r in meta.get("ownerReferences", [])}
            slow = any((r["kind"], plural) in self.slow_collection
                       for r in meta.get("ownerReferences", []))
            if owners and (owners & deleting or not owners & alive_uids) and \
                    not meta.get("deletionTimestamp") and not slow:
                self.store.mark_deleted(plural, ns, name, foreground=False)
                continue
            if not meta.get("deletionTimestamp"):
                continue
            if plural == "pods":
                # Timestamps have whole seconds: time the grace period from when it was seen.
                since = self._first_seen.setdefault("deleted:" + meta["uid"], time.monotonic())
                if time.monotonic() - since >= self.pod_grace:
                    self.store.remove(plural, ns, name)
                continue
            dependents = [o for _, o in objects
                          if meta["uid"] in {r["uid"] for r in
                                             o["metadata"].get("ownerReferences", [])}]
            if FOREGROUND in meta.get("finalizers", []) and not dependents:
                self.store.update(plural, ns, name, lambda o: o["metadata"].update(
                    finalizers=[f for f in o["metadata"]["finalizers"] if f != FOREGROUND]))
            current = self.store.get(plural, ns, name)
            if current is not None and not current["metadata"].get("finalizers"):
                self.store.remove(plural, ns, name)


def _owner(obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}



__all__ = ["BY_KIND", "RESOURCES", "ConnectScenario", "Operator", "RayScenario"]
