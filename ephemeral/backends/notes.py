"""What a backend does with a spec other than its fields say, in one place: ``specs show``,
``up`` and ``render`` print these notes (a ``notes`` field with ``--json``), so no field is a
silent no-op. What a backend cannot honour at all is refused instead (``refusals``: on
Kubernetes what its renderers refuse, ``render.checks``).

The local backend (and the in-memory test double) runs every node as a process on this host:
no autoscaling, no placement, no CPU limits for the Spark master and Connect server, the
installed Ray or Spark whatever the image. Kubernetes runs a Spark spec standalone or, in
operator mode, as a SparkConnect whose executors come and go with the work. On every backend, a
field a profile or an override left with nothing to act on (a Connect server turned off, a
node's GPUs taken) is noted, not refused: that is the caller's choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ephemeral.specs.models import (
    NVIDIA_GPU,
    GpuFields,
    Placement,
    RaySpec,
    SparkSpec,
    SparkWorkers,
)

if TYPE_CHECKING:
    from ephemeral.backends.kubernetes.config import SparkMode
    from ephemeral.specs.resolve import ResolvedSpec

KUBERNETES = "kubernetes"


def spark_operator_mode(spec: ResolvedSpec, backend: str, default_spark_mode: str) -> bool:
    """Whether ``spec`` runs as a SparkConnect on ``backend``: on Kubernetes, by its own
    ``kubernetesMode`` or else the deployment's (``default_spark_mode``)."""
    s = spec.spec
    return backend == KUBERNETES and isinstance(s, SparkSpec) and \
        (s.kubernetes_mode or default_spark_mode) == "operator"


def refusals(spec: ResolvedSpec, backend: str, *,
             default_spark_mode: str = "standalone") -> list[tuple[str, str]]:
    """(field, why and fix) of what ``backend`` cannot honour: on Kubernetes, what its
    renderers refuse (``render.checks``, the one rule)."""
    from ephemeral.backends.kubernetes.render.checks import problems

    if backend != KUBERNETES:
        return []
    return problems(spec, operator=spark_operator_mode(spec, backend, default_spark_mode))


def backend_notes(spec: ResolvedSpec, backend: str, *,
                  default_spark_mode: str = "standalone") -> list[str]:
    """What ``backend`` does differently from what the spec's fields say elsewhere, then what
    every backend does alike with a field short of what it says (``_everywhere``)."""
    own = _kubernetes(spec, default_spark_mode) if backend == KUBERNETES \
        else _processes(spec, backend)
    return own + _everywhere(spec.spec)


def _everywhere(s: RaySpec | SparkSpec) -> list[str]:
    """Fields of the effective spec that no backend uses, or uses for little: noted, not
    refused, where a profile or an override may have made them so (the caller's choice), or
    where some work still uses them."""
    from ephemeral.backends.base import CONNECT_DRIVER

    notes = _no_gpus(s)
    if isinstance(s, RaySpec):
        return notes + _head_gpus(s)
    if s.connect is not None and s.connect.enabled:
        return notes
    if s.connect is not None and (names := s.connect.customised()):
        # A spec file refuses these with enabled: false (SparkSpec._connect_off_sets_nothing).
        notes.append(f"{', '.join(f'connect.{n}' for n in names)}: connect.enabled is false "
                     "here (by the profile or the connect override), so no Connect server runs "
                     "and these do nothing; they apply again when it is on")
    # Not refused: the connect override turns the server off under a spec that sets them.
    if driver := sorted(k for k in s.conf if k.startswith(CONNECT_DRIVER)):
        notes.append(f"{', '.join(f'conf.{k}' for k in driver)}: the spec's {CONNECT_DRIVER}* "
                     "settings go to its Connect server alone (a spark-submit driver runs in "
                     "its task's process and does not get them), and no Connect server runs "
                     "(connect is absent or off), so they reach no process: set them in the "
                     "application's own conf (EphemeralSparkSubmitOperator's conf or "
                     "driver_memory, ephemeral spark-submit --conf), or turn the Connect server "
                     "on (connect.enabled: true)")
    return notes


def _head_gpus(s: RaySpec) -> list[str]:
    """GPUs on a head that offers tasks no CPUs (both backends start it with --num-cpus=0):
    only work that asks for no CPU can use them, and the reference training workers ask for
    CPUs and are sized from the worker groups alone (``jobs.scaling``). Not refused: a job's
    driver (``entrypoint_num_gpus``, 0 CPUs by default) or a num_cpus=0 actor is such work."""
    if not s.head.gpus or s.head.run_tasks:
        return []
    return [f"head.gpus {s.head.gpus}: the head offers tasks no CPUs (runTasks is false), so "
            "only work that asks for no CPU uses these GPUs (a job's driver with "
            "entrypoint_num_gpus, a task or actor with num_cpus=0); a training worker asks "
            "for CPUs and runs on the worker groups (ddp_args counts only those): set "
            "runTasks: true to offer the head's CPUs too, or gpus: 0 not to pay for GPUs "
            "nothing uses"]


def spark_mode_of(backend: object) -> SparkMode:
    """A backend's default Spark mode: the Kubernetes deployment's (``EPHEMERAL_K8S_SPARK_MODE``),
    standalone elsewhere."""
    mode = getattr(getattr(backend, "config", None), "spark_mode", "standalone")
    return "operator" if mode == "operator" else "standalone"


def _placed(path: str, p: Placement) -> list[str]:
    return [f"{path}.{name}" for name, given in
            (("nodeSelector", p.node_selector), ("tolerations", p.tolerations)) if given]


def _processes(spec: ResolvedSpec, backend: str) -> list[str]:
    s = spec.spec
    notes: list[str] = []
    if isinstance(s, RaySpec):
        if not s.head.run_tasks and s.head.cpu != type(s.head)().cpu:
            notes.append(f"head.cpu: the {backend} backend starts the Ray head with no CPUs "
                         "for tasks (runTasks is false) and does not limit its process's "
                         "CPUs (on Kubernetes, the head pod's CPU request and limit); set "
                         "runTasks: true to offer them to tasks")
        notes += [f"runtimeEnv.env[{v.name}].secretKeyRef: the {backend} backend takes ${v.name} "
                  "from its own environment, not Secret "
                  f"{v.secret_key_ref.name}/{v.secret_key_ref.key} (on Kubernetes, that Secret's "
                  "key)" for v in s.runtime_env.env if v.secret_key_ref is not None]
        notes += [f"worker group {g.name!r}: minReplicas {g.min} != maxReplicas {g.max}, but "
                  f"the {backend} backend does not autoscale: it starts replicas ({g.replicas}) "
                  "nodes and keeps them (on Kubernetes, KubeRay's autoscaler scales between "
                  "the two)" for g in s.worker_groups if g.min != g.max]
        placed = _placed("head", s.head)
        for g in s.worker_groups:
            placed += _placed(f"workerGroups[{g.name}]", g)
    else:
        # Only servers that run: a Connect server that is off is noted as such (_everywhere).
        servers = [("master", "Spark master", s.master.cpu != type(s.master)().cpu)]
        if s.connect is not None and s.connect.enabled:
            servers.append(("connect", "Connect server", "cpu" in s.connect.customised()))
        if unlimited := [(name, what) for name, what, changed in servers if changed]:
            notes.append(f"{', '.join(f'{name}.cpu' for name, _ in unlimited)}: the {backend} "
                         "backend does not limit the CPUs of the "
                         f"{' and '.join(what for _, what in unlimited)}, processes on this "
                         "host (memory applies; on Kubernetes, the pods' CPU requests)")
        if s.kubernetes_mode == "operator":
            notes.append(f"kubernetesMode operator: the {backend} backend runs Spark "
                         "standalone, a master and workers.replicas workers from start to "
                         "teardown (on Kubernetes, a SparkConnect)")
        notes += _standalone_k8s_conf(s, f"the {backend} backend")
        placed = _placed("master", s.master) + _placed("workers", s.workers)
        if s.connect is not None and s.connect.enabled:
            placed += _placed("connect", s.connect)
    if placed:
        notes.append(f"{', '.join(placed)}: the {backend} backend runs every node on this "
                     "host (placement applies on Kubernetes)")
    # Always: image has no default, every spec sets one (and the version check is the local
    # backend's, against what is installed).
    engine, version = (f"Ray {s.ray_version}", "rayVersion") if isinstance(s, RaySpec) \
        else (f"Spark {s.spark_version}", "sparkVersion")
    notes.append(f"image {s.image}: the {backend} backend runs this host's installed {engine} "
                 f"(it must be the spec's {version}), not the image (on Kubernetes, every node "
                 "runs the image)")
    return notes + _local_gpus(s, backend)


def _gpu_nodes(s: RaySpec | SparkSpec) -> list[tuple[str, GpuFields]]:
    """The nodes that may have GPUs, by their path in the spec."""
    return [("head", s.head), *((f"workerGroups[{g.name}]", g) for g in s.worker_groups)] \
        if isinstance(s, RaySpec) else [("workers", s.workers)]


def _no_gpus(s: RaySpec | SparkSpec) -> list[str]:
    """GPU fields of a node with no GPUs: every backend reads them only for a node's GPUs. Not
    refused: a profile or an override takes a GPU spec's GPUs (ci-cpu, the form's gpus: 0)."""
    notes = []
    for path, n in _gpu_nodes(s):
        moot = [name for name, given in (
            ("gpuResource", n.gpu_resource != NVIDIA_GPU),
            ("discoveryScript", isinstance(n, SparkWorkers) and bool(n.discovery_script)))
            if given]
        if moot and not n.gpus:
            notes.append(f"{', '.join(f'{path}.{name}' for name in moot)}: {path}.gpus is 0, "
                         "so the node asks for no GPU and these do nothing: they apply only "
                         f"when {path} has gpus (a spec for nodes without GPUs need not set "
                         "them)")
    return notes


def _local_gpus(s: RaySpec | SparkSpec, backend: str) -> list[str]:
    """How this host's GPUs stand in for what the spec says of them."""
    notes = [f"{path}.gpuResource {n.gpu_resource}: the {backend} backend gives nodes this "
             "host's GPUs by CUDA_VISIBLE_DEVICES (NVIDIA's), whatever the resource"
             for path, n in _gpu_nodes(s) if n.gpus and n.gpu_resource != NVIDIA_GPU]
    if isinstance(s, SparkSpec) and s.workers.gpus and s.workers.discovery_script:
        notes.append(f"workers.discoveryScript: the {backend} backend lists each worker's "
                     "GPUs in a resources file instead (the script is the image's, on "
                     "Kubernetes)")
    return notes


def _standalone_k8s_conf(s: SparkSpec, runner: str) -> list[str]:
    """spark.kubernetes.* settings where Spark runs standalone (``runner``): only Spark's own
    Kubernetes scheduler reads them, which only operator mode runs; BACKEND_CONF refuses those
    a backend sets itself. A server that is off has its conf noted whole (``_everywhere``)."""
    confs = [("conf", s.conf)]
    if s.connect is not None and s.connect.enabled:
        confs.append(("connect.conf", s.connect.conf))
    if keys := [f"{where}.{k}" for where, conf in confs for k in sorted(conf)
                if k.startswith("spark.kubernetes.")]:
        return [f"{', '.join(keys)}: only Spark's Kubernetes scheduler reads spark.kubernetes.* "
                f"settings, and {runner} runs Spark standalone, where they do nothing (they "
                "apply in operator mode on Kubernetes, kubernetesMode: operator): remove them, "
                "or run the spec in operator mode"]
    return []


def _kubernetes(spec: ResolvedSpec, default_spark_mode: str) -> list[str]:
    from ephemeral.backends.base import EXECUTOR_IDLE
    from ephemeral.backends.kubernetes.render.checks import version_note

    s = spec.spec
    notes = [note] if (note := version_note(s)) else []
    notes += _references(s)
    if not isinstance(s, SparkSpec):
        return notes
    if not spark_operator_mode(spec, KUBERNETES, default_spark_mode):
        return notes + _standalone_k8s_conf(s, "Kubernetes' standalone mode")
    chosen = "kubernetesMode" if s.kubernetes_mode else "the deployment's EPHEMERAL_K8S_SPARK_MODE"
    return [
        *notes,
        f"operator mode ({chosen}): a SparkConnect, no master; executors are pods its "
        f"Connect server makes while work runs, at most workers.replicas "
        f"({s.workers.replicas}), released {EXECUTOR_IDLE} after their last task (the run "
        "report counts them all: an upper bound); spark-submit has no master to go to"]


def _references(s: RaySpec | SparkSpec) -> list[str]:
    """Values that look like Kubernetes' ``$(VAR)`` references: passed as written, as on every
    backend (``render.common.literal``), so one written for Kubernetes to expand is said."""
    values = [(f"runtimeEnv.env[{v.name}]", v.value) for v in s.runtime_env.env] \
        if isinstance(s, RaySpec) else [
            (f"{where}.{k}", v) for where, conf in s.confs() for k, v in conf.items()]
    named = [path for path, value in values if value is not None and "$(" in value]
    return [f"{', '.join(named)}: a $(VAR) in a value reaches the process as written, as on "
            "every backend: Kubernetes does not expand it here; give the value itself, or a "
            "secretKeyRef for a secret"] if named else []
