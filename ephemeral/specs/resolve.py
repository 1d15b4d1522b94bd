"""From a reference, a profile and user overrides to the effective spec a backend creates.

Order: the spec file, then the profile (a place it runs: ``ci-cpu`` for CPU-only CI and laptops),
then overrides (the right-sizing knob of the trigger form). The effective spec is validated as a
whole again, so a profile or override that makes it invalid fails like a bad file would.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from ephemeral.errors import SpecError
from ephemeral.specs.loader import load_file, parse_spec, problems_of, resolve_ref, spec_hash
from ephemeral.specs.models import (
    GPU_AMOUNT,
    GpuCount,
    Model,
    Number,
    PositiveCpu,
    RaySpec,
    SparkSpec,
    positive,
    ray_cpus_problem,
)
from ephemeral.specs.quantities import Memory, format_memory, memory_bytes

CI_CPU = "ci-cpu"
# The built-in part of ci-cpu: a CPU-only machine, small nodes, still multi-node.
_CI_MAX_CPU, _CI_MAX_MEMORY, _CI_MAX_REPLICAS = 1, 2 * 2**30, 2


class GroupOverride(Model):
    replicas: Annotated[int | None, Number] = Field(default=None, ge=1, le=1000)
    cpu: PositiveCpu | None = None
    memory: Memory | None = None
    gpus: GpuCount | None = None


class HeadOverride(Model):
    cpu: PositiveCpu | None = None
    memory: Memory | None = None


class Overrides(Model):
    """User right-sizing. ``workers`` applies to every worker group, ``groups`` to one by name."""

    head: HeadOverride | None = None
    workers: GroupOverride | None = None
    groups: dict[str, GroupOverride] = Field(default_factory=dict)
    connect: bool | None = None
    """Spark only: start the Spark Connect server or not. A pipeline that only runs
    ``spark-submit`` jobs saves a JVM and the time it takes to start."""
    raise_max_replicas: bool = False
    """Opt-in: let ``replicas`` exceed a group's ``maxReplicas`` (which is raised to fit).
    Without it such an override is refused: the spec's maximum is its author's size limit, and
    only a caller that checked a higher cap of its own (a deployment setting) may pass it."""

    def is_empty(self) -> bool:
        # raise_max_replicas alone changes nothing: it only permits what other fields ask.
        return (self.head is None and self.workers is None and not self.groups
                and self.connect is None)


@dataclass(frozen=True)
class ResolvedSpec:
    spec: RaySpec | SparkSpec
    ref: str
    """Canonical reference: ``ray/train-gpu@3`` (or the file path for specs outside the tree)."""
    source: str
    profile: str | None
    hash: str
    """Content hash of the effective spec: what identity conflicts are judged by."""

    @property
    def engine(self) -> str:
        return self.spec.engine

    def label(self) -> str:
        return self.ref + (f" [{self.profile}]" if self.profile else "")


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        # An empty mapping clears (e.g. `nodeSelector: {}` in a CPU profile); others merge.
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _overlay(data: dict[str, Any], overlay: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge a profile overlay; ``workerGroups`` in an overlay is a mapping by group name."""
    overlay = dict(overlay)
    if "workerGroups" in overlay and overlay["workerGroups"] is None:
        raise SpecError(source, [("workerGroups", "empty in a profile: map a group name to "
                                  "the fields to change, or remove workerGroups")])
    groups = overlay.pop("workerGroups", None)
    for forbidden in ("kind", "name", "version", "profiles"):
        if forbidden in overlay:
            raise SpecError(source, [(forbidden, "a profile cannot change this field")])
    out = _merge(data, overlay)
    if groups is not None:
        if not isinstance(groups, dict):
            raise SpecError(source, [("workerGroups", "in a profile, workerGroups maps a group "
                                      "name to the fields to change")])
        existing = {g.get("name"): i for i, g in enumerate(out.get("workerGroups", []))}
        for name, patch in groups.items():
            if name not in existing:
                raise SpecError(source, [(f"workerGroups.{name}", "no worker group of that name; "
                                          f"groups: {', '.join(map(str, existing))}")])
            if patch is not None and not isinstance(patch, dict):
                raise SpecError(source, [(f"workerGroups.{name}", "in a profile, a worker group "
                                          "maps to the fields to change, such as replicas: 1")])
            i = existing[name]
            out["workerGroups"][i] = _merge(out["workerGroups"][i], patch or {})
    return out


def _nodes(data: dict[str, Any]) -> list[tuple[str, dict[str, Any], str, bool]]:
    """Every node of a spec as (field path, node, its CPU key, whether it may have GPUs)."""
    if data.get("kind") == "RayCluster":
        return [("head", data.setdefault("head", {}), "cpu", True)] + [
            (f"workerGroups.{g.get('name')}", g, "cpu", True) for g in data.get("workerGroups", [])]
    out = [("workers", data.setdefault("workers", {}), "cores", True),
           ("master", data.setdefault("master", {}), "cpu", False)]
    if isinstance(data.get("connect"), dict):
        out.append(("connect", data["connect"], "cpu", False))
    return out


def _drop_gpu_asks(data: dict[str, Any]) -> dict[str, Any]:
    """No GPUs: nothing may ask for one (Spark's task and executor GPU amounts)."""
    for conf in (data.get("conf"), (data.get("connect") or {}).get("conf")):
        if isinstance(conf, dict):
            for key in [k for k, v in conf.items()
                        if GPU_AMOUNT.fullmatch(str(k)) and positive(str(v))]:
                del conf[key]
    return data


def _ci_cpu(data: dict[str, Any]) -> dict[str, Any]:
    """ci-cpu's built-in sizes. A group's replica bounds stay for the overrides (the spec's
    maxReplicas still limits them) and go afterwards (``_fixed_size``)."""
    out = copy.deepcopy(data)  # its nodes' GPU placement and asks go in _off_gpu_nodes
    for _, node, cpu_key, gpus in _nodes(out):
        if gpus:
            node["gpus"] = 0
            node.pop("discoveryScript", None)
        if cpu_key in node:
            node[cpu_key] = min(node[cpu_key], _CI_MAX_CPU)
        if "memory" in node:
            node["memory"] = format_memory(min(memory_bytes(str(node["memory"])), _CI_MAX_MEMORY))
        if "replicas" in node:
            node["replicas"] = min(node["replicas"], _CI_MAX_REPLICAS)
            if node.get("minReplicas") is not None:
                node["minReplicas"] = min(node["minReplicas"], node["replicas"])
    return out


def _within_ci_cpu(shrunk: dict[str, Any], final: dict[str, Any], source: str) -> None:
    """Overrides size a ci-cpu cluster within ci-cpu: a CPU-only place gets no GPUs, and the
    small sizes it promises are not lifted by a flag or a form field (the spec's own ``ci-cpu``
    entry may set its sizes; only what the overrides changed is judged)."""
    problems = []
    earlier = {path: node for path, node, _, _ in _nodes(copy.deepcopy(shrunk))}
    for path, after, cpu_key, _ in _nodes(final):
        before = earlier.get(path, {})  # a node the overrides added (connect) is judged whole
        limits = {"gpus": (0, "0 GPUs"),
                  cpu_key: (_CI_MAX_CPU, f"at most {_CI_MAX_CPU} CPU per node"),
                  "memory": (_CI_MAX_MEMORY, f"at most {format_memory(_CI_MAX_MEMORY)} per node"),
                  "replicas": (_CI_MAX_REPLICAS, f"at most {_CI_MAX_REPLICAS} workers per group")}
        for key, (cap, allowed) in limits.items():
            asked = after.get(key)
            if asked is None or asked == before.get(key):
                continue
            if (memory_bytes(str(asked)) if key == "memory" else asked) > cap:
                problems.append((f"{path}.{key}", f"profile {CI_CPU} runs without GPUs; ask "
                                 "for 0, or choose no profile" if key == "gpus" else
                                 f"{asked} is more than profile {CI_CPU} allows; ask for "
                                 f"{allowed}, or choose no profile"))
    if problems:
        raise SpecError(source, problems)


def _fixed_size(data: dict[str, Any]) -> dict[str, Any]:
    """ci-cpu runs a fixed size: no autoscaling bounds once the overrides are applied."""
    for _, node, _, _ in _nodes(data):
        for bound in ("minReplicas", "maxReplicas"):
            node.pop(bound, None)
    return data


def _fit_bounds(node: dict[str, Any], replicas: int, field: str, raise_max: bool,
                source: str) -> None:
    """Keep an overridden replica count inside the group's bounds.

    Fewer replicas than ``minReplicas`` lowers the minimum (smaller is always safe). More than
    ``maxReplicas`` is refused unless the caller opted in: the spec's maximum is a size limit
    that a form or a CLI flag must not silently lift.
    """
    if node.get("minReplicas") is not None and node["minReplicas"] > replicas:
        node["minReplicas"] = replicas
    top = node.get("maxReplicas")
    if top is not None and top < replicas:
        if not raise_max:
            group = f" of worker group {node['name']!r}" if node.get("name") else ""
            raise SpecError(source, [(field, f"{replicas} is above maxReplicas ({top}){group}; "
                                      f"ask for at most {top}, or raise maxReplicas in the spec")])
        node["maxReplicas"] = replicas


def _apply_overrides(data: dict[str, Any], ov: Overrides, source: str) -> dict[str, Any]:
    out = copy.deepcopy(data)
    ray = out.get("kind") == "RayCluster"

    def patch(node: dict[str, Any], g: GroupOverride | HeadOverride, path: str,
              skip: frozenset[str] = frozenset()) -> None:
        for key, value in g.model_dump(exclude_none=True, by_alias=True).items():
            if key in skip:
                continue
            if key == "cpu" and not ray and path != "head":
                if float(value) != int(value):
                    raise SpecError(source, [(f"{path}.cpu", "Spark worker cores are whole numbers")])
                key, value = "cores", int(value)
            # Named as the override (--cpu, the form's field), not as the spec field it sets.
            if key == "cpu" and ray and path != "head" and (why := ray_cpus_problem(value)):
                raise SpecError(source, [(f"{path}.cpu", why)])
            if key == "replicas":
                _fit_bounds(node, value, f"{path}.replicas", ov.raise_max_replicas, source)
            node[key] = value

    if ov.head:
        patch(out.setdefault("head" if ray else "master", {}), ov.head, "head")
    groups = out.get("workerGroups", []) if ray else [dict(out.get("workers", {}), name="workers")]
    names = [g.get("name") for g in groups]
    for name in ov.groups:
        if name not in names:
            raise SpecError(source, [(f"groups.{name}", "no worker group of that name; groups: "
                                      + ", ".join(map(str, names)))])
    for group in groups:
        own = ov.groups.get(str(group.get("name")))
        if ov.workers:
            # A group's own replica count wins over the workers-wide one, so only it is checked.
            mine = frozenset({"replicas"}) if own is not None and own.replicas else frozenset()
            patch(group, ov.workers, "workers", mine)
        if own is not None:
            patch(group, own, f"groups.{group['name']}")
    if not ray:
        groups[0].pop("name")
        out["workers"] = groups[0]
    if ov.connect is not None:
        if ray:
            raise SpecError(source, [("connect", "Spark Connect is a Spark cluster option; "
                                                 "remove it for a Ray spec")])
        out["connect"] = dict(out.get("connect") or {}, enabled=ov.connect)
    return out


def parse_overrides(raw: dict[str, Any] | Overrides | None) -> Overrides:
    if raw is None:
        return Overrides()
    if isinstance(raw, Overrides):
        return raw
    try:
        return Overrides.model_validate(raw)
    except ValidationError as err:
        raise SpecError("overrides", problems_of(err)) from None  # as parse_spec: no inputs


def apply_profile(
    spec: RaySpec | SparkSpec,
    profile: str | None,
    overrides: dict[str, Any] | Overrides | None = None,
    *,
    source: str = "<spec>",
) -> RaySpec | SparkSpec:
    """The effective spec after ``profile`` and ``overrides``; raises SpecError when invalid."""
    ov = parse_overrides(overrides)
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=False)
    label = source
    if profile:
        label = f"{source} (profile {profile})"
        if profile == CI_CPU:
            data = _ci_cpu(data)
        elif profile not in spec.profiles:
            have = sorted({CI_CPU, *spec.profiles})
            raise SpecError(source, [("profile", f"no profile {profile!r}; profiles: "
                                      + ", ".join(have))])
        if profile in spec.profiles:
            data = _overlay(data, spec.profiles[profile], label)
    if not ov.is_empty():
        label += " with overrides"
        shrunk, data = data, _apply_overrides(data, ov, label)
        if profile == CI_CPU:
            _within_ci_cpu(shrunk, data, label)
    if profile == CI_CPU:
        data = _fixed_size(data)
    if profile is None and ov.is_empty():
        return spec
    return parse_spec(_off_gpu_nodes(data, spec), label, effective=True)


def _gpu_placement(key: str, resource: str) -> bool:
    """A node label or taint key that places a pod on GPU nodes: the GPU resource's own taint
    (``nvidia.com/gpu``), its vendor's labels (``nvidia.com/gpu.present``), a cloud's accelerator
    label (``cloud.google.com/gke-accelerator``)."""
    vendor = resource.split("/")[0] + "/" if "/" in resource else resource
    lowered = key.lower()
    return key == resource or key.startswith(vendor) or "gpu" in lowered \
        or "accelerator" in lowered


def _off_gpu_nodes(data: dict[str, Any], spec: RaySpec | SparkSpec) -> dict[str, Any]:
    """A node a profile or an override took every GPU from leaves GPU nodes too: on Kubernetes
    its selector and tolerations would still place a CPU-only pod there, holding (or making a
    cluster autoscaler buy) a GPU node whose GPUs nobody uses; and Spark's applications stop
    asking for GPUs that are not there."""
    had = {path: node.get("gpus") or 0 for path, node, _, _ in
           _nodes(spec.model_dump(mode="json", by_alias=True))}
    for path, node, _, may_have in _nodes(data):
        if not may_have or node.get("gpus") or not had.get(path):
            continue
        if path == "workers":  # a Spark cluster's only GPUs: its applications' asks go too
            _drop_gpu_asks(data)
        resource = str(node.get("gpuResource") or "nvidia.com/gpu")
        node["nodeSelector"] = {k: v for k, v in (node.get("nodeSelector") or {}).items()
                                if not _gpu_placement(k, resource)}
        node["tolerations"] = [t for t in node.get("tolerations") or []
                               if not _gpu_placement(str(t.get("key") or ""), resource)]
    return data


def resolve(
    ref: str,
    profile: str | None = None,
    overrides: dict[str, Any] | Overrides | None = None,
    *,
    specs_dir: Path | None = None,
) -> ResolvedSpec:
    path, canonical = resolve_ref(ref, specs_dir)
    base = load_file(path)
    spec = apply_profile(base, profile, overrides, source=str(path))
    return ResolvedSpec(spec=spec, ref=canonical, source=str(path), profile=profile,
                        hash=spec_hash(spec))
