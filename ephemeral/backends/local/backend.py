"""The local backend: real Ray and Spark clusters as processes on this machine."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sys
import time
import uuid
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from ephemeral.backends.base import (
    Access,
    ClusterBackend,
    ClusterHandle,
    ClusterStatus,
    Deleting,
    Deletion,
    Endpoints,
    HeadState,
    HeadView,
    OwnerSelector,
    Phase,
    check_adoptable,
    check_same_owner,
    make_handle,
    newer_life,
    same_life,
)
from ephemeral.backends.local import gpus, procs, ray_nodes, secrets, slots, spark_nodes
from ephemeral.backends.local.state import (
    ClusterState,
    PlannedNode,
    load,
    raw_field,
    raw_instance,
    save,
    state_file,
)
from ephemeral.errors import (
    BackendError,
    BackendUnavailable,
    ClusterFailed,
    ClusterNotFound,
    EphemeralError,
    SpecError,
    TeardownIncomplete,
)
from ephemeral.jobs.spark_jobs import SparkAuth
from ephemeral.settings import get_settings, job_environ
from ephemeral.specs.identity import PREFIX, ClusterIdentity, current_instance, utc_text
from ephemeral.specs.models import RaySpec, SparkSpec
from ephemeral.specs.resolve import ResolvedSpec

log = logging.getLogger(__name__)
# The host whose processes are the cluster: its state, its processes and its 127.0.0.x
# endpoints exist only there.
HOST_ANNOTATION = PREFIX + "host"


def node_gpus(spec: ResolvedSpec) -> list[int]:
    """GPUs of each node of the spec's local cluster, in the order the plans start them."""
    s = spec.spec
    if isinstance(s, RaySpec):
        return [s.head.gpus] + [g.gpus for g in s.worker_groups for _ in range(g.replicas)]
    connect = [0] if s.connect and s.connect.enabled else []
    return [0] + [s.workers.gpus] * s.workers.replicas + connect


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_spec(spec: ResolvedSpec) -> None:
    """What only this host can judge, checked before anything starts."""
    s, problems = spec.spec, []
    host = len(gpus.visible())
    fix = "use --profile ci-cpu or set gpus: 0"
    if isinstance(s, RaySpec):
        installed, dist, field = _installed("ray"), "ray", "rayVersion"
        wanted = s.ray_version
        asks = [("head.gpus", s.head.gpus, 1)] + [
            (f"workerGroups[{i}].gpus", g.gpus, g.replicas) for i, g in enumerate(s.worker_groups)]
        nodes = 1 + sum(g.replicas for g in s.worker_groups)
        memory = [("head.memory", s.head.memory, 1)] + [
            (f"workerGroups[{i}].memory", g.memory, g.replicas)
            for i, g in enumerate(s.worker_groups)]
        problems += _missing_sources(s)
    else:
        installed, dist, field = _installed("pyspark"), "pyspark", "sparkVersion"
        wanted = s.spark_version
        asks = [("workers.gpus", s.workers.gpus, s.workers.replicas)]
        nodes = 2 + s.workers.replicas
        memory = []  # a Spark worker's memory is what its executors may use, not held
    # Every node of a local cluster shares this host's GPUs: the sum must fit, not each group.
    asked = [(path, n, replicas) for path, n, replicas in asks if n]
    total = sum(n * replicas for _, n, replicas in asked)
    if total > host:
        fields, parts = _summed(asked)
        problems.append((fields,
                         f"asks for {total} GPU(s) but this host has {host} ({parts}); {fix}"))
    # Every node runs here: Ray's object stores (a quarter of each node's memory) are shared
    # memory held from the start, and more than the host has fails the nodes once started.
    # (Memory itself is a Ray resource and a Spark worker's ceiling, held by nobody.)
    held = sum(ray_nodes.object_store(m) * n for _, m, n in memory)
    if memory and held > (host_bytes := psutil.virtual_memory().total):
        fields, parts = _summed(memory)
        problems.append((fields,
                         f"its Ray object stores, a quarter of each node's memory ({parts}), "
                         f"need {held / 2**30:.1f} GiB of shared memory but this host has "
                         f"{host_bytes / 2**30:.1f} GiB in all; use --profile ci-cpu or give "
                         "the nodes less memory"))
    if installed is None:
        problems.append((field, f"the local backend needs {dist} installed: "
                                "pip install 'airflow-provider-ephemeral[local]'"))
    elif installed != wanted:
        problems.append((field, f"the spec wants {wanted} but the local backend runs the installed "
                                f"{dist} {installed}; change {field} or install {dist}=={wanted}"))
    if nodes > slots.MAX_NODES:
        problems.append(("", f"{nodes} nodes; the local backend runs at most {slots.MAX_NODES}"))
    if problems:
        raise SpecError(f"{spec.source} on the local backend", problems)


def _summed(asks: list[tuple[str, Any, int]]) -> tuple[str, str]:
    """The fields of what nodes ask, and the sum written out: ``workerGroups[0].gpus 1 x 2
    replicas + head.gpus 1``."""
    return (", ".join(path for path, _, _ in asks),
            " + ".join(f"{path} {v}" + (f" x {n} replicas" if n > 1 else "")
                       for path, v, n in asks))


def _missing_sources(s: RaySpec) -> list[tuple[str, str]]:
    """``runtimeEnv.env`` references this environment cannot fill: the local backend reads a
    ``fromEnv`` or ``secretKeyRef`` entry from the creating process's variable, and a job
    started without it would run without its credentials."""
    out = []
    for i, var in enumerate(s.runtime_env.env):
        if var.value is not None:
            continue
        src, kind = (var.from_env, "fromEnv") if var.from_env else (var.name, "secretKeyRef")
        if src not in os.environ:
            out.append((f"runtimeEnv.env[{i}].{kind}", (
                f"{var.name}: the local backend reads it from the variable {src} of the "
                f"environment that creates the cluster, and {src} is not set there; set {src} "
                "(e.g. in the Airflow worker's environment) or remove the entry")))
    return out


def node_tmp(temp_root: Path | str) -> Path:
    """``TMPDIR`` of a cluster's nodes and everything they start, inside its temp root."""
    return Path(temp_root) / "tmp"


def _child(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless that is a direct child of ``folder``. Names are
    checked cluster names (``ClusterBackend.target_name``); this keeps even one that skipped
    the check from reaching a parent or a sibling (``down ""`` once removed every cluster's
    state folder, ``down ../../x`` any folder)."""
    path = folder / name
    # (a symlink to a sibling would act on the sibling under this name)
    if not name or path.name != name or path.is_symlink() or \
            path.resolve().parent != folder.resolve():
        raise BackendError(f"{str(path)!r} is not a direct child of {str(folder)!r}: "
                           f"{name!r} is not a cluster name")
    return path


def _instance_of(target: ClusterHandle | ClusterIdentity | str) -> str | None:
    """The deployment a delete of ``target`` may act for: a bare name is this deployment's, an
    identity its own; a handle is checked by its life (``same_life``)."""
    if isinstance(target, ClusterHandle):
        return None
    return target.instance if isinstance(target, ClusterIdentity) else current_instance()


def _refuse_another_instance(name: str, instance: str | None, theirs: str | None) -> None:
    """A delete for deployment ``instance`` (a bare name is this deployment's, as on
    Kubernetes) never acts on a state of ``theirs``, another one."""
    if instance is not None and theirs not in (None, instance):
        raise ClusterNotFound(f"cluster {name!r} belongs to deployment instance {theirs!r}, not "
                              f"this one ({instance!r}); delete it as that deployment: "
                              f"EPHEMERAL_INSTANCE={theirs} ephemeral down {name}")


def _markers(cdir: Path) -> dict[str, str]:
    """What the processes of the cluster of state folder ``cdir`` carry: the folder, and the
    cluster uid if its state file still names it."""
    uid = raw_field(cdir, "uid")
    return {procs.DIR_ENV: str(cdir)} | ({procs.UID_ENV: uid} if uid else {})


TEMP_ROOT = re.compile(r"r[0-9]+-[0-9a-f]{6}")


def _remove_temp_root(temp_root: str | None) -> None:
    """A deleted cluster's temp root, only where and as temp roots are made (a state file,
    which another user of a shared home could edit, names it: its runtime folder's ``slots``
    would be every cluster's claims)."""
    path = Path(temp_root) if temp_root else None
    if path and path.parent == slots.runtime_dir() and TEMP_ROOT.fullmatch(path.name) \
            and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)


def _owner(cdir: Path) -> int | None:
    """The OS user who made the cluster: its state folder's owner (the state file is replaced
    by whoever saves it last)."""
    try:
        return cdir.stat().st_uid
    except OSError:
        return None


def _release(cdir: Path, slot: int) -> None:
    """The slot's claim, after the cluster's processes are gone; a claim that cannot be
    released lapses once the state folder is removed, so it never fails a deletion."""
    try:
        gpus.release(cdir, slot)
        slots.release(cdir, slot)
    except (OSError, EphemeralError) as err:
        log.warning("could not release slot %d of %s (%s); it lapses with the folder",
                    slot, cdir.name, err)


def utf8_locale(env: dict[str, str]) -> dict[str, str]:
    """``env`` with a UTF-8 locale when the one it carries is not: under ``LC_ALL=C`` a JVM
    encodes file names as ASCII and cannot open its properties file in a home such as
    ``/srv/équipe`` (Python copes, Java does not)."""
    current = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""
    if "utf-8" in current.lower() or "utf8" in current.lower():
        return env
    return env | {"LC_ALL": "C.UTF-8"}


class LocalBackend(ClusterBackend):
    name = "local"
    probe_interval = 0.5  # a state file and a local HTTP call or two

    def __init__(self, home: Path | None = None) -> None:
        self.home = (home or get_settings().home).resolve()

    # -- paths and state -------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return _child(self.home / "clusters", name)

    def _lock(self, name: str) -> AbstractContextManager[None]:
        return slots.locked(_child(self.home / "locks", name).with_name(f"{name}.lock"))

    def _state(self, name: str) -> ClusterState | None:
        return load(self._dir(name))

    @classmethod
    def _name(cls, target: ClusterHandle | ClusterIdentity | str) -> str:
        """The name of a cluster this host can act on. A handle made on another host (a
        teardown or job task an executor ran elsewhere, a home shared over NFS) is refused
        naming both hosts: here its name finds no state, or another host's, and its pids
        and addresses would be this host's, so a deletion would report success while the
        cluster ran on."""
        name = cls.target_name(target)
        made_on = target.annotations.get(HOST_ANNOTATION) \
            if isinstance(target, ClusterHandle) else None
        if made_on and made_on != (here := socket.gethostname()):
            raise BackendUnavailable(
                f"cluster {name!r} was made by the local backend on host {made_on!r}, and this "
                f"process runs on {here!r}: a local cluster is processes of the host that made "
                f"it. Delete it there (`ephemeral down {name}` on {made_on}), and run every "
                "task of a DAG on the local backend on one host (the LocalExecutor, or one "
                "worker's queue), or use the kubernetes backend")
        return name

    # -- contract --------------------------------------------------------------------------
    def create(self, spec: ResolvedSpec, *, identity: ClusterIdentity) -> ClusterHandle:
        name = identity.name
        with self._lock(name):
            existing = self._state(name)
            if existing:  # half made or half deleted too: never another deployment's to end
                check_same_owner(existing.handle, identity)
            if existing and (not existing.plan or len(existing.nodes) < len(existing.plan)):
                # Its creator died while claiming or starting nodes: never adopt half a cluster.
                self._delete_locked(name)
                existing = None
            if existing and not existing.deleting:
                check_adoptable(existing.handle, spec.ref, spec.hash, identity)
                return existing.handle.model_copy(update={"adopted": True})
            if existing:  # a deletion was interrupted: finish it before starting afresh
                self._delete_locked(name)
            check_spec(spec)
            job_environ()  # every node's environment: bad settings refused before anything is made
            if isinstance(spec.spec, RaySpec) and (
                    problem := slots.socket_room_problem(slots.runtime_dir())):
                raise BackendUnavailable(problem)
            cdir = self._dir(name)
            # A state before any claim (no slot, no plan yet): a crash from here on leaves a
            # cluster that list_owned, the teardown, run-end and the reaper see, and whose
            # deletion removes the folder that the slot's and GPUs' claims lapse with.
            handle = make_handle(spec, identity, backend=self.name, endpoints=Endpoints())
            handle = handle.model_copy(update={"annotations": handle.annotations | {
                HOST_ANNOTATION: socket.gethostname()}})
            save(cdir, ClusterState(handle=handle, uid=uuid.uuid4().hex, slot=-1, plan=[]))
            slot = -1  # none yet: releasing it is a no-op
            try:  # a claim refused (every slot in use) must not leave that state listed
                slot = slots.claim(cdir, self._node_count(spec))
                counts = node_gpus(spec)
                devices = gpus.per_node(gpus.claim(cdir, slot, sum(counts)), counts)
                return self._start(spec, handle, cdir, slot, devices)
            except BaseException as err:
                self._delete_locked(name)
                _release(cdir, slot)
                if isinstance(err, EphemeralError) or not isinstance(err, Exception):
                    raise  # ours, or an interrupt/timeout that must stay what it is
                raise BackendError(f"starting cluster {name!r} failed: {err}") from err

    @staticmethod
    def _node_count(spec: ResolvedSpec) -> int:
        s = spec.spec
        if isinstance(s, RaySpec):
            return 1 + sum(g.replicas for g in s.worker_groups)
        return 2 + s.workers.replicas

    def _start(self, spec: ResolvedSpec, made: ClusterHandle, cdir: Path,
               slot: int, devices: list[list[str]]) -> ClusterHandle:
        s = spec.spec
        # The cluster's folder in the runtime folder: Ray's per-node --temp-dir and every
        # node's TMPDIR (tempfile, multiprocessing and torchrun in jobs, PySpark's workers).
        # Killed processes never clean up /tmp; this folder goes with the cluster, and its
        # short path fits the Unix sockets made in it.
        temp_root = slots.runtime_dir() / f"r{slot}-{uuid.uuid4().hex[:6]}"  # (TEMP_ROOT)
        if isinstance(s, RaySpec):
            ep = ray_nodes.endpoints(slot)
            planned = ray_nodes.plan(s, slot, temp_root, secrets.create_ray(cdir), devices)
        else:
            ep = spark_nodes.endpoints(s, slot)
            daemons, connect = secrets.create_spark(cdir)
            planned = spark_nodes.plan(s, slot, cdir / "spark", auth_props=daemons,
                                       connect_props=connect, devices=devices)
            spark_nodes.tmp_dir(cdir / "spark").mkdir(parents=True, exist_ok=True)
            for file, text in spark_nodes.resource_files(cdir / "spark", devices).items():
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_text(text)
        handle = made.model_copy(update={"endpoints": ep})
        uid = uuid.uuid4().hex
        state = ClusterState(handle=handle, uid=uid, slot=slot, plan=planned,
                             temp_root=str(temp_root))
        save(cdir, state)  # before any process exists, so a crash from here on is findable
        node_tmp(temp_root).mkdir(mode=0o700, parents=True, exist_ok=True)
        base_env = self._env(s, uid, name=handle.name, tmp=node_tmp(temp_root)) | {
            procs.DIR_ENV: str(cdir)}
        base_env.pop("RAY_AUTH_TOKEN", None)  # would override the cluster's own token file
        for node in planned:
            env = base_env | node.env
            state.nodes.append(procs.spawn(
                node.name, node.argv, log=cdir / "logs" / f"{node.name}.log",
                exit_file=cdir / "exit" / node.name, env=env, cwd=cdir, wait_for=node.wait_for))
            save(cdir, state)
        return handle

    @staticmethod
    def _env(s: RaySpec | SparkSpec, uid: str, *, name: str, tmp: Path) -> dict[str, str]:
        env = utf8_locale(job_environ())
        env |= {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                "TMPDIR": str(tmp),  # a spec's runtimeEnv may name its own
                # `python` in a job's entrypoint is this environment's, as it is the image's
                # own python on Kubernetes.
                "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                         env.get("PATH", os.defpath)])}
        if isinstance(s, RaySpec):
            for var in s.runtime_env.env:
                if var.value is not None:
                    env[var.name] = var.value
                else:  # a reference: read it from this environment, never from the spec
                    src = var.from_env or var.name
                    if src in os.environ:
                        env[var.name] = os.environ[src]
        # The markers teardown finds the cluster's processes by, last: nothing overrides them
        # (the spec model refuses such names too).
        return env | {procs.UID_ENV: uid, "EPHEMERAL_CLUSTER_NAME": name}

    def probe(self, handle: ClusterHandle) -> ClusterStatus:
        return self._probe(self._name(handle))

    def diagnose(self, handle: ClusterHandle) -> str:
        state = self._state(self._name(handle))
        return "\n".join(n.log_tail(15) for n in state.nodes) if state else ""

    def _probe(self, name: str) -> ClusterStatus:
        state = self._state(name)
        if state is None:
            return ClusterStatus(phase=Phase.GONE, message="no such cluster")
        if state.deleting:
            return ClusterStatus(phase=Phase.DELETING, message="being deleted")
        self._raise_if_a_node_failed(state)
        cdir = self._dir(name)
        if state.handle.engine == "ray":
            token = secrets.read(cdir, secrets.RAY_TOKEN)
            return ray_nodes.probe(state.handle.endpoints.dashboard or "", state.plan,
                                   ray_nodes.auth_headers(token) if token else None)
        workers = sum(1 for p in state.plan if p.role == "worker")
        return spark_nodes.probe(workers, state.handle.endpoints,
                                 secrets.read(cdir, secrets.CONNECT_TOKEN))

    def head_view(self, handle: ClusterHandle) -> HeadView:
        """GONE when the cluster's state is gone or being deleted, or its head node's session
        has lost the process that holds the cluster (a Ray head's ``gcs_server``, a Spark
        master's JVM: any process left); RUNNING while it lives."""
        state = self._state(self._name(handle))
        if state is None or state.deleting:
            return HeadView(state=HeadState.GONE, reason="it was deleted" if state is None
                            else "it is being deleted")
        heads = [n for n, p in zip(state.nodes, state.plan, strict=False)
                 if p.role in ("head", "master")]
        if not heads:
            return HeadView(state=HeadState.UNKNOWN, reason="its head node has not started")
        head = heads[0]
        names = procs.session_names(head, state.uid)
        holder = "gcs_server" if state.handle.engine == "ray" else None
        if (holder in names) if holder else names:
            return HeadView(state=HeadState.RUNNING,
                            reason=f"its head node's {holder or 'process'} runs")
        if not names and procs.unreadable_in_session(head):
            return HeadView(state=HeadState.UNKNOWN, reason="its head node's processes cannot "
                            "be read by this OS user")
        left = f" (left: {', '.join(sorted(names))})" if names else ""
        return HeadView(state=HeadState.GONE, reason=f"its head node's "
                        f"{holder or 'processes'} {'is' if holder else 'are'} gone{left}")

    def access(self, handle: ClusterHandle) -> Access:
        """The cluster's URLs and, for Ray, its token as a bearer header, read from the 0600
        file in its state folder (any process of this user on this host can make this). The
        URLs are the state's, never the handle's: the token goes only where the cluster
        answers."""
        token = secrets.read(self._dir(self._name(handle)), secrets.RAY_TOKEN)
        ep = self.endpoints(handle)
        return Access(dashboard=ep.dashboard, spark_ui=ep.spark_ui,
                      connect_ui=spark_nodes.connect_ui(ep),
                      headers=ray_nodes.auth_headers(token) if token else {})

    def spark_auth(self, handle: ClusterHandle) -> SparkAuth:
        """The cluster's ``spark.authenticate`` secret and Spark Connect token."""
        cdir = self._dir(self._name(handle))
        return SparkAuth(secret=secrets.read(cdir, secrets.SPARK_SECRET),
                         connect_token=secrets.read(cdir, secrets.CONNECT_TOKEN))

    @staticmethod
    def _raise_if_a_node_failed(state: ClusterState) -> None:
        failed = []
        for node, planned in zip(state.nodes, state.plan, strict=False):
            code = node.exit_code()
            # ray start exits 0 once its node runs; Spark daemons never exit while healthy.
            ok_exit = ray_nodes.runs_ray_start(planned.argv) and code == 0
            if code is not None and not ok_exit:
                failed.append((node, f"exited with code {code}"))
            elif code is None and not procs.in_session(node, state.uid) \
                    and not procs.leader_is(node.sid, node.started_at):
                failed.append((node, "died without an exit code (killed?)"))
        if failed:
            names = ", ".join(f"{n.name} {why}" for n, why in failed)
            raise ClusterFailed(f"cluster {state.handle.name!r}: node {names}",
                                "\n".join(n.log_tail() for n, _ in failed))

    def endpoints(self, handle: ClusterHandle) -> Endpoints:
        state = self._state(self._name(handle))
        return state.handle.endpoints if state else Endpoints()

    def delete(self, target: ClusterHandle | ClusterIdentity | str, *, wait: bool = True) -> bool:
        name = self._name(target)
        with self._lock(name):
            return self._delete_locked(
                name, wait=wait, life=target if isinstance(target, ClusterHandle) else None,
                instance=_instance_of(target))

    def start_delete(self, target: ClusterHandle | ClusterIdentity | str) -> Deletion | None:
        """SIGKILL now, as ``delete(wait=False)`` does (its processes looked at for 2 s); any
        still there then are killed and looked for again by the wait, until its deadline."""
        name = self._name(target)
        life = target if isinstance(target, ClusterHandle) else None
        try:
            if not self.delete(target, wait=False):
                return None
        except TeardownIncomplete:
            return Deletion(name, lambda deadline: self._delete_by(name, life, deadline))
        return Deletion(name)

    def _delete_by(self, name: str, life: ClusterHandle | None, deadline: float) -> None:
        with self._lock(name):
            self._delete_locked(name, life=life, timeout=max(deadline - time.monotonic(), 0.0))

    def _delete_locked(self, name: str, *, wait: bool = True,
                       life: ClusterHandle | None = None, timeout: float | None = None,
                       instance: str | None = None) -> bool:
        """Delete the cluster ``name``; with ``life``, only when it is that life (``same_life``,
        read under the cluster's lock: no create comes between), else False; with
        ``instance``, only when its state (readable or not) names no other deployment instance.
        Its processes are waited for ``timeout`` seconds, by default 10 (2 without ``wait``)."""
        timeout = timeout if timeout is not None else 10.0 if wait else 2.0
        cdir = self._dir(name)
        try:
            state = load(cdir)
        except BackendError:  # unreadable or of an old schema: still find and kill its processes
            # Whose it is, from the raw file: one a newer version wrote does not parse here.
            _refuse_another_instance(name, instance, raw_instance(cdir))
            self._delete_unreadable(cdir, timeout=timeout)
            return True
        _refuse_another_instance(name, instance, state.handle.instance if state else None)
        if state is None:
            # No state (a crash before its first save, a lost file, a home wiped under a running
            # cluster): processes may still carry its folder's marker, and nothing else will
            # ever find them. One scan of this user's processes.
            self._delete_unreadable(cdir, timeout=timeout)
            return True
        if life is not None and not same_life(state.handle, life):
            log.warning("%s", newer_life(state.handle, life))
            return False
        if state.handle.name != name:  # a folder copied or renamed by hand: not this cluster
            raise BackendError(f"the state in {cdir} is of cluster {state.handle.name!r}, not "
                               f"{name!r}: nothing deleted; move it back or remove it by hand")
        state.deleting = True
        save(cdir, state)
        # SIGKILL at once: an ephemeral cluster has nothing to save on its way out (its jobs
        # wrote their artifacts; its folders go next), and every second a JVM or raylet
        # spends in its shutdown hooks is reserved, idle time.
        # Its folder's marker too: processes of an earlier life of the name whose state was lost
        # would hold its slot's ports, unseen by ``ls`` and every later ``down``.
        left = procs.describe(procs.kill_all(state.nodes, state.uid, grace=0.0, timeout=timeout,
                                             markers={procs.DIR_ENV: str(cdir)}))
        # Processes of its sessions that this OS user can neither read nor end (the cluster was
        # made as another user, e.g. a setup with run_as_user): the state stays for that user.
        if (owner := _owner(cdir)) is not None and owner != os.getuid():
            left += [f"{p}, OS user {owner}'s: delete it as the user that created it"
                     for p in procs.describe(p for n in state.nodes
                                             for p in procs.unreadable_in_session(n, owner))]
        if left:
            raise TeardownIncomplete(name, left)
        _remove_temp_root(state.temp_root)
        _release(cdir, state.slot)
        shutil.rmtree(cdir, ignore_errors=True)
        return True

    def unrecorded(self, name: str) -> list[str]:
        try:
            if self._state(name) is not None:
                return []
        except BackendError:  # unreadable: found by its markers, as a deletion finds it
            pass
        return procs.describe(procs.find_marked(_markers(self._dir(name))))

    def _delete_unreadable(self, cdir: Path, *, timeout: float) -> None:
        """Delete a cluster whose state cannot be read, by the markers its processes carry."""
        left = procs.kill_marked(_markers(cdir), timeout=timeout)
        if left:
            raise TeardownIncomplete(cdir.name, procs.describe(left))
        _remove_temp_root(raw_field(cdir, "temp_root", "ray_temp_root"))
        shutil.rmtree(cdir, ignore_errors=True)  # its slot claim lapses with the folder

    def owned(self, handle: ClusterHandle, selector: OwnerSelector) -> ClusterHandle | None:
        try:
            state = self._state(self._name(handle))
        except BackendUnavailable:
            raise  # another host's: said, never "not this run's"
        except BackendError:
            return None
        return state.handle if state and selector.admits(state.handle) else None

    def list_owned(self, selector: OwnerSelector | None = None) -> list[ClusterHandle]:
        selector = selector or OwnerSelector()
        root = self.home / "clusters"
        out = []
        for cdir in sorted(root.iterdir()) if root.is_dir() else []:
            if not cdir.is_dir():  # a stray file (.DS_Store, an editor's backup): no cluster
                continue
            try:
                state = load(cdir)
            except BackendError as err:
                # One broken file must not hide every other cluster from teardown and reaper.
                theirs = raw_instance(cdir)
                log.warning("skipping %s: %s; `%sephemeral down %s` still deletes it",
                            state_file(cdir), err,
                            f"EPHEMERAL_INSTANCE={theirs} " if theirs else "", cdir.name)
                continue
            if state and selector.admits(state.handle):
                out.append(_listed(state, cdir))
        return out

    # -- extras used by the CLI and tests --------------------------------------------------
    def pids(self, name: str) -> list[int]:
        """Pids of every live process of the cluster (what delete must leave none of)."""
        state = self._state(name)
        return [p.pid for p in procs.find(state.nodes, state.uid)] if state else []

    def node_plan(self, name: str) -> list[PlannedNode]:
        state = self._state(name)
        return state.plan if state else []


def _listed(state: ClusterState, cdir: Path) -> ClusterHandle:
    """The handle ``list_owned`` gives: one whose deletion began says so (``Deleting``), since
    its state's last save, which was the one that marked it."""
    if not state.deleting:
        return state.handle
    try:
        marked = state_file(cdir).stat().st_mtime
    except OSError:  # its deletion ended since the state was read
        marked = time.time()
    since = datetime.fromtimestamp(marked, UTC)
    return state.handle.model_copy(update={"deleting": Deleting(
        since=utc_text(since), in_background=False)})
