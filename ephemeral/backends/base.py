"""The backend contract: the one narrow interface every way of running clusters implements.

Rules every backend keeps (the contract suite in tests/contract checks them):

- ``create`` is idempotent: the same identity returns the existing cluster when its spec hash is
  the same, and raises ``IdentityConflict`` when it is not. It never makes a second cluster.
  It validates everything it can before creating anything, and it does not wait for readiness.
- ``wait_ready(timeout=0)`` probes once and returns the status; a positive timeout waits until
  ready and raises ``ReadinessTimeout`` (retryable) or ``ClusterFailed`` (with log tails).
- ``delete`` is idempotent (a missing cluster is success). With ``wait=True`` it returns only when
  nothing of the cluster is left, or raises ``TeardownIncomplete`` naming what is. By a handle
  it deletes only the life of the cluster the handle names (``same_life``), never a newer one.
  ``start_delete`` issues the same deletion and returns a ``Deletion`` to wait for later, so
  many are issued before any is waited for (the reaper).
- Every cluster carries its owner labels, so ``list_owned`` finds it after any crash.
- Only ``ephemeral.errors`` types escape; foreign exceptions are chained.
"""

from __future__ import annotations

import abc
import enum
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ephemeral.errors import ClusterExpired, IdentityConflict, InstanceRequired, SpecError
from ephemeral.specs.identity import (
    INSTANCE_LABEL,
    PREFIX,
    ClusterIdentity,
    check_cluster_name,
    current_instance,
    expires_at,
    label_value,
    parse_utc,
    utc_text,
)
from ephemeral.specs.labels import is_label_key, is_label_value

if TYPE_CHECKING:
    from ephemeral.specs.models import SparkSpec
    from ephemeral.specs.resolve import ResolvedSpec


class Phase(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"
    GONE = "gone"


class Endpoints(BaseModel):
    """How to reach a cluster. Only URLs: never credentials."""

    # Handles travel through XCom and state files: fields a newer version adds are ignored.
    model_config = ConfigDict(extra="ignore", frozen=True)

    dashboard: str | None = None
    """Ray dashboard and Jobs API, ``http://host:port``."""
    ray_client: str | None = None
    """``ray://host:port``."""
    gcs: str | None = None
    """``host:port`` of the Ray GCS, for ``ray start --address`` and ``ray.init``."""
    spark_master: str | None = None
    """``spark://host:port``."""
    spark_ui: str | None = None
    """Spark master web UI, ``http://host:port``."""
    spark_connect: str | None = None
    """``sc://host:port``."""


class NodeGroup(BaseModel):
    """What one group of a cluster's nodes reserves, per node, from the effective spec: what the
    run report turns into reserved CPU-, memory- and GPU-seconds, and what jobs size themselves
    by (GPUs per worker)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    """``head`` or a Ray worker group's name; ``master``, ``workers``, ``connect`` for Spark."""
    role: str
    """``head``, ``worker`` (the nodes jobs run on) or ``service`` (Spark master, Connect)."""
    replicas: int
    cpu: float
    memory_bytes: int
    gpus: int = 0
    min_replicas: int | None = None
    """An autoscaled Ray group's floor (``minReplicas``); None when it does not autoscale."""
    max_replicas: int | None = None
    """An autoscaled Ray group's ceiling (``maxReplicas``); None when it does not autoscale,
    and in handles of older code (the run report then says the ceiling is unknown)."""

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def floor(self) -> int:
        """The nodes it has at least, once up."""
        return self.min_replicas if self.min_replicas is not None else self.replicas


class Deleting(BaseModel):
    """A cluster whose deletion is under way (someone's earlier delete), as its backend lists
    it: since when, and what still holds it (Kubernetes finalizers)."""

    model_config = ConfigDict(frozen=True)

    since: str
    """When it was asked, ``utc_text``."""
    finalizers: tuple[str, ...] = ()
    in_background: bool = True
    """The deletion goes on without its deleter (Kubernetes' garbage collector). False: its
    deleter does it all (the local backend ends the processes itself), so a deletion found
    under way was cut short (its deleter interrupted or killed), or is being done right now;
    deleting it again finishes it (after the one under way, which holds its lock)."""

    def describe(self) -> str:
        held = f", finalizers {', '.join(self.finalizers)}" if self.finalizers else ""
        return f"deleting since {self.since}{held}"


class ClusterHandle(BaseModel):
    """What a created cluster is known by: small enough for XCom, enough to find it again."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    backend: str
    engine: str
    namespace: str | None = None
    spec_ref: str
    spec_hash: str
    profile: str | None = None
    created_at: str
    expires_at: str
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    """Owner fields at full length (labels hold long values hashed)."""
    endpoints: Endpoints = Endpoints()
    connection: str | None = None
    """The Airflow connection the cluster was made through (an id, never its credentials), so
    its teardown and reaper reach it with the same settings."""
    groups: list[NodeGroup] = []
    """Each node group's size and per-node resources (empty in handles of older versions)."""
    created_ts: float | None = None
    """``created_at`` as epoch seconds, below the second (for the run report)."""
    ready_ts: float | None = None
    """When the setup saw the cluster ready, epoch seconds (set by the setup task)."""
    idle_timeout_s: int | None = None
    """The spec's ``lifetime.idleTimeout`` in seconds: the reaper deletes the cluster once it
    has been idle this long (``ephemeral.activity``). None: no idle limit."""
    job_pip: list[str] = []
    """The spec's ``runtimeEnv.pip``: default pip packages of every Ray job submitted through
    ephemeral (``ephemeral.jobs.runtime_env``)."""
    spark_conf: dict[str, str] = {}
    """``submit_defaults`` of a Spark spec: the defaults of every Spark application submitted
    through ephemeral (spark-submit, ``EphemeralSparkSubmitOperator``); its own conf wins."""
    adopted: bool = Field(default=False, exclude=True)
    """On the handle ``create`` returns: it found this cluster life (an earlier try's, another
    caller's of the name) instead of making it, so the cluster is not that call's to delete
    when its wait fails. Said by the backend, never inferred from times (two callers can ask
    within one second); never stored (XCom, annotations, state files leave it out)."""
    deleting: Deleting | None = Field(default=None, exclude=True)
    """On a listed handle: its deletion is under way (a backend whose deletions finish in the
    background, Kubernetes); never stored."""

    @property
    def owner_labels(self) -> dict[str, str]:
        return {k: v for k, v in self.labels.items() if k.startswith(PREFIX)}

    @property
    def instance(self) -> str | None:
        return self.labels.get(INSTANCE_LABEL)

    @property
    def run(self) -> tuple[str, str] | None:
        """(dag_id, run_id) of the DAG run that made the cluster, at full length (labels may
        hold them hashed); None for a cluster made by hand."""
        dag_id, run_id = (self.annotations.get(PREFIX + k) for k in ("dag-id", "run-id"))
        return (dag_id, run_id) if dag_id and run_id else None

    @property
    def setup_task(self) -> str | None:
        """The task id of the setup that made the cluster; None for one made by hand."""
        return self.annotations.get(PREFIX + "task-id")


class Deletion:
    """A deletion issued (``ClusterBackend.start_delete``), not yet seen to finish."""

    def __init__(self, name: str, wait: Callable[[float], None] | None = None) -> None:
        self.name = name
        self._wait = wait

    def wait(self, deadline: float) -> None:
        """Return once nothing of the cluster is left, or raise ``TeardownIncomplete`` naming
        what is once ``deadline`` (``time.monotonic()``) has passed; looks at least once,
        however late. Several deletions are waited for in turn against one deadline."""
        if self._wait is not None:
            self._wait(deadline)


def same_life(record: ClusterHandle, handle: ClusterHandle) -> bool:
    """Whether ``record`` (the backend's record of a cluster, read now) is the cluster life
    ``handle`` names. A name lives again once its cluster is gone (a cleared run's setup makes
    it anew), so a handle held since (a reaper's listing, a handle from an earlier try) may
    name an ended life, and the newer one is not its holder's to delete. Lives differ by their
    creation moment: below the second where both record it (``created_ts``), else
    ``created_at``."""
    if record.created_ts is not None and handle.created_ts is not None:
        return record.created_ts == handle.created_ts
    return record.created_at == handle.created_at


def newer_life(record: ClusterHandle, handle: ClusterHandle) -> str:
    """What ``delete`` logs when it leaves a newer life of a handle's name alone."""
    return (f"left {record.name} alone: it was made at {record.created_at}, after the cluster "
            f"this handle names (made at {handle.created_at}) was deleted; the newer one is not "
            "this caller's to delete")


# What says whose a cluster is, within an instance (``ClusterIdentity.labels``).
OWNER_LABELS = tuple(PREFIX + k for k in ("owner", "dag-id", "run-id", "task-id", "map-index"))


def check_same_owner(existing: ClusterHandle, identity: ClusterIdentity) -> None:
    """A create that finds a cluster under its name, whole or half made, neither adopts nor
    replaces nor deletes it unless this deployment instance made it, for the same owner: the
    same task of the same run (its retry), or a person's ``up --name``. Adopted, it would be
    the adopter's to delete (``ephemeral down``, a teardown) under its owner's work."""
    if existing.instance != identity.instance:
        raise IdentityConflict(
            f"cluster {existing.name!r} belongs to deployment instance {existing.instance!r}, "
            f"not to this one ({identity.instance!r}); it is never adopted or deleted from "
            "here. Choose another cluster name.")
    mine = identity.labels()
    if any(existing.labels.get(key) != mine.get(key) for key in OWNER_LABELS):
        raise IdentityConflict(
            f"cluster {existing.name!r} belongs to {owner_text(existing)}, not to this create "
            f"({owner_text(identity)}); it is never adopted or deleted from here. Choose "
            "another cluster name.")


def owner_text(owner: ClusterHandle | ClusterIdentity) -> str:
    if isinstance(owner, ClusterIdentity):
        return (f"task {owner.task_id} of run {owner.run_id} of DAG {owner.dag_id}"
                if owner.dag_id else "a cluster made by hand")
    if owner.run is None:
        return "a cluster made by hand"
    dag_id, run_id = owner.run
    return f"task {owner.setup_task} of run {run_id} of DAG {dag_id}"


def check_adoptable(existing: ClusterHandle, spec_ref: str, spec_hash: str,
                    identity: ClusterIdentity) -> None:
    """The one rule for a create that finds a cluster under its name: adopt it only when this
    deployment made it from the same effective spec."""
    check_same_owner(existing, identity)
    if existing.spec_hash != spec_hash:
        raise IdentityConflict(
            f"cluster {existing.name!r} already exists from {existing.spec_ref} "
            f"(hash {existing.spec_hash}); this create asks for {spec_ref} (hash {spec_hash}). "
            "Delete it first or use another identity.")
    if parse_utc(existing.expires_at) <= utcnow():
        # Adopted, the reaper would delete it under the work this create is for.
        raise ClusterExpired(
            f"cluster {existing.name!r} expired at {existing.expires_at} (its spec's "
            f"lifetime.ttl) and is never adopted: the reaper deletes it, as does this run's "
            f"end. Delete it now (ephemeral down {existing.name}) and retry.")


class Access(BaseModel):
    """How this process reaches a cluster's HTTP APIs (Ray dashboard and Jobs API, Spark master
    and Connect UIs): URLs, possibly rewritten (through the Kubernetes API server's service proxy), and the
    headers that authenticate (the cluster's Ray token, an API server bearer token).

    Made on demand by ``ClusterBackend.access`` in the process that calls the cluster; it holds
    credentials, so it is never stored, logged, serialized into a trigger or pushed to XCom.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dashboard: str | None = None
    spark_ui: str | None = None
    connect_ui: str | None = None
    """The Spark Connect server's own UI (its sessions and operations, Spark 4's REST API),
    where the backend publishes it; in Kubernetes' operator mode it is ``spark_ui`` itself."""
    headers: dict[str, str] = {}
    verify: bool | str = True
    """TLS trust for those URLs, as ``requests`` takes it: the API server's CA file through
    its proxy (kind's and most clusters' CA is private), False when the config turns checks
    off, True for the system's trust store."""
    proxy: str | None = None
    """The HTTP proxy to those URLs, never one from this process's environment: only through
    a Kubernetes API server's service proxy (the URLs are the API server's), the one its
    Kubernetes client goes through (``KubeClient.server_proxy``); None: direct."""

    def __repr__(self) -> str:  # keep credentials out of tracebacks and logs
        return (f"Access(dashboard={self.dashboard!r}, spark_ui={self.spark_ui!r}, "
                f"connect_ui={self.connect_ui!r}, headers=***)")

    __str__ = __repr__

    def credentials(self) -> list[str]:
        """The secrets in ``headers``: each value and, of a ``Bearer`` one, the token alone
        (the form a job's environment holds it in: RAY_AUTH_TOKEN)."""
        found = []
        for value in self.headers.values():
            scheme, _, token = value.partition(" ")
            found += [value, token] if scheme.lower() == "bearer" and token else [value]
        return found


def hide_in_task_logs(*credentials: str | None) -> None:
    """Register a cluster's credentials, where a process obtains them, with Airflow's log
    masker when the process runs Airflow (a task, the triggerer): a job's or driver's output
    streamed into the task log may print them (every Ray container of a Kubernetes cluster has
    RAY_AUTH_TOKEN, and its drivers inherit it). The CLI loads no Airflow: nothing is imported
    for it."""
    if "airflow.sdk" not in sys.modules:
        return
    from airflow.sdk.log import mask_secret

    for value in credentials:
        if value:
            mask_secret(value)


class ClusterStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: Phase
    nodes_ready: int = 0
    nodes_expected: int = 0
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY


class HeadState(enum.StrEnum):
    """A cluster's head as its backend sees it (``ClusterBackend.head_view``)."""

    RUNNING = "running"  # there and serving, as far as the backend sees
    NOT_READY = "not-ready"  # there but not serving (a pod not Ready): maybe passing
    GONE = "gone"  # the cluster or its head is gone, failed or replaced: it died
    UNKNOWN = "unknown"  # the backend cannot tell


class HeadView(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    state: HeadState
    reason: str = ""
    """A clause for a message: "its head pod c1-head-x is Failed (Evicted: ...)"."""


class OwnerSelector(BaseModel):
    """Which clusters to list: every label given must match the cluster's labels.

    A selector is scoped to this deployment's instance unless it says ``all_instances``: code
    that forgets the instance cannot touch another deployment's clusters.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: dict[str, str] = {}
    all_instances: bool = False
    full: dict[str, str] = {}
    """Owner ids at full length (``ephemeral.dev/dag-id`` ...), which a cluster's annotations
    must hold too: a long id's label is a hash, and another id can be that hash itself."""

    @model_validator(mode="before")
    @classmethod
    def _scope_to_instance(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("all_instances"):
            labels = dict(data.get("labels") or {})
            labels.setdefault(INSTANCE_LABEL, current_instance())
            return {**data, "labels": labels}
        return data

    @model_validator(mode="after")
    def _only_labels(self) -> OwnerSelector:
        """Every key and value is a Kubernetes label key and value: ``as_label_selector``
        joins them as they are, and a ',' or '!=' in one would add requirements of its own
        (select another deployment's objects). SpecError is not a ValueError, so it escapes
        pydantic as itself."""
        bad = [(f"labels[{k!r}]", "not a Kubernetes label key ([prefix/]name)")
               for k in self.labels if not is_label_key(k)]
        bad += [(f"labels[{k!r}]", f"{v!r} is not a Kubernetes label value (at most 63 "
                 "characters of letters, digits, '-', '_' and '.', alphanumeric at both ends)")
                for k, v in self.labels.items() if not is_label_value(v)]
        if bad:
            raise SpecError("owner selector", bad)
        return self

    @classmethod
    def everything(cls) -> OwnerSelector:
        """Every cluster of every deployment (``--all-instances``): for operators' tools only."""
        return cls(all_instances=True)

    @classmethod
    def this_instance(cls) -> OwnerSelector:
        return cls()

    @classmethod
    def of(cls, identity: ClusterIdentity) -> OwnerSelector:
        return cls.of_target(identity)

    @classmethod
    def of_target(cls, target: ClusterHandle | ClusterIdentity | str, *,
                  all_instances: bool = False) -> OwnerSelector:
        """The one selector of a cluster by name, for every look-up and delete by name (so
        ``down``'s guard and the delete it guards select the same objects): its checked name
        and its deployment instance. A bare name is this deployment's unless
        ``all_instances``; an identity or handle carries its own instance (a handle from
        before instances, none: its objects carry none either)."""
        labels = {PREFIX + "cluster": ClusterBackend.target_name(target)}
        if isinstance(target, str):
            return cls(labels=labels, all_instances=all_instances)
        if instance := target.instance:
            labels[INSTANCE_LABEL] = instance
        return cls(labels=labels, all_instances=True)

    @classmethod
    def of_run(cls, dag_id: str, run_id: str, task_id: str | None = None, *,
               labels: dict[str, str] | None = None) -> OwnerSelector:
        """The clusters of one DAG run (of one setup task, with ``task_id``), within
        ``labels``: selected by their owner labels, confirmed by their full ids."""
        ids = {PREFIX + "dag-id": dag_id, PREFIX + "run-id": run_id}
        if task_id is not None:
            ids[PREFIX + "task-id"] = task_id
        return cls(labels=(labels or {}) | {k: label_value(v) for k, v in ids.items()},
                   full=ids)

    def admits(self, handle: ClusterHandle) -> bool:
        """Whether ``handle``'s cluster is one this selector asks for: its labels match, and
        each full id it records is the one asked for (a cluster recording none, from before
        full ids, only when its label is that id itself)."""
        return all(handle.labels.get(k) == v for k, v in self.labels.items()) and all(
            handle.annotations.get(k, handle.labels.get(k)) == v for k, v in self.full.items())

    def as_label_selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))


def utcnow() -> datetime:
    return datetime.now(UTC)


def require_instance(backend: ClusterBackend, instance: str, action: str, *,
                     by_connection: bool = False) -> None:
    """Refuses ``action`` as ``instance`` on a ``shared_home`` backend when nobody set the
    instance (it was derived from AIRFLOW_HOME): two deployments sharing a namespace, staging
    and prod with the same DAGs, would then give a run's cluster the same name and labels, and
    each would adopt, reap and delete the other's. Deleting one known cluster stays allowed.
    ``by_connection``: a task's ephemeral connection could have given the instance too."""
    from ephemeral.settings import get_settings

    settings = get_settings()
    if backend.shared_home and instance == settings.instance and not settings.instance_explicit:
        where = ("EPHEMERAL_INSTANCE (or Airflow's [ephemeral] instance" +
                 (", or the instance of the task's ephemeral connection)" if by_connection
                  else ")"))
        raise InstanceRequired(
            f"{action} on the {backend.name} backend needs this deployment's instance: set "
            f"{where} on every Airflow component and the reaper, to a name per deployment, "
            "e.g. 'staging' or 'prod'. Unset, it is derived from AIRFLOW_HOME, which every "
            "Airflow container shares, so it cannot tell two deployments in one namespace "
            f"apart. A deployment alone in its namespace with clusters made before this rule "
            f"sets it to {instance!r}, the value it had, so its teardowns and reaper still "
            "find them.")


class ClusterBackend(abc.ABC):
    """Create, probe, locate and delete clusters of one kind of infrastructure."""

    name: str
    shared_home: bool = False
    """Whether every deployment using this backend runs with one AIRFLOW_HOME (containers:
    /opt/airflow), so that the instance derived from it cannot tell deployments apart and
    must be set (``require_instance``)."""
    probe_interval: float = 2.0
    """The longest pause between readiness probes, and between status checks of a job: a
    cluster that is ready, or whose job ended, but not yet seen to be idles for it. Backends
    whose probe is cheap (local processes) look more often than those that ask an API
    server."""

    @abc.abstractmethod
    def create(self, spec: ResolvedSpec, *, identity: ClusterIdentity) -> ClusterHandle:
        """Start creating the cluster (idempotent by identity); do not wait for readiness."""

    @abc.abstractmethod
    def probe(self, handle: ClusterHandle) -> ClusterStatus:
        """Look once: the cluster's phase (GONE when it does not exist); raise ``ClusterFailed``
        when a node of it failed."""

    def diagnose(self, handle: ClusterHandle) -> str:  # noqa: ARG002 - backends that can, say
        """What a person needs when the cluster is not ready in time (log tails, events)."""
        return ""

    def wait_ready(self, handle: ClusterHandle, *, timeout: float) -> ClusterStatus:
        """Probe once (``timeout=0``) or wait until usable; raise on failure or timeout."""
        if timeout <= 0:
            return self.probe(handle)
        from ephemeral.backends.readiness import Readiness

        return Readiness.within(self, handle, timeout=timeout).wait()

    @abc.abstractmethod
    def endpoints(self, handle: ClusterHandle) -> Endpoints:
        """The cluster's endpoints (known as soon as it is created)."""

    @abc.abstractmethod
    def delete(self, target: ClusterHandle | ClusterIdentity | str, *, wait: bool = True) -> bool:
        """Delete by handle, identity or name. Missing is success. A handle names one life of
        its cluster (``same_life``): when the cluster of its name is another life, nothing is
        deleted and the result is False (that life's end is this handle's holder's concern no
        more); True otherwise."""

    @abc.abstractmethod
    def start_delete(self, target: ClusterHandle | ClusterIdentity | str) -> Deletion | None:
        """Issue the deletion ``delete`` makes and return at once, with what waits for it to
        finish; None where ``delete`` returns False (the name is another life). A caller with
        many clusters issues every deletion before it waits for any: one that never finishes
        (a finalizer nobody clears) holds back none of the others."""

    @abc.abstractmethod
    def list_owned(self, selector: OwnerSelector | None = None) -> list[ClusterHandle]:
        """Every cluster this backend made that matches ``selector`` (all when None)."""

    def disowned(self) -> list[tuple[str, str]]:
        """(name, why) of the objects with this deployment's cluster labels that are no record
        this backend acts on (an annotation edited or copied by hand). The reaper reports
        them; nothing deletes them."""
        return []

    def head_view(self, handle: ClusterHandle) -> HeadView:  # noqa: ARG002 - those that can
        """The cluster's head (Ray's head node) as this backend's own objects show it, for a
        waiter whose reads of the cluster's API keep failing (``ray_jobs.JobWatch``): GONE
        only on evidence that it died, NOT_READY while it is there but not serving. It may
        raise or hang: the caller bounds it and counts that as UNKNOWN."""
        return HeadView(state=HeadState.UNKNOWN,
                        reason=f"the {self.name} backend has no view of its head")

    def access(self, handle: ClusterHandle) -> Access:
        """How this process calls the cluster's APIs, with credentials (see ``Access``)."""
        return Access(dashboard=handle.endpoints.dashboard, spark_ui=handle.endpoints.spark_ui)

    def owned(self, handle: ClusterHandle, selector: OwnerSelector) -> ClusterHandle | None:
        """This backend's own record of the cluster ``handle`` names, when its labels match
        ``selector``; else None (gone, or not the selector's). A handle that came through XCom
        is a pointer, never the authority: whose cluster it is, where it answers and what it
        runs come from here (``ephemeral.airflow.handles``)."""
        found = self.list_owned(self.owned_scope(handle, selector))
        return found[0] if found else None

    def owned_scope(self, handle: ClusterHandle, selector: OwnerSelector) -> OwnerSelector:
        """``selector`` narrowed to the cluster ``handle`` names (its checked name)."""
        return OwnerSelector(labels=selector.labels | {PREFIX + "cluster": self.target_name(handle)},
                             full=selector.full, all_instances=True)  # its instance label holds

    def unrecorded(self, name: str) -> list[str]:  # noqa: ARG002 - backends that can, say
        """What still runs of a cluster ``name`` this backend has no record of (a local
        cluster's marked processes after its state was lost), described; deleting ``name``
        ends it. Said where a deletion would otherwise read as "nothing to delete"."""
        return []

    def get(self, name: str, *, all_instances: bool = False) -> ClusterHandle | None:
        """The handle of this deployment's cluster by name (any deployment's with
        ``all_instances``), or None."""
        found = self.list_owned(OwnerSelector.of_target(name, all_instances=all_instances))
        return found[0] if found else None

    @staticmethod
    def target_name(target: ClusterHandle | ClusterIdentity | str) -> str:
        """The cluster name of a delete's or look-up's target, checked (``check_cluster_name``)
        whatever it came from: a name typed by a person, a handle from XCom. It becomes a
        local folder and a Kubernetes selector, so a bad one is refused (SpecError) before
        anything is done."""
        return check_cluster_name(target if isinstance(target, str) else target.name)


def make_handle(
    spec: ResolvedSpec,
    identity: ClusterIdentity,
    *,
    backend: str,
    endpoints: Endpoints,
    namespace: str | None = None,
    created: datetime | None = None,
    default_spark_mode: str = "standalone",
) -> ClusterHandle:
    """A new cluster's handle with its owner labels and expiry, the same for every backend.
    ``default_spark_mode``: the Kubernetes deployment's Spark mode (``node_groups``)."""
    from ephemeral.specs.models import RaySpec

    created = created or utcnow()
    labels = identity.labels() | {
        PREFIX + "spec-version": str(spec.spec.version),
        PREFIX + "spec-hash": spec.hash,
        PREFIX + "backend": backend,
    }
    return ClusterHandle(
        name=identity.name,
        backend=backend,
        engine=spec.engine,
        namespace=namespace,
        spec_ref=spec.ref,
        spec_hash=spec.hash,
        profile=spec.profile,
        created_at=utc_text(created),
        expires_at=expires_at(created, spec.spec.lifetime.ttl_seconds),
        labels=labels,
        annotations=identity.annotations(),
        endpoints=endpoints,
        groups=node_groups(spec, backend=backend, default_spark_mode=default_spark_mode),
        created_ts=round(created.timestamp(), 3),
        idle_timeout_s=spec.spec.lifetime.idle_timeout_seconds,
        job_pip=list(spec.spec.runtime_env.pip) if isinstance(spec.spec, RaySpec) else [],
        spark_conf={} if isinstance(spec.spec, RaySpec) else submit_defaults(spec.spec, backend),
    )


# A Spark Connect server's executors on every backend: only while there is work, each
# released 30 s after its last task, so that applications submitted to the master get the
# workers too, and the cluster can be idle. Shuffle tracking alone keeps an executor that
# holds shuffle files for good: one aggregation in a session would hold its cores (and GPUs)
# until the cluster's deletion, and the reaper would count the cluster busy.
EXECUTOR_IDLE = "30s"
CONNECT_ALLOCATION = MappingProxyType({
    "spark.dynamicAllocation.enabled": "true",
    "spark.dynamicAllocation.shuffleTracking.enabled": "true",
    "spark.dynamicAllocation.minExecutors": "0",
    "spark.dynamicAllocation.executorIdleTimeout": EXECUTOR_IDLE,
    "spark.dynamicAllocation.shuffleTracking.timeout": "60s",
})


def application_conf(spec: SparkSpec) -> dict[str, str]:
    """What every application on a Spark cluster gets unless it says otherwise, as a cluster's
    spark-defaults would give it: the Connect server's and each spark-submit's through
    ephemeral. An executor takes its worker's GPUs (a task asking for a share of one, as
    ``spark.task.resource.gpu.amount`` in the spec's conf does, fails without it), then the
    spec's ``conf``."""
    gpus = {"spark.executor.resource.gpu.amount": str(spec.workers.gpus)} if spec.workers.gpus \
        else {}
    return gpus | spec.conf


def spark_size(memory: str) -> str:
    """A spec's memory as Spark reads a size: whole MiB, at least one."""
    from ephemeral.specs.quantities import memory_bytes

    return f"{max(1, memory_bytes(memory) // 2**20)}m"


def executor_size(spec: SparkSpec, backend: str) -> dict[str, str]:
    """One executor per worker, sized to it: the worker's cores and the memory it offers
    executors (on Kubernetes its pod's, less the daemon's heap and the JVMs' overhead,
    ``heap_sizes``). What every application gets unless its own conf says otherwise: Spark's
    own default takes a worker's cores but 1 GiB of its memory, whatever workers.memory says."""
    w = spec.workers
    if backend == "kubernetes":
        from ephemeral.backends.kubernetes.render.spark import heap_sizes

        memory = f"{heap_sizes(w.memory)[1]}m"
    else:
        memory = spark_size(w.memory)
    return {"spark.executor.cores": str(w.cores), "spark.executor.memory": memory}


# The spec's settings only a Connect server gets: a cluster without one (notes) gives them to
# no process.
CONNECT_DRIVER = "spark.driver."


def submit_defaults(spec: SparkSpec, backend: str) -> dict[str, str]:
    """What a spark-submit driver gets from its cluster (``executor_size``, then
    ``application_conf``). The driver runs where its task runs: so not the ``spark.driver.*``
    settings (``CONNECT_DRIVER``), which are the Connect server's (its memory, its JVM options,
    its address) and would move a local driver's callback address or size the Airflow worker's
    JVM."""
    conf = executor_size(spec, backend) | application_conf(spec)
    return {k: v for k, v in conf.items() if not k.startswith(CONNECT_DRIVER)}


def node_groups(spec: ResolvedSpec, *, backend: str = "local",
                default_spark_mode: str = "standalone") -> list[NodeGroup]:
    """The node groups the cluster of the effective spec has on ``backend``, with their
    per-node resources. A Spark cluster in operator mode (Kubernetes only: the spec's
    ``kubernetesMode``, else ``default_spark_mode``, the deployment's) has no master: a Connect
    server and executors, at most ``workers.replicas`` of them, made while work runs (so their
    reserved seconds are an upper bound)."""
    from ephemeral.specs.models import RaySpec
    from ephemeral.specs.quantities import memory_bytes

    s = spec.spec
    if isinstance(s, RaySpec):
        # Only KubeRay's autoscaler moves a group between its bounds; every other backend
        # starts ``replicas`` nodes and keeps them (``notes``), so their count is exact.
        scales = backend == "kubernetes"
        return [NodeGroup(name="head", role="head", replicas=1, cpu=s.head.cpu,
                          memory_bytes=memory_bytes(s.head.memory), gpus=s.head.gpus),
                *(NodeGroup(name=g.name, role="worker", replicas=g.replicas, cpu=g.cpu,
                            memory_bytes=memory_bytes(g.memory), gpus=g.gpus,
                            min_replicas=g.min if scales and g.min != g.max else None,
                            max_replicas=g.max if scales and g.min != g.max else None)
                  for g in s.worker_groups)]
    operator = backend == "kubernetes" and \
        (s.kubernetes_mode or default_spark_mode) == "operator"
    workers = NodeGroup(name="executors" if operator else "workers", role="worker",
                        replicas=s.workers.replicas, cpu=s.workers.cores,
                        memory_bytes=memory_bytes(s.workers.memory), gpus=s.workers.gpus)
    groups = [workers] if operator else [
        NodeGroup(name="master", role="service", replicas=1, cpu=s.master.cpu,
                  memory_bytes=memory_bytes(s.master.memory)), workers]
    if s.connect is not None and s.connect.enabled:
        groups.append(NodeGroup(name="connect", role="service", replicas=1, cpu=s.connect.cpu,
                                memory_bytes=memory_bytes(s.connect.memory)))
    return groups
