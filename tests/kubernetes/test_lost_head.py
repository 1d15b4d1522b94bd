"""A Ray job watched through the API server's service proxy (Airflow outside the cluster) when
the head pod dies: the proxy then answers only kube-apiserver's ``503 no endpoints available
for service`` (a Status, which a Ready pod's Service can answer for a moment too), so the watch
asks the backend's own view of the head (``KubernetesBackend.head_view``: the RayCluster and
its head pod). A head that is gone, Failed or replaced is a lost cluster within about the
grace, one that is not Ready once that has lasted a grace; a Running and Ready head pod behind
a 503 is a blip, waited for up to the ceiling, and so is a view that fails or hangs.

Against the strict API mock: the real ``kubernetes`` client and ``requests`` (the Jobs API
reads) over HTTP; its proxy answers kube-apiserver's Status when told to (``fail``)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ephemeral.airflow.triggers import RayJobTrigger
from ephemeral.backends.base import ClusterHandle, HeadState
from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend
from ephemeral.jobs import ray_jobs
from ephemeral.jobs.ray_jobs import ClusterLost, HeadEvidence, JobWatch, ray_jobs_for
from ephemeral.jobs.results import JobStatus
from tests.kubernetes.apiserver import ApiServer, Operator
from tests.kubernetes.apiserver.store import now
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.test_backend import RAY, owner

JOB = "raysubmit_lost_head"
FAST: dict[str, Any] = {"grace": 1.0, "reads": 3, "read_timeout": 0.5, "ceiling": 5.0,
                        "not_ready": 1.0}


@pytest.fixture
def backend(kubeconfig_file: Path, operator: Operator) -> Iterator[KubernetesBackend]:
    """Airflow outside the cluster: the Jobs API through the API server's service proxy."""
    made = KubernetesBackend(KubeConfig(
        kubeconfig_path=str(kubeconfig_file), namespace=NAMESPACE, endpoint_mode="proxy",
        poll_interval=0.02, delete_timeout=3, request_timeout=5))
    try:
        yield made
    finally:
        made.client.close()


@pytest.fixture
def running(backend: KubernetesBackend, apiserver: ApiServer) -> ClusterHandle:
    """A ready Ray cluster whose job runs (the mock dashboard says RUNNING of it)."""
    handle = backend.create(RAY, identity=owner(RAY))
    assert backend.wait_ready(handle, timeout=10).ready
    apiserver.dashboards.job_status = JobStatus.RUNNING.value
    return handle


def head_pod(apiserver: ApiServer, handle: ClusterHandle) -> str:
    [pod] = apiserver.store.list("pods", NAMESPACE, labels=f"ray.io/cluster={handle.name},"
                                                           "ray.io/node-type=head")
    return str(pod["metadata"]["name"])


def no_endpoints(apiserver: ApiServer, handle: ClusterHandle) -> None:
    """From now on the proxy answers what kube-apiserver's does with no ready address behind
    the head's Service (pkg/registry/core/service/storage: ResourceLocation)."""
    apiserver.fail("get", "services/proxy", 503, times=100_000, reason="ServiceUnavailable",
                   message=f'no endpoints available for service "{handle.name}-head-svc"')


def until_lost(watch: JobWatch, limit: float = 30.0) -> tuple[float, ClusterLost]:
    started = time.monotonic()
    while True:
        try:
            watch.status()
        except ClusterLost as err:
            return time.monotonic() - started, err
        assert time.monotonic() - started < limit, "the cluster was never counted lost"
        time.sleep(0.05)


def _delete_pod(apiserver: ApiServer, name: str) -> None:
    apiserver.store.remove("pods", NAMESPACE, name)


def _fail_pod(apiserver: ApiServer, name: str) -> None:
    apiserver.store.update("pods", NAMESPACE, name, lambda p: p["status"].update(
        phase="Failed", reason="Evicted", message="The node was low on resource: memory.",
        conditions=[{"type": "Ready", "status": "False"}]))


def _replace_pod(apiserver: ApiServer, name: str) -> None:
    """KubeRay made a new head pod for the deleted one; it is not scheduled yet."""
    old = apiserver.store.get("pods", NAMESPACE, name)
    assert old is not None
    apiserver.store.remove("pods", NAMESPACE, name)
    apiserver.store.put("pods", NAMESPACE, {
        "metadata": {"name": f"{name}-x7k2p", "labels": old["metadata"]["labels"],
                     "ownerReferences": old["metadata"]["ownerReferences"]},
        "spec": old["spec"], "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}})


def _crash_container(apiserver: ApiServer, name: str) -> None:
    """restartPolicy Always: the Ray container exited and waits to be restarted."""
    def crash(pod: dict[str, Any]) -> None:
        ray = pod["spec"]["containers"][0]["name"]
        pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
        pod["status"]["containerStatuses"] = [{
            "name": ray, "ready": False, "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": now()}}}]
    apiserver.store.update("pods", NAMESPACE, name, crash)


@pytest.mark.parametrize(("kill", "shows"), [
    (_delete_pod, "it has no head pod"),
    (_fail_pod, "is Failed (Evicted: The node was low on resource: memory.)"),
    (_replace_pod, "is Pending (a replacement"),
    (_crash_container, "Ray container ray-head waiting (CrashLoopBackOff)"),
])
def test_a_dead_head_behind_the_proxy_is_a_lost_cluster_within_the_grace(
        backend: KubernetesBackend, apiserver: ApiServer, running: ClusterHandle,
        kill: Any, shows: str) -> None:
    warnings: list[str] = []
    watch = JobWatch(ray_jobs_for(running, backend), JOB, **FAST, warn=warnings.append)
    assert watch.status() is JobStatus.RUNNING
    kill(apiserver, head_pod(apiserver, running))
    no_endpoints(apiserver, running)
    seconds, err = until_lost(watch)
    assert FAST["grace"] <= seconds < FAST["grace"] + 1.5
    message = str(err)
    assert f"cluster {running.name} is lost" in message
    assert f'no endpoints available for service "{running.name}-head-svc"' in message
    assert shows in message
    assert "ceiling" not in message
    assert not [w for w in warnings if "not counted lost" in w]


def test_a_deleted_raycluster_is_a_lost_cluster(backend: KubernetesBackend,
                                               apiserver: ApiServer,
                                               running: ClusterHandle) -> None:
    watch = JobWatch(ray_jobs_for(running, backend), JOB, **FAST)
    assert watch.status() is JobStatus.RUNNING
    backend.delete(running, wait=True)  # a person's kubectl delete, or the reaper's
    seconds, err = until_lost(watch)
    assert FAST["grace"] <= seconds < FAST["grace"] + 1.5
    # The API server's 404 for the Service is a failed read, not Ray's "no such job".
    assert f'proxy answered 404 Not Found: services "{running.name}-head-svc" not found' \
        in str(err)
    assert f"its RayCluster {running.name} is gone" in str(err)


def test_a_head_not_ready_for_long_enough_is_a_lost_cluster(
        backend: KubernetesBackend, apiserver: ApiServer, running: ClusterHandle) -> None:
    """Running but not Ready (its readiness probe fails): it may pass, so it counts once the
    backend has seen it so for ``not_ready`` (a minute by default; 1 s here) on top of the
    grace of failed reads."""
    watch = JobWatch(ray_jobs_for(running, backend), JOB, **FAST)
    assert watch.status() is JobStatus.RUNNING
    apiserver.store.update("pods", NAMESPACE, head_pod(apiserver, running), lambda p: p[
        "status"].update(conditions=[{"type": "Ready", "status": "False",
                                      "reason": "ContainersNotReady"}]))
    no_endpoints(apiserver, running)
    seconds, err = until_lost(watch)
    assert 2 * FAST["grace"] <= seconds < 2 * FAST["grace"] + 1.5
    assert "is Running but not Ready (for 1s)" in str(err)
    assert "ceiling" not in str(err)


def test_a_proxy_503_before_a_running_head_is_waited_for_up_to_the_ceiling(
        backend: KubernetesBackend, apiserver: ApiServer, running: ClusterHandle) -> None:
    """The proxy says no endpoints, yet the head pod is Running and Ready (an endpoints
    update in flight, an API server's blip): no evidence, whatever the proxy says."""
    warnings: list[str] = []
    watch = JobWatch(ray_jobs_for(running, backend), JOB, **FAST, warn=warnings.append)
    assert watch.status() is JobStatus.RUNNING
    no_endpoints(apiserver, running)
    seconds, err = until_lost(watch)
    # Slack for a loaded machine (a read then takes most of a second): still well under a
    # second ceiling's worth, so a wait past the ceiling fails.
    assert FAST["ceiling"] <= seconds < FAST["ceiling"] + 2.5
    assert "ceiling" in str(err)
    assert "is Running and Ready" in str(err)
    unproven = [w for w in warnings if "not counted lost" in w]
    # At most one each grace, so one each grace when reads are quick; a loaded machine reads
    # less often (3 of 5 in one full run): said again while waiting, not once.
    assert 2 <= len(unproven) <= FAST["ceiling"] // FAST["grace"] + 1
    assert all("no endpoints available" in w for w in unproven)


def test_the_proxy_clears_and_the_job_goes_on(backend: KubernetesBackend,
                                              apiserver: ApiServer,
                                              running: ClusterHandle) -> None:
    """A blip past the grace: the backend's view says the head runs; reads come back."""
    watch = JobWatch(ray_jobs_for(running, backend), JOB, **FAST)
    assert watch.status() is JobStatus.RUNNING
    apiserver.fail("get", "services/proxy", 503, times=8, reason="ServiceUnavailable",
                   message=f'no endpoints available for service "{running.name}-head-svc"')
    statuses = []
    for _ in range(12):
        statuses.append(watch.status())
        time.sleep(0.2)
    assert set(statuses) == {JobStatus.RUNNING}
    apiserver.dashboards.job_status = JobStatus.SUCCEEDED.value
    assert watch.status() is JobStatus.SUCCEEDED


@pytest.fixture
def silent_api(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig whose API server accepts connections and never answers (a hung control
    plane, a black-holed route): every call of a backend on it hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    path = tmp_path / "silent.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "silent",
        "clusters": [{"name": "silent", "cluster": {
            "server": f"http://127.0.0.1:{listener.getsockname()[1]}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "silent", "context": {"cluster": "silent", "user": "u",
                                                    "namespace": NAMESPACE}}]}))
    try:
        yield path
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_hanging_view_is_no_evidence(backend: KubernetesBackend, apiserver: ApiServer,
                                       running: ClusterHandle, silent_api: Path) -> None:
    """The head pod is gone, but the backend's view hangs (its API server does not answer):
    each look is given up at its bound and counts as no evidence, and a hung look is never
    doubled, so the watch holds one thread for it, not one per failed read."""
    hung = KubernetesBackend(KubeConfig(kubeconfig_path=str(silent_api), namespace=NAMESPACE,
                                        endpoint_mode="proxy", request_timeout=30))
    watch = JobWatch(ray_jobs_for(running, backend), JOB, **FAST,
                     head=HeadEvidence.of(hung, running, timeout=0.5))
    assert watch.status() is JobStatus.RUNNING
    _delete_pod(apiserver, head_pod(apiserver, running))
    no_endpoints(apiserver, running)
    seconds, err = until_lost(watch)
    assert FAST["ceiling"] <= seconds < FAST["ceiling"] + 1.5
    assert "ceiling" in str(err)
    assert "its backend's view of it did not come in 0.5s" in str(err)
    looks = [t for t in threading.enumerate() if t.name == "ephemeral-head-view"]
    assert len(looks) == 1


def test_a_failing_view_is_no_evidence(backend: KubernetesBackend, apiserver: ApiServer,
                                       running: ClusterHandle) -> None:
    """The API server refuses the view's reads (a 500 on every pod list): no evidence."""
    watch = JobWatch(ray_jobs_for(running, backend), JOB, **FAST)
    assert watch.status() is JobStatus.RUNNING
    _delete_pod(apiserver, head_pod(apiserver, running))
    no_endpoints(apiserver, running)
    apiserver.fail("list", "pods", 500, times=100_000)
    seconds, err = until_lost(watch)
    assert FAST["ceiling"] <= seconds < FAST["ceiling"] + 1.5
    assert "its backend's view of it failed (BackendUnavailable" in str(err)


def test_head_view_of_a_ready_cluster_and_of_a_spark_one(backend: KubernetesBackend,
                                                         running: ClusterHandle) -> None:
    view = backend.head_view(running)
    assert view.state is HeadState.RUNNING
    assert view.reason.endswith("is Running and Ready")
    spark = running.model_copy(update={"engine": "spark"})
    assert backend.head_view(spark).state is HeadState.UNKNOWN


@pytest.fixture
def triggerer_settings(monkeypatch: pytest.MonkeyPatch, kubeconfig_file: Path) -> None:
    """What the triggerer knows: the deployment's settings (the proxy), not the test's
    backend object; and the rule at test speed."""
    for key, value in {"KUBECONFIG": str(kubeconfig_file), "K8S_NAMESPACE": NAMESPACE,
                       "K8S_ENDPOINT_MODE": "proxy"}.items():
        monkeypatch.setenv(f"EPHEMERAL_{key}", value)
    monkeypatch.setattr(ray_jobs, "LOST_GRACE", FAST["grace"])
    monkeypatch.setattr(ray_jobs, "READ_TIMEOUT", FAST["read_timeout"])


@pytest.mark.usefixtures("triggerer_settings", "ephemeral_home")
def test_the_trigger_fails_a_dead_head_behind_the_proxy_within_the_grace(
        apiserver: ApiServer, running: ClusterHandle) -> None:
    """The deferred wait: the triggerer's own backend (from the settings) gives the head's
    evidence, as ``ray_jobs_for`` attaches it; the ERROR event names it."""
    trigger = RayJobTrigger(handle=running.model_dump(mode="json"), backend="kubernetes",
                            job_id=JOB, poll_interval=0.05)

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    async def main() -> tuple[dict[str, Any], float]:
        waiting = asyncio.create_task(first())
        read = f"/proxy/api/jobs/{JOB}"
        deadline = time.monotonic() + 20  # its first import of Ray's SDK takes seconds
        while not any(read in path for _, path, *_ in apiserver.calls):  # it read RUNNING
            assert time.monotonic() < deadline, "the job was not read"
            assert not waiting.done(), waiting.result()
            await asyncio.sleep(0.05)
        _delete_pod(apiserver, head_pod(apiserver, running))
        no_endpoints(apiserver, running)
        started = time.monotonic()
        event = await asyncio.wait_for(waiting, timeout=30)
        return event, time.monotonic() - started

    event, seconds = asyncio.run(main())
    assert event["status"] == "ERROR"
    assert f"cluster {running.name} is lost" in event["message"]
    assert "it has no head pod" in event["message"]
    assert FAST["grace"] <= seconds < FAST["grace"] + 2.0
