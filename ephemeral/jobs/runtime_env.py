"""The runtime environment of a Ray job submitted through ephemeral (CLI ``submit`` and
``RayJobOperator``): the cluster's default (its spec's ``runtimeEnv.pip``, carried by the handle),
then ephemeral's own variables, then the job's own ``runtime_env``. Later layers win:

- ``pip``: lists are concatenated; a package named in a later layer drops the earlier layer's
  entry for it (the job's version of a package wins; names compared as PEP 503 normalises them).
- ``env_vars``: merged, the later value wins.
- Any other key (``working_dir``, ``py_modules``, ``conda``, ...): the later layer's value.

A job that brings ``conda`` cannot also get the cluster's default ``pip`` (Ray refuses both in
one environment): that is an error naming the packages, not a silent drop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ephemeral.errors import JobSubmissionFailed

if TYPE_CHECKING:
    from ephemeral.backends.base import ClusterHandle


def _name(requirement: str) -> str:
    """The normalised project name of a pip entry; the entry itself when it names none (a URL,
    a path, an option), so such entries only ever replace themselves."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        return str(canonicalize_name(Requirement(requirement).name))
    except InvalidRequirement:
        return requirement.strip()


def _packages(pip: Any, where: str) -> tuple[list[str], dict[str, Any]]:
    """(package list, other options) of a ``pip`` value: a list, or Ray's dict form."""
    if isinstance(pip, list | tuple):
        return [str(p) for p in pip], {}
    if isinstance(pip, Mapping) and isinstance(pip.get("packages", []), list | tuple):
        options = {k: v for k, v in pip.items() if k != "packages"}
        return [str(p) for p in pip.get("packages", [])], options
    raise JobSubmissionFailed(
        f"{where}: runtime_env.pip must be a list of requirements (or Ray's "
        f"{{'packages': [...]}} form) to merge with the cluster's default pip packages; got "
        f"{type(pip).__name__}. Pass the requirements as a list.")


def merge_pip(base: list[str], overlay: list[str]) -> list[str]:
    """``base`` then ``overlay``; ``overlay``'s entry for a package replaces ``base``'s."""
    replaced = {_name(r) for r in overlay}
    return [r for r in base if _name(r) not in replaced] + list(overlay)


def merge_runtime_env(base: Mapping[str, Any], overlay: Mapping[str, Any] | None, *,
                      where: str = "the job") -> dict[str, Any]:
    """``overlay`` over ``base`` by the rules of this module; neither is modified."""
    out = dict(base)
    for key, value in (overlay or {}).items():
        if value is None:  # not set: the earlier layer's value stands
            continue
        if key == "env_vars" and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **(value or {})}
        elif key == "pip" and "pip" in out:
            base_pkgs, base_opts = _packages(out["pip"], "the cluster")
            pkgs, opts = _packages(value, where)
            merged = merge_pip(base_pkgs, pkgs)
            options = {**base_opts, **opts}
            out[key] = {"packages": merged, **options} if options else merged
        else:
            out[key] = value
    if "conda" in out and out.get("pip"):
        pip = out["pip"]
        raise JobSubmissionFailed(
            f"{where} sets runtime_env.conda, and the cluster adds pip packages to every job "
            f"({pip}); Ray takes only one of them. List those packages under your conda "
            "environment's pip dependencies and drop conda from the job, or use another cluster.")
    return out


def cluster_runtime_env(handle: ClusterHandle) -> dict[str, Any]:
    """The cluster's default runtime environment (its spec's ``runtimeEnv.pip``)."""
    return {"pip": list(handle.job_pip)} if handle.job_pip else {}


def job_runtime_env(handle: ClusterHandle, job: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a Ray job on ``handle``'s cluster runs with: the cluster's default, ephemeral's
    artifact root, then the job's own ``runtime_env`` (which wins)."""
    from ephemeral.jobs import artifacts

    ours = {"env_vars": {"EPHEMERAL_ARTIFACT_ROOT": artifacts.root()}}
    env = merge_runtime_env(cluster_runtime_env(handle), ours, where="ephemeral")
    return merge_runtime_env(env, job)
