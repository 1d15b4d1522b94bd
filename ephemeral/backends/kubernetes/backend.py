"""Clusters as Kubernetes objects: a KubeRay RayCluster, Spark standalone Deployments, or a
spark-operator SparkConnect (Spark's ``operator`` mode, per spec or ``EPHEMERAL_K8S_SPARK_MODE``).

Identity is the object name: create is a POST that either makes the cluster or meets the
existing one (409), which is adopted when its ``ephemeral.dev/spec-hash`` label matches; a
create whose primary's POST got no answer deletes what it may have stored. Every object carries
the owner labels, so list_owned works from labels and delete from the name, after any crash,
without XCom.

Every cluster also gets NetworkPolicies (only its own pods and the configured clients reach its
API ports), and a RayCluster token authentication: ``access`` gives the URLs and headers that
reach its HTTP APIs from this process (``access.ClusterAccess``: Service DNS, an ingress, or
the API server's service proxy when Airflow runs outside the cluster).

``delete(wait=True)`` and ``wait_ready`` watch instead of polling where they can (a Role without
the ``watch`` verb, or a server without it, makes them poll as before).

list_owned finds clusters by their primary object only (the RayCluster, the SparkConnect, the
Spark master Deployment). Every other object a create makes is therefore owned by the primary (an
``ownerReference`` to its uid): whenever the primary goes (a delete interrupted after its first
call, a failed create whose clean-up could not finish, a ``kubectl delete``) the garbage
collector removes the rest, so nothing is left that no listing would find.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from ephemeral.airflow.context import KEEP_LABEL
from ephemeral.backends.base import (
    Access,
    ClusterBackend,
    ClusterHandle,
    ClusterStatus,
    Deleting,
    Deletion,
    Endpoints,
    HeadView,
    OwnerSelector,
    Phase,
    check_adoptable,
    make_handle,
    newer_life,
    require_instance,
    same_life,
)
from ephemeral.backends.kubernetes import probe as probes
from ephemeral.backends.kubernetes.access import ClusterAccess
from ephemeral.backends.kubernetes.client import (
    DEPLOYMENT,
    NETWORKPOLICY,
    POD,
    RAYCLUSTER,
    SERVICE,
    SPARKCONNECT,
    AlreadyExists,
    Forbidden,
    Kind,
    KubeClient,
    OperatorMissing,
    Replaced,
    WatchUnsupported,
    kind_of,
    name_of,
    refused,
)
from ephemeral.backends.kubernetes.config import (
    CLIENT_INSTANCE_LABEL,
    KubeConfig,
    admits_every_instance,
)
from ephemeral.backends.kubernetes.ownership import Owned
from ephemeral.backends.kubernetes.render import (
    COMPONENT_LABEL,
    HANDLE_ANNOTATION,
    Clients,
    Rendered,
    render,
    service_endpoints,
    spark_mode,
)
from ephemeral.backends.kubernetes.render.spark import master_service
from ephemeral.backends.kubernetes.render.spark_operator import is_operator
from ephemeral.errors import (
    BackendUnavailable,
    ClusterFailed,
    EphemeralError,
    IdentityConflict,
    ListingIncomplete,
    ReadinessTimeout,
    TeardownIncomplete,
)
from ephemeral.specs.identity import INSTANCE_LABEL, PREFIX, ClusterIdentity, label_value
from ephemeral.specs.resolve import ResolvedSpec

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# What a cluster's primary can be (the Spark master is a Deployment); a delete reads it by
# name and deletes it first, so nothing recreates what is being removed.
PRIMARY_KINDS: tuple[Kind, ...] = (RAYCLUSTER, SPARKCONNECT, DEPLOYMENT)
PARTS: tuple[Kind, ...] = (DEPLOYMENT, SERVICE, NETWORKPOLICY)
"""The kinds of the other objects a create makes, each owned by the primary."""
INNER_OWNERS: dict[Kind, Kind] = {DEPLOYMENT: DEPLOYMENT, SPARKCONNECT: POD}
"""By a primary's kind, the kind of the cluster's objects that own pods in its stead, read
before the primary's DELETE (``_learn_inner_owners``): the collector may remove them before
their pods, which then name only an owner the wait never saw. The Spark master waits for no
other Deployment (no blockOwnerDeletion), and their pods' ReplicaSets name the cluster's only
through their Deployment's name (``ownership``). The SparkConnect's foreground deletion waits
for its server pod (the operator's blockOwnerDeletion) but not for the executors that pod owns
(Spark sets none), so the server is always gone before the wait lists pods, and the executors,
which may hold GPUs, still run. A RayCluster owns its pods itself."""
SPEC_HASH = PREFIX + "spec-hash"
# What a primary's labels and its handle annotation must agree on (``_record_of``).
IDENTITY_LABELS = tuple(PREFIX + k for k in ("cluster", "instance", "dag-id", "run-id",
                                             "task-id", "map-index", "backend", "spec-hash"))
FULL_IDS = tuple(PREFIX + k for k in ("dag-id", "run-id", "task-id"))
SPARK_MASTER = "spark-master"
RESYNC_POLLS, RESYNC_MIN = 5, 1.0
"""wait_ready re-probes at least every RESYNC_POLLS poll intervals (and at most every RESYNC_MIN
seconds) while it watches: KubeRay's InvalidRayClusterSpec is an Event, and changes no watched
object."""


UNDO_TRIES, UNDO_BACKOFF = 4, 0.5
"""A failed create's clean-up tries an unanswered request this often, waiting 0.5, 1, 2 s
between: the API server that lost the create's answer is often back within seconds."""


def _retrying(call: Callable[[], _T]) -> _T:
    """``call()``, tried again (``UNDO_TRIES``) while the API server does not answer."""
    for attempt in range(UNDO_TRIES):
        try:
            return call()
        except BackendUnavailable as exc:
            if attempt == UNDO_TRIES - 1 or isinstance(exc, OperatorMissing):
                raise
            time.sleep(UNDO_BACKOFF * 2 ** attempt)
    raise AssertionError("unreachable")


def _cannot_watch(exc: Exception) -> bool:
    """A 403 on watch itself, or a 405: the caller polls instead (any other error is real)."""
    return isinstance(exc, WatchUnsupported) or (isinstance(exc, Forbidden)
                                                 and exc.verb == "watch")


class KubernetesBackend(ClusterBackend):
    """``KubernetesBackend(KubeConfig.from_env())``; the client is made at first use."""

    name = "kubernetes"
    shared_home = True  # every Airflow container's home is /opt/airflow

    def __init__(self, config: KubeConfig | None = None, *,
                 client: KubeClient | None = None) -> None:
        self.config = config or KubeConfig.from_env()
        self.client = client or KubeClient(self.config)

    # -- create --------------------------------------------------------------------------------

    def create(self, spec: ResolvedSpec, *, identity: ClusterIdentity) -> ClusterHandle:
        require_instance(self, identity.instance, "creating a cluster", by_connection=True)
        base = make_handle(spec, identity, backend=self.name, endpoints=Endpoints(),
                           namespace=self.config.namespace,
                           default_spark_mode=self.config.spark_mode)
        if admits_every_instance(selector := self.config.client_selector):
            log.warning("EPHEMERAL_K8S_CLIENT_SELECTOR %s admits the client pods of every "
                        "deployment in namespace %s to %s: add %s=%s to it (and to this "
                        "deployment's Airflow pods), or unset it for that default",
                        ",".join(f"{k}={v}" for k, v in selector.items()), self.config.namespace,
                        base.name, CLIENT_INSTANCE_LABEL, identity.instance)
        rendered = self.manifests(spec, base)
        if spec.engine == "spark":
            self._refuse_other_mode(spec, base.name, kind_of(rendered.primary))
        handle = self._view(base.model_copy(update={"endpoints": rendered.endpoints}))
        created: list[dict[str, Any]] = []
        owner: dict[str, Any] | None = None
        try:
            for obj in rendered.objects:
                body = obj if owner is None else owned_by(obj, owner)
                try:
                    made = self.client.create(body)
                except AlreadyExists:
                    if obj is rendered.primary:
                        return self._adopt(spec, rendered.primary, identity)
                    assert owner is not None
                    # A concurrent create (a retry while this one still runs) adopted our
                    # primary and made this part: it is ours, and must not be undone.
                    self._require_part_of(obj, owner, identity.name)
                    continue
                except BaseException as exc:
                    if obj is rendered.primary and not refused(exc):
                        # Stored and unanswered (or interrupted): the undo must see it too.
                        created += self._stored_primary(rendered.primary)
                    raise
                created.append(made)
                if obj is rendered.primary:
                    owner = made
        except BaseException:
            self._undo(created)
            raise
        return handle

    def _adopt(self, spec: ResolvedSpec, primary: dict[str, Any],
               identity: ClusterIdentity) -> ClusterHandle:
        """The cluster exists: the same spec is adopted (missing parts are made), another is
        refused."""
        kind, name = kind_of(primary), name_of(primary)
        existing = self.client.get(kind, name)
        if existing is None or existing["metadata"].get("deletionTimestamp"):
            raise BackendUnavailable(f"cluster {name!r} is being deleted; retry once it is gone")
        theirs = existing["metadata"].get("labels", {}).get(SPEC_HASH)
        if theirs != spec.hash:
            raise IdentityConflict(f"cluster {name!r} exists with spec hash {theirs}, not "
                                   f"{spec.hash}: delete it first or use another identity")
        stored = self._handle_of(existing)
        if stored is None:
            raise IdentityConflict(f"{kind.kind} {name!r} exists but was not made by ephemeral "
                                   f"(no {HANDLE_ANNOTATION} annotation)")
        check_adoptable(stored, spec.ref, spec.hash, identity)
        # A crash part-way through an earlier create may have left secondary objects missing.
        again = self.manifests(spec, stored)
        for obj in again.objects:
            if obj is not again.primary:
                try:
                    self.client.create(owned_by(obj, existing))
                except AlreadyExists:  # made before, or someone else's under its name
                    self._require_part_of(obj, existing, identity.name)
        return self._view(stored).model_copy(update={"adopted": True})

    def manifests(self, spec: ResolvedSpec, handle: ClusterHandle, *,
                  cluster_domain: str | None = None) -> Rendered:
        """The objects this deployment's settings make of ``spec`` for ``handle`` (`up` and
        `ephemeral render` alike; the latter may name another ``cluster_domain``)."""
        selector = self.config.client_selector
        clients = Clients(selector=dict(selector) if selector is not None else None,
                          cidrs=tuple(self.config.client_cidrs))
        return render(spec, handle, cluster_domain=cluster_domain or self.config.cluster_domain,
                      clients=clients,
                      default_spark_mode=self.config.spark_mode,
                      spark_service_account=self.config.spark_service_account)

    def _refuse_other_mode(self, spec: ResolvedSpec, name: str, primary: Kind) -> None:
        """A Spark cluster ``name`` made in the other mode (the deployment's default changed in
        between) is another cluster: never made beside it, never adopted."""
        operator = primary is SPARKCONNECT
        kind, other = (DEPLOYMENT, master_service(name)) if operator else (SPARKCONNECT, name)
        try:
            found = self.client.get(kind, other)
        except (OperatorMissing, Forbidden):  # no spark-operator (or no right to it): none made
            return
        if found is not None:
            mode = spark_mode(spec, self.config.spark_mode)
            raise IdentityConflict(
                f"cluster {name!r} exists as {kind.kind} {other!r} (the other Spark mode); this "
                f"create asks for {mode} mode: delete it first or use another identity")

    def _require_part_of(self, obj: dict[str, Any], owner: dict[str, Any], cluster: str) -> None:
        """The existing object named like ``obj`` belongs to the cluster's primary ``owner``,
        or this raises naming it: being deleted, or left by an earlier life of the cluster
        (the collector removes it: BackendUnavailable, retryable); anyone else's object under
        the name (IdentityConflict) is never taken for a part of this cluster."""
        what = f"{kind_of(obj).kind} {name_of(obj)!r}"
        existing = self.client.get(kind_of(obj), name_of(obj))
        if existing is None or existing["metadata"].get("deletionTimestamp"):
            raise BackendUnavailable(f"{what} of cluster {cluster!r} is being deleted; retry "
                                     "once it is gone")
        refs = existing["metadata"].get("ownerReferences") or []
        if owner["metadata"]["uid"] in {r.get("uid") for r in refs}:
            return
        if any((r.get("kind"), r.get("name")) == (owner["kind"], name_of(owner)) for r in refs):
            raise BackendUnavailable(f"{what} is left over from an earlier cluster {cluster!r} "
                                     "(being collected); retry once it is gone")
        raise IdentityConflict(
            f"{what} exists and is not cluster {cluster!r}'s (it names no owner of this "
            f"cluster): someone else's object has the name this cluster needs. Delete or "
            "rename it, or use another cluster name")

    def _stored_primary(self, primary: dict[str, Any]) -> list[dict[str, Any]]:
        """The primary a create's POST may have stored although no answer came (an etcd
        timeout, a load balancer's 504, a lost connection, an interrupt): read by name, it is
        this create's only when it carries this very attempt's record (identity and creation
        time), so an object of another create or life under the name is never undone."""
        what = f"{kind_of(primary).kind} {name_of(primary)!r}"
        mine = primary["metadata"]["annotations"][HANDLE_ANNOTATION]
        try:
            found = _retrying(lambda: self.client.get(kind_of(primary), name_of(primary)))
        except EphemeralError as exc:
            log.warning("could not tell whether a failed create stored %s (the reaper deletes it "
                        "at its TTL if it did): %s", what, exc)
            return []
        if found is None or (found["metadata"].get("annotations") or {}).get(
                HANDLE_ANNOTATION) != mine:
            return []
        log.warning("the failed create had stored %s: deleting it", what)
        return [found]

    def _undo(self, created: list[dict[str, Any]]) -> None:
        """Delete the objects a failed create made, each by its uid: one made again under its
        name since (another create, after a deletion of ours) is not this create's. A create
        is all or nothing, so a delete the API server does not answer is tried again."""
        for obj in reversed(created):
            try:
                _retrying(functools.partial(self.client.delete, kind_of(obj), name_of(obj),
                                            uid=obj["metadata"]["uid"]))
            except Replaced as exc:
                log.warning("left %s alone after a failed create: %s", name_of(obj), exc)
            except EphemeralError as exc:  # the original failure matters more
                log.warning("could not delete %s %s after a failed create: %s",
                            kind_of(obj).kind, name_of(obj), exc)

    # -- readiness -----------------------------------------------------------------------------

    def probe(self, handle: ClusterHandle) -> ClusterStatus:
        client = self._client(handle)
        return probes.probe(client, handle, http=self._http(client, handle))

    def diagnose(self, handle: ClusterHandle) -> str:
        return probes.diagnose(self._client(handle), self._view(handle))

    def head_view(self, handle: ClusterHandle) -> HeadView:
        """The RayCluster and its head pod as the API server has them (``probe.head_view``);
        never the proxy's answer, which can say "no endpoints" of a Ready pod."""
        return probes.head_view(self._client(handle), handle)

    def wait_ready(self, handle: ClusterHandle, *, timeout: float) -> ClusterStatus:
        client = self._client(handle)
        handle = self._view(handle)
        http = self._http(client, handle)
        if timeout <= 0:  # one probe: Airflow's trigger loops over it
            return probes.probe(client, handle, http=http)
        deadline = time.monotonic() + timeout
        try:
            status = self._await_api_ready(client, handle, http, deadline)
            if status is not None and status.ready:
                return status
        except (Forbidden, WatchUnsupported) as exc:
            if not _cannot_watch(exc):
                raise
            log.info("cannot watch cluster %s (%s); polling instead", handle.name, exc)
        # The HTTP endpoints (and a timeout's diagnosis) are polled.
        while True:
            status = probes.probe(client, handle, http=http)
            if status.phase is Phase.READY or timeout <= 0:
                return status
            if status.phase in (Phase.GONE, Phase.DELETING):
                raise ClusterFailed(f"cluster {handle.name!r}: {status.message}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReadinessTimeout(
                    f"cluster {handle.name!r} not ready after {round(timeout, 1):.10g}s "
                    f"({status.nodes_ready}/{status.nodes_expected} nodes ready; "
                    f"{status.message})", probes.diagnose(client, handle))
            time.sleep(min(self.config.poll_interval, left))

    def _await_api_ready(self, client: KubeClient, handle: ClusterHandle,
                         http: ClusterAccess | None, deadline: float) -> ClusterStatus | None:
        """Probe whenever the primary objects change, until the API side is ready (or the
        cluster is gone, or the deadline): the status changes come without polling. The probe
        follows the watch's list, so no change between the two is missed."""
        kind, labels, name = ((RAYCLUSTER, None, handle.name) if handle.engine == "ray" else
                              (SPARKCONNECT, None, handle.name) if is_operator(handle) else
                              (DEPLOYMENT, f"{PREFIX}cluster={handle.name}", None))
        resync = max(RESYNC_POLLS * self.config.poll_interval, RESYNC_MIN)
        status: ClusterStatus | None = None
        while (left := deadline - time.monotonic()) > 0:
            synced = False
            for type_, _ in client.watch(kind, labels=labels, name=name,
                                         timeout=min(left, resync)):
                synced = synced or type_ == "BOOKMARK"
                if synced:  # the initial ADDED events are the state the first probe reads
                    status = probes.probe(client, handle, http=http)
                    if not probes.waits_on_api(status):
                        return status
        return status

    # -- endpoints -----------------------------------------------------------------------------

    def endpoints(self, handle: ClusterHandle) -> Endpoints:
        if handle.endpoints == Endpoints():
            handle = handle.model_copy(update={"endpoints": service_endpoints(
                handle.model_copy(update={"namespace": handle.namespace
                                          or self.config.namespace}),
                handle.engine, cluster_domain=self.config.cluster_domain)})
        return self._view(handle).endpoints

    def _view(self, handle: ClusterHandle) -> ClusterHandle:
        """The handle with its HTTP endpoints as a person's browser reaches them from here
        (the extra links): Service DNS, the ingress, or the API server's proxy. No
        credentials: ``access`` adds those, for this process only."""
        http = ClusterAccess(self.config, self._client(handle), handle)
        if http.mode == "dns":
            return handle
        return handle.model_copy(update={"endpoints": http.links(handle.endpoints)})

    def _http(self, client: KubeClient, handle: ClusterHandle) -> ClusterAccess | None:
        """How the probe reaches the cluster's HTTP endpoint (None: ``http_check`` is off)."""
        return ClusterAccess(self.config, client, handle) if self.config.http_check else None

    def access(self, handle: ClusterHandle) -> Access:
        """The URLs of the cluster's HTTP APIs as this process reaches them, and the headers
        that authenticate: Ray's token (read now from the cluster's Secret) and, through the
        API server's proxy, this process's Kubernetes bearer token. Never stored anywhere."""
        return ClusterAccess(self.config, self._client(handle), handle).access()

    def tls_verify(self, handle: ClusterHandle) -> bool | str:
        """The TLS trust ``access(handle)`` carries as ``verify``: the API server's CA file in
        proxy mode, else True."""
        return ClusterAccess(self.config, self._client(handle), handle).verify()

    # -- delete --------------------------------------------------------------------------------

    def delete(self, target: ClusterHandle | ClusterIdentity | str, *, wait: bool = True) -> bool:
        """By a bare name, this deployment's cluster only; by an identity or a handle, the one
        of its own instance (``OwnerSelector.of_target``: the selector ``get`` and ``down``'s
        guard use too). A handle looked up with ``all_instances`` is how another deployment's
        cluster is deleted on purpose (``down --all-instances``, the reaper). A handle names
        one life of its cluster: a primary that is another (``same_life``) is left alone and
        the result is False. Every DELETE carries the uid of the object as it was verified
        (a precondition), so one made again under its name in between is never hit. With
        ``wait``, waits ``delete_timeout`` for it to go.

        The primary is read by its name (``_primary_names``), never found by its labels: one
        relabelled by hand would otherwise be missed and reported deleted while it runs. One
        there that its record does not verify (``_record_of``) is not deleted, and the
        deletion fails naming it (TeardownIncomplete), as does a Role that cannot read a kind
        the cluster may be. Deleted means its name answers 404 (or holds a verified newer
        life)."""
        deletion = self.start_delete(target)
        if deletion is None:
            return False
        if wait:
            deletion.wait(time.monotonic() + self.config.delete_timeout)
        return True

    def start_delete(self, target: ClusterHandle | ClusterIdentity | str) -> Deletion | None:
        scope = OwnerSelector.of_target(target)
        name = self.target_name(target)
        life = target if isinstance(target, ClusterHandle) else None
        client = self._client(life)
        ours = _Ours(life=life)
        for kind, obj in self._owned_objects(client, scope, ours, _primary_names(target)):
            if obj["metadata"].get("deletionTimestamp"):
                continue
            try:  # this very object, as read with the life it was verified for
                client.delete(kind, name_of(obj), uid=obj["metadata"]["uid"])
            except Replaced as exc:  # made again since it was read: another life's
                log.warning("left %s alone: %s", name, exc)
                if f"{kind.kind}/{name_of(obj)}" in ours.primaries:
                    ours.newer = f"{kind.kind}/{name_of(obj)}"
                    break
        if ours.newer:
            return None
        _raise_refused(name, ours)  # its DELETEs are issued; what it left alone fails it now
        # The objects found now are kept for the wait: a collected owner's dependents (its
        # pods) still name it, and only ``ours`` knows its uid then.
        return Deletion(name, lambda deadline: self._await_deleted(client, scope, ours, name,
                                                                   deadline))

    def _await_deleted(self, client: KubeClient, scope: OwnerSelector, ours: _Ours, name: str,
                       deadline: float) -> None:
        if time.monotonic() < deadline:  # past it: one look below
            try:
                self._await_gone(client, scope, deadline, ours)
            except (Forbidden, WatchUnsupported) as exc:
                if not _cannot_watch(exc):
                    raise
                log.info("cannot watch cluster %s (%s); polling instead", name, exc)
        # After the watch, one round of reads confirms; without it, this polls.
        while leftover := self._leftover(client, scope, ours):
            if time.monotonic() >= deadline:
                raise TeardownIncomplete(name, leftover)
            time.sleep(min(self.config.poll_interval, max(deadline - time.monotonic(), 0)))

    def _owned_objects(self, client: KubeClient, scope: OwnerSelector, ours: _Ours,
                       primaries: tuple[tuple[Kind, str], ...]
                       ) -> Iterator[tuple[Kind, dict[str, Any]]]:
        """The cluster's primary, read by name and verified by its record (``_record_of``),
        then, kind by kind, the objects that name one of the cluster's as their owner (labels
        only find candidates, since anyone may copy them onto an object). Listed as they are
        consumed: delete removes the primary before it lists the next kind, so a list that
        fails (e.g. RBAC) still leaves the collector the rest. ``ours`` collects them."""
        cluster = scope.labels.get(PREFIX + "cluster", "")
        for kind, name in primaries:
            what = f"{kind.kind}/{name}"
            try:
                obj = client.get(kind, name)
            except OperatorMissing as exc:
                if len(primaries) > 1:  # a name's candidate kinds: one not installed has none
                    continue
                # A handle's own kind, which served it when it was made: an API server whose
                # cache is not synced (a restart, an upgrade) answers so for a CRD it has, and
                # the cluster, running on, was reported deleted. Only a person can tell.
                raise TeardownIncomplete(cluster, [
                    f"{what} (cannot tell whether it is there: the API server answered as if "
                    f"it served no {kind.resource}, which it did when the cluster was made: "
                    f"{exc})"]) from exc
            except Forbidden as exc:
                if ours.primaries:  # the name's cluster is found: it is not also one of these
                    continue
                # Unread, it may be the cluster, running: never reported deleted.
                raise TeardownIncomplete(cluster, [
                    f"{what} (cannot tell whether it is there: {exc})",
                    *ours.refusals()]) from exc
            if obj is None:
                continue
            record, why = self._record_of(obj)
            if record is None:
                # The object named as the cluster's own, disagreeing with its record: it may be
                # ours, edited. Not deleted, and never reported deleted either.
                ours.refused[what] = why
                log.warning("leaving %s alone: %s", what, why)
                continue
            if not scope.admits(record):
                log.info("%s is another deployment instance's cluster: left alone", what)
                continue
            if ours.life is not None and not same_life(record, ours.life):
                # A newer life of the name: nothing here is the handle's any more.
                ours.newer = what
                log.warning("%s", newer_life(record, ours.life))
                return
            ours.add(kind, obj)
            ours.primaries[what] = (kind, name, str(obj["metadata"]["uid"]))
            if kind in INNER_OWNERS:
                self._learn_inner_owners(client, scope, ours, INNER_OWNERS[kind])
            yield kind, obj
        if ours.primaries:
            yield from self._parts(client, scope, ours)

    @staticmethod
    def _learn_inner_owners(client: KubeClient, scope: OwnerSelector, ours: _Ours,
                            kind: Kind) -> None:
        """The cluster's objects of ``kind`` (``INNER_OWNERS``) into ``ours``, with what they
        own, before the primary's DELETE: the collector may remove them ahead of their pods,
        which the wait, never having seen their owner, would not count as the cluster's,
        reporting it deleted while they still run. One made between this read and the DELETE
        (the operator replacing a failed server) stays unknown: a window of one request. A
        failed read is left to the listing after the DELETE, which reports it: the primary is
        deleted first whatever the lists do."""
        try:
            listed = client.list_objects(kind, labels=scope.as_label_selector())
        except EphemeralError as exc:
            log.info("cannot list the %ss of %s before deleting it: %s", kind.kind,
                     scope.labels.get(PREFIX + "cluster"), exc)
            return
        ours.take(kind, listed)

    def _parts(self, client: KubeClient, scope: OwnerSelector, ours: _Ours, *,
               report: bool = True) -> Iterator[tuple[Kind, dict[str, Any]]]:
        """The objects with the cluster's labels that name one of its objects as their
        owner (``Owned.claims``), kind by kind; the primaries are not among them."""
        cluster = scope.labels.get(PREFIX + "cluster", "")
        primaries = {uid for _, _, uid in ours.primaries.values()}
        for kind in PARTS:
            for obj in client.list_objects(kind, labels=scope.as_label_selector()):
                if str(obj["metadata"].get("uid")) in primaries:
                    continue
                if ours.claims(obj):
                    ours.add(kind, obj)
                    yield kind, obj
                elif report:
                    log.warning("leaving %s %s alone: it carries cluster %s's labels but is "
                                "not its object", kind.kind, name_of(obj), cluster)

    @staticmethod
    def _pod_selectors(scope: OwnerSelector) -> list[str]:
        """The cluster's pods (``probe.pod_selectors``) in ``scope``'s instance too: pods carry
        the owner labels of their templates, so another deployment's are never waited for."""
        name = scope.labels[PREFIX + "cluster"]
        rest = ",".join(f"{k}={v}" for k, v in sorted(scope.labels.items())
                        if k != PREFIX + "cluster")  # checked label keys and values
        return [f"{pods},{rest}" if rest else pods for pods in probes.pod_selectors(name)]

    def _await_gone(self, client: KubeClient, scope: OwnerSelector, deadline: float,
                    ours: _Ours) -> None:
        """Watch each set of the cluster's objects until it is empty (or the deadline): the
        primaries by name, then the other kinds, then the pods, which nothing recreates once
        their owners are gone."""
        sets: list[tuple[Kind, str | None, str | None]] = [
            (kind, None, name) for kind, name, _ in ours.primaries.values()]
        sets += [(kind, scope.as_label_selector(), None) for kind in PARTS]
        sets += [(POD, selector, None) for selector in self._pod_selectors(scope)]
        for kind, selector, name in sets:
            left: set[str] = set()
            synced = False
            for type_, obj in client.watch(kind, labels=selector, name=name,
                                           timeout=max(deadline - time.monotonic(), 0)):
                if type_ == "BOOKMARK":
                    synced = True
                elif type_ == "DELETED":
                    left.discard(name_of(obj))
                elif ours.claims(obj):
                    ours.add(kind, obj)  # a pod may own others (a driver its executors)
                    left.add(name_of(obj))
                if synced and not left:
                    break

    def _leftover(self, client: KubeClient, scope: OwnerSelector, ours: _Ours) -> list[str]:
        """What of the cluster is still there: a primary whose name does not answer 404 (or
        hold a verified newer life), the parts, and the pods."""
        left: list[str] = []
        for what, (kind, name, uid) in ours.primaries.items():
            obj = client.get(kind, name)
            if obj is None:
                continue
            if obj["metadata"].get("uid") == uid:
                left.append(_describe(kind.kind, obj))
                continue
            record, why = self._record_of(obj)
            if record is None:
                left.append(f"{what} (made again since, and not verified as a cluster: {why})")
        left += [_describe(kind.kind, obj)
                 for kind, obj in self._parts(client, scope, ours, report=False)]
        candidates: dict[str, dict[str, Any]] = {}
        for selector in self._pod_selectors(scope):
            candidates |= {name_of(p): p for p in client.list_objects(POD, labels=selector)}
        # And then the pods these own (a driver's executors).
        return left + [_describe("Pod", p) for p in ours.take(POD, candidates.values())]

    # -- listing -------------------------------------------------------------------------------

    def list_owned(self, selector: OwnerSelector | None = None) -> list[ClusterHandle]:
        return self._list(self.client, selector, PRIMARY_KINDS)

    def owned(self, handle: ClusterHandle, selector: OwnerSelector) -> ClusterHandle | None:
        """As the base's, in the namespace the handle names (a connection's namespace may
        have changed since the setup), only the kind of the handle's primary listed. In
        another namespace than this backend's, only the very cluster the handle recorded
        counts (``same_life``: its name and creation time): there, this run's labels alone
        may well be another deployment's cluster (the same instance, a scheduled run's id),
        or a life of the name made since, neither of which this run's tasks may act on."""
        kind, _ = _primary_names(handle)[0]
        client = self._client(handle)
        found = self._list(client, self.owned_scope(handle, selector), (kind,))
        if client.namespace != self.client.namespace:
            found = [h for h in found if h.name == handle.name and same_life(h, handle)]
        return found[0] if found else None

    def _list(self, client: KubeClient, selector: OwnerSelector | None,
              kinds: tuple[Kind, ...]) -> list[ClusterHandle]:
        """The clusters ``selector`` asks for, by their primaries of ``kinds``."""
        wanted = [f"{PREFIX}cluster", f"{PREFIX}backend={self.name}"]
        selector = selector or OwnerSelector()
        if selector.labels:
            wanted.append(selector.as_label_selector())
        handles: list[ClusterHandle] = []
        objs, refused = self._primary_objects(client, kinds, ",".join(wanted))
        for obj in objs:
            record, _ = self._record_of(obj)
            if record is not None and selector.admits(record):
                handles.append(record)
        found = sorted((self._view(h) for h in handles), key=lambda h: h.name)
        if refused:
            raise ListingIncomplete("; ".join(str(err) for err in refused), found)
        return found

    def disowned(self) -> list[tuple[str, str]]:
        """(name, why) of the primaries of this deployment instance that are no record of
        ephemeral's (``_record_of``): found by this backend's labels or by the record they
        carry, so an object whose labels were edited away is reported too, every kind listed
        whatever its labels."""
        instance = OwnerSelector().labels[INSTANCE_LABEL]
        found: list[tuple[str, str]] = []
        objs, refused = self._primary_objects(self.client, PRIMARY_KINDS, None)
        if refused:
            raise refused[0]
        for obj in objs:
            record, why = self._record_of(obj)
            if record is None and self._names_instance(obj, instance):
                found.append((name_of(obj), why))
        return found

    def _primary_objects(self, client: KubeClient, kinds: tuple[Kind, ...], labels: str | None
                         ) -> tuple[list[dict[str, Any]], list[Forbidden]]:
        """The objects of ``kinds`` with ``labels`` (None: all of them) that may be a
        cluster's primary, and the refusals of the kinds a Role has no right on (each names
        the verb and the resource): the clusters they hide would be neither listed nor
        reaped, so the callers fail on them, after acting on what was found. A kind whose CRD
        is not installed has none."""
        found: list[dict[str, Any]] = []
        refused: list[Forbidden] = []
        for kind in kinds:
            try:
                objs = client.list_objects(kind, labels=labels)
            except OperatorMissing:
                continue
            except Forbidden as err:
                refused.append(err)
                continue
            if kind is DEPLOYMENT:  # the master, carrying the record; its labels may be edited
                objs = [o for o in objs if _is_master(o) or _recorded(o)]
            found += objs
        return found, refused

    def _names_instance(self, obj: dict[str, Any], instance: str) -> bool:
        """Whether ``obj``'s labels or its record (even one that does not verify) say it is a
        cluster of this backend in deployment ``instance``."""
        labels = obj["metadata"].get("labels") or {}
        if labels.get(PREFIX + "cluster") and labels.get(PREFIX + "backend") == self.name \
                and labels.get(INSTANCE_LABEL) == instance:
            return True
        try:
            stated = ClusterHandle.model_validate_json(_recorded(obj) or "")
        except ValidationError:
            return False
        return stated.backend == self.name and stated.instance == instance

    def _handle_of(self, obj: dict[str, Any]) -> ClusterHandle | None:
        record, why = self._record_of(obj)
        if record is None and why:
            log.warning("ignoring %s %s/%s: %s", kind_of(obj).kind,
                        obj["metadata"].get("namespace"), name_of(obj), why)
        return record

    def _record_of(self, obj: dict[str, Any]) -> tuple[ClusterHandle | None, str]:
        """The cluster a primary object is, as the object itself says, or None and why it is
        no record of ephemeral's. Anyone who may edit objects in the namespace can rewrite the
        handle annotation, so it is never the authority: the name, the namespace and the owner
        labels come from the object's metadata, the endpoints are derived from them, and the
        annotation (which adds what labels cannot hold: full-length owner ids, times, node
        groups, the spec's job defaults) must agree with them. An object whose annotation
        names another cluster or owner than its labels do, or whose labels are not what its
        owner ids make, is nobody's to act on: it is logged and left alone."""
        meta = obj["metadata"]
        raw = (meta.get("annotations") or {}).get(HANDLE_ANNOTATION)
        if not raw:
            return None, f"no {HANDLE_ANNOTATION} annotation: not made by ephemeral"
        try:
            stated = ClusterHandle.model_validate_json(raw)
        except ValidationError:
            return None, f"its {HANDLE_ANNOTATION} annotation is unreadable (edited by hand?)"
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith(PREFIX)}
        kind = kind_of(obj)
        name = labels.get(PREFIX + "cluster", "")
        mismatch = [key for key in IDENTITY_LABELS if stated.labels.get(key) != labels.get(key)]
        for key in FULL_IDS:  # the labels are what the full-length owner ids make
            full = stated.annotations.get(key)
            if full is not None and labels.get(key) != label_value(full):
                mismatch.append(f"{key} (full id)")
        if stated.name != name or meta["name"] != (master_service(name) if kind is DEPLOYMENT
                                                   else name):
            mismatch.append("name")
        if mismatch:
            return None, (f"its {HANDLE_ANNOTATION} annotation disagrees with the object on "
                          f"{', '.join(mismatch)} (edited or copied by hand?)")
        if labels.get(KEEP_LABEL) != stated.labels.get(KEEP_LABEL):
            # A policy, not an identity: kept only when the label and the record the backend
            # wrote both say so. A label added (or an annotation edited) by hand alone would
            # keep a run's cluster past its run until its TTL.
            labels.pop(KEEP_LABEL, None)
        record = stated.model_copy(update={
            "deleting": _deleting(meta),
            "namespace": meta.get("namespace") or self.config.namespace,
            "labels": {**{k: v for k, v in stated.labels.items() if not k.startswith(PREFIX)},
                       **labels}})
        endpoints = service_endpoints(
            record, record.engine, cluster_domain=self.config.cluster_domain,
            spark_connect=stated.endpoints.spark_connect is not None,
            mode="operator" if kind is SPARKCONNECT else "standalone")
        return record.model_copy(update={"endpoints": endpoints}), ""

    def _client(self, handle: ClusterHandle | None) -> KubeClient:
        if handle is not None and handle.namespace:
            return self.client.in_namespace(handle.namespace)
        return self.client


@dataclass
class _Ours(Owned):
    """The objects of one cluster being deleted (``Owned``), filled as the deletion finds
    them, kept for the wait: a collected owner's dependents still name it."""

    primaries: dict[str, tuple[Kind, str, str]] = field(default_factory=dict)
    """The cluster's primary, verified, as ``Kind/name``: its kind, name and uid."""
    refused: dict[str, str] = field(default_factory=dict)
    """The cluster's own primary, by name, when it disagrees with its record: why."""
    life: ClusterHandle | None = None
    """The life being deleted, when a handle names it (a bare name: whichever is there)."""
    newer: str = ""
    """The primary of another life of the name, met instead of ``life``'s: left alone."""

    def refusals(self) -> list[str]:
        return [f"{what} (left alone: {why})" for what, why in self.refused.items()]


def _primary_names(target: ClusterHandle | ClusterIdentity | str) -> tuple[tuple[Kind, str], ...]:
    """(kind, name) of the object that is the cluster's primary: the one a handle names (its
    engine and Spark mode), else each one a cluster of that name can have, the SparkConnect
    last (a Role from before operator mode cannot read it)."""
    name = KubernetesBackend.target_name(target)
    ray, master, connect = (RAYCLUSTER, name), (DEPLOYMENT, master_service(name)), \
        (SPARKCONNECT, name)
    if isinstance(target, ClusterHandle):
        if target.engine == "ray":
            return (ray,)
        return (connect,) if is_operator(target) else (master,)
    return ray, master, connect


def _raise_refused(name: str, ours: _Ours) -> None:
    """TeardownIncomplete naming the cluster's own primaries that its record does not verify
    (edited by hand): left alone, so the cluster may well be running."""
    if ours.refused:
        raise TeardownIncomplete(name, ours.refusals())


def _recorded(obj: dict[str, Any]) -> str | None:
    """The record (handle annotation) ``obj`` carries, if any."""
    raw = (obj["metadata"].get("annotations") or {}).get(HANDLE_ANNOTATION)
    return str(raw) if raw else None


def _is_master(obj: dict[str, Any]) -> bool:
    """Whether ``obj`` is a Spark master Deployment: a standalone Spark cluster's primary."""
    return kind_of(obj) is DEPLOYMENT and \
        obj["metadata"].get("labels", {}).get(COMPONENT_LABEL) == SPARK_MASTER


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with an ownerReference to the created ``owner`` (which has its server uid).

    No ``blockOwnerDeletion``: setting it needs the ``update`` verb on the owner's
    ``finalizers`` subresource where OwnerReferencesPermissionEnforcement is on, and the Role
    grants no update; the collector deletes the dependents all the same."""
    meta = owner["metadata"]
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
           "uid": meta["uid"]}
    return obj | {"metadata": obj["metadata"] | {"ownerReferences": [ref]}}


def _deleting(meta: dict[str, Any]) -> Deleting | None:
    """A primary's deletion under way: its deletionTimestamp (RFC 3339 in UTC, ``utc_text``'s
    form) and the finalizers that hold it."""
    since = meta.get("deletionTimestamp")
    return Deleting(since=str(since), finalizers=tuple(meta.get("finalizers") or ())) \
        if since else None


def _describe(kind: str, obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    text = f"{kind}/{meta['name']}"
    if meta.get("deletionTimestamp"):
        finalizers = meta.get("finalizers") or []
        text += " (terminating" + (f"; finalizers: {', '.join(finalizers)})" if finalizers
                                   else ")")
    return text
