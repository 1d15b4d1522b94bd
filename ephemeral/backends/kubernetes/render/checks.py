"""What Kubernetes cannot run of a spec, in one place: every renderer refuses with ``refuse``
before it makes anything, and ``specs show --backend kubernetes``, ``up`` and ``render`` list
the same problems (``backends.notes.refusals``), all of them at once.

- Ray: a ``fromEnv`` variable (its value would be written into the manifest) and a Ray older
  than token authentication needs.
- Spark, both modes: pods whose share of memory leaves Spark under its minimum heap, and an
  executor asking for more heap than a worker gives (each mode splits a pod differently:
  ``ExecutorHeap``).
- Spark's operator mode: no Connect server, a ``master`` it has no place for, an executor cap
  or executor cores other than the workers' (``spark_operator.unhonoured``), a GPU resource
  Spark cannot ask for, the conf keys the operator's webhook refuses or sets itself.
- Both engines: a version the image's tag contradicts (the image decides what runs there); a
  tag that names no version gets a note instead (``version_note``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

from ephemeral.backends.kubernetes.render.common import jvm_heap
from ephemeral.backends.kubernetes.render.ray import TOKEN_AUTH_SINCE
from ephemeral.backends.kubernetes.render.spark import heap_sizes
from ephemeral.backends.kubernetes.render.spark_operator import (
    DENIED_CONF,
    executor_heap,
    unhonoured,
)
from ephemeral.errors import SpecError
from ephemeral.specs.models import RaySpec, SparkSpec, spark_bytes
from ephemeral.specs.resolve import ResolvedSpec

Problems = list[tuple[str, str]]
"""(field, why and fix) of each problem."""

MIN_HEAP_MIB = 450  # Spark refuses an executor or driver heap under this (its minSystemMemory)
_MIB = 2**20
# A version at the start of an image tag: 2.60.0-py311-gpu, 4.3.0-python3, v3.5, 3.5.1. A
# major of four digits is a date (a custom 2024.06-python3), no version.
_TAG_VERSION = re.compile(r"v?([0-9]{1,3}(?:\.[0-9]+){1,2})(?![0-9])")
# What bash rewrites in a word, wherever it stands: the operator joins sparkConf unquoted into
# `bash -c`. (Braces without a comma, as Spark's {{APP_ID}}, and globs matching no file stay.)
_SHELL = re.compile(r"[\s'\"$`\\;&|<>()]")


@dataclass(frozen=True)
class ExecutorHeap:
    """How a mode gives executors heap from ``workers.memory``."""

    offered: Callable[[str], int]
    """MiB of heap an executor gets from a worker of that memory."""
    of_worker: str
    """What that heap is, for a message."""
    beyond: str
    """What happens to an executor that asks for more."""


STANDALONE = ExecutorHeap(lambda memory: heap_sizes(memory)[1], "a worker offers executors",
                          "no executor could start")
OPERATOR = ExecutorHeap(executor_heap, "operator mode's executor heap", "the executor pod "
                        "(this heap plus the overhead derived from workers.memory) would be "
                        "larger than workers.memory, its limit")


def problems(spec: ResolvedSpec, *, operator: bool = False) -> Problems:
    """Everything Kubernetes cannot run of ``spec``; ``operator``: a Spark spec as a
    SparkConnect."""
    s = spec.spec
    if isinstance(s, RaySpec):
        return _from_env(s) + _too_old(s.ray_version, TOKEN_AUTH_SINCE) + _image_version(s)
    if not operator:
        return _image_version(s) + memory_problems(s, STANDALONE)
    out: Problems = []
    if not (s.connect and s.connect.enabled):
        out.append(("connect.enabled", "operator mode runs a Spark Connect server (a "
                    "SparkConnect): enable connect, or use kubernetesMode: standalone for a "
                    "cluster without it"))
    out += unhonoured(s) + _image_version(s)
    vendor, _, name = s.workers.gpu_resource.rpartition("/")
    if s.workers.gpus and (name != "gpu" or not vendor):
        out.append(("workers.gpuResource", f"{s.workers.gpu_resource!r}: Spark on the "
                    "spark-operator requests GPUs as <vendor>/gpu (e.g. nvidia.com/gpu); use "
                    "standalone mode for other resource names"))
    conf = s.conf | (s.connect.conf if s.connect else {})
    denied: dict[str, list[str]] = {}  # why: keys
    for key in sorted(k for k in conf if k in DENIED_CONF):
        denied.setdefault(DENIED_CONF[key], []).append(key)
    out += [("conf", f"{', '.join(keys)}: set by the spark-operator in operator mode ({why}); "
             "remove them or use standalone mode") for why, keys in denied.items()]
    for where, given in s.confs():
        out += [(f"{where}.{k}", f"{v!r}: the spark-operator (2.5) starts the Connect server "
                 "through bash with sparkConf unquoted, so spaces, quotes, $ and other shell "
                 "characters would not reach Spark as written (the server may not start); use "
                 "kubernetesMode: standalone for this value")
                for k, v in given.items() if _SHELL.search(v)]
    return out + memory_problems(s, OPERATOR)


def refuse(spec: ResolvedSpec, *, operator: bool = False) -> None:
    """Raise SpecError naming every problem ``problems`` finds."""
    if found := problems(spec, operator=operator):
        raise SpecError(spec.source, found)


def memory_problems(s: SparkSpec, heap: ExecutorHeap) -> Problems:
    """Pods whose share of memory leaves Spark under its minimum heap: on Kubernetes a pod's
    memory is split (heaps, JVM overhead), so the spec's floor, which the local backend needs,
    is not enough; and an executor the spec asks for that a worker's share cannot hold (the
    spec checks it against all of workers.memory, what a local worker offers)."""
    out: Problems = []
    offered = heap.offered(s.workers.memory)
    if offered < MIN_HEAP_MIB:
        out.append(("workers.memory", f"{s.workers.memory} leaves executors under Spark's "
                    f"{MIN_HEAP_MIB} MiB heap on Kubernetes; give workers at least "
                    f"{_least(heap.offered)}Mi"))
    if s.connect and s.connect.enabled and jvm_heap(s.connect.memory) < MIN_HEAP_MIB:
        out.append(("connect.memory", f"{s.connect.memory} leaves the Connect server's driver "
                    f"under Spark's {MIN_HEAP_MIB} MiB heap on Kubernetes; give it at least "
                    f"{_least(jvm_heap)}Mi"))
    for where, conf in s.confs():
        asked = spark_bytes(conf.get("spark.executor.memory", ""))
        if asked is not None and asked > offered * _MIB:
            out.append((f"{where}.spark.executor.memory",
                        f"{conf['spark.executor.memory']} is more than {heap.of_worker} on "
                        f"Kubernetes ({offered}m of workers.memory {s.workers.memory}): "
                        f"{heap.beyond}; ask for at most {offered}m, or give the workers more "
                        "memory"))
    return out


def _least(heap: Callable[[str], int]) -> int:
    """The least memory, in MiB rounded up to a hundred, whose ``heap`` reaches Spark's
    minimum."""
    least = next(m for m in itertools.count(MIN_HEAP_MIB) if heap(f"{m}Mi") >= MIN_HEAP_MIB)
    return -(-least // 100) * 100


def _from_env(s: RaySpec) -> Problems:
    return [(f"runtimeEnv.env[{i}].fromEnv", f"{var.name}: fromEnv is not supported on "
             "Kubernetes (its value would be written into the manifest); put the value in a "
             "Secret and use secretKeyRef")
            for i, var in enumerate(s.runtime_env.env) if var.from_env is not None]


def _too_old(version: str, least: tuple[int, ...]) -> Problems:
    if _parts(version)[:len(least)] >= least:
        return []
    wanted = ".".join(map(str, least))
    return [("rayVersion", f"{version} is older than {wanted}, which token authentication "
             f"(always on for Kubernetes clusters) needs on Kubernetes; use {wanted} or newer")]


def _parts(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


# The repositories whose tags are the engine's version (rayproject/ray:2.60.0-py311-gpu,
# apache/spark:4.3.0-python3, a registry's mirror of them): a custom image's tag is its own.
_ENGINE_REPOS = {"Ray": ("ray", "ray-ml"), "Spark": ("spark", "spark-py")}


def image_version(image: str, engine: str) -> str | None:
    """The version the tag of ``engine``'s image starts with (``rayproject/ray:2.60.0-py311-gpu``:
    2.60.0), or None: no tag (latest), a digest alone, a tag that names none (``nightly``), or
    a repository of another name (``acme/ray-train:1.4.2``: its own version)."""
    name = image.split("@", 1)[0]
    repo, _, tag = name.rpartition("/")[2].partition(":")
    if repo not in _ENGINE_REPOS[engine]:
        return None
    match = _TAG_VERSION.match(tag)
    return match.group(1) if match else None


def _engine(s: RaySpec | SparkSpec) -> tuple[str, str, str]:
    """(engine, its version field, the spec's version)."""
    if isinstance(s, RaySpec):
        return "Ray", "rayVersion", s.ray_version
    return "Spark", "sparkVersion", s.spark_version


def _image_version(s: RaySpec | SparkSpec) -> Problems:
    engine, field, version = _engine(s)
    tagged = image_version(s.image, engine)
    if tagged is None or _parts(version)[:len(_parts(tagged))] == _parts(tagged):
        return []
    return [(field, f"{version}, but the image {s.image} is tagged {tagged}: on Kubernetes the "
             f"image decides which {engine} runs; make {field} the image's version, or use an "
             f"image of {engine} {version}")]


def version_note(s: RaySpec | SparkSpec) -> str | None:
    """A note for an image whose tag names no version: nothing checks the spec's version
    against what it holds."""
    engine, field, version = _engine(s)
    if image_version(s.image, engine) is not None:
        return None
    return (f"image {s.image}: its tag names no {engine} version, and on Kubernetes the image "
            f"decides which {engine} runs, whatever {field} ({version}) says; an image of "
            f"{engine}'s own repository tagged {version}-… is checked against it")
