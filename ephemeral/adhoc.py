"""The rules of an ad-hoc Ray job request (the ``ray_job_adhoc`` trigger form), without Airflow.

The form's JSON schema refuses what a schema can (types, ranges, the spec list); this module
refuses the rest before anything is created, naming the field and the fix: a script outside the
jobs folder, a pip entry that is not a plain requirement, a size above what the spec allows, GPUs
on the CPU-only profile, a timeout the cluster's lifetime cannot hold. The DAG's validation
task, the CLI and the tests share it, so a rule lands once.

Security note on ``pip``: an allowed package is installed on every node of the cluster and
runs its own code there (setup scripts, import-time code). Only plain PEP 508 requirements
from the configured package index are accepted (no options, URLs, paths or VCS references,
which would pick the code's origin); ``EPHEMERAL_PIP_ALLOW`` narrows the names further.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ephemeral.errors import SpecError
from ephemeral.settings import Settings, get_settings
from ephemeral.specs.identity import parse_utc
from ephemeral.specs.models import RaySpec
from ephemeral.specs.pip_credentials import credentials_problem
from ephemeral.specs.resolve import CI_CPU, ResolvedSpec, resolve

if TYPE_CHECKING:
    from ephemeral.backends.base import ClusterHandle

FIELDS = ("cluster_spec", "profile", "workers", "gpus_per_worker", "entrypoint", "pip",
          "timeout_minutes")
PIP_MAX_ENTRIES, PIP_ENTRY_MAX_LEN = 50, 200
ENTRYPOINT_MAX_LEN = 2000
# A reference into the specs folder only: a path would let a request read any YAML file.
_SPEC_REF = re.compile(r"^[a-z0-9][a-z0-9-]*/[a-z0-9][a-z0-9-]*(@[0-9]+)?$")
_ARCHIVES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip", ".egg")


class RequestError(SpecError):
    """An ad-hoc job request (form values, a job's timeout) is refused. Nothing was created.

    A SpecError, so callers that already treat bad input as final (no retry, CLI exit code 2)
    treat this alike; ``problems`` holds (field, message) pairs.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], source: str = "request") -> None:
        super().__init__(source, problems)
        lines = [f"{source}: refused"] + [f"  {f}: {m}" for f, m in self.problems]
        self.args = ("\n".join(lines),)


# --- pip --------------------------------------------------------------------------------------


def pip_allow_list(setting: str | None) -> frozenset[str] | None:
    """Canonical package names of ``EPHEMERAL_PIP_ALLOW``: ``name,name``, or a file path (one
    name a line, ``#`` comments) when the value contains a path separator. None: no list."""
    from packaging.utils import canonicalize_name

    if not setting:
        return None
    text = setting
    if "/" in setting or "\\" in setting:
        try:
            text = Path(setting).expanduser().read_text()
        except OSError as err:
            raise RequestError([("EPHEMERAL_PIP_ALLOW", f"cannot read the allow-list file "
                                 f"{setting}: {err.strerror}")], "settings") from err
    names = [n.split("#", 1)[0].strip() for line in text.splitlines() for n in line.split(",")]
    return frozenset(canonicalize_name(n) for n in names if n)


def _pip_entry_problem(entry: object, allow: frozenset[str] | None) -> str | None:
    """Why one ``pip`` entry is refused, or None with a plain requirement that is allowed."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if not isinstance(entry, str):
        return f"{entry!r} is not a text requirement such as 'pandas>=2'"
    plain = "write a plain requirement: a name, optional [extras] and a version, e.g. 'pandas>=2'"
    if not entry.strip():
        return f"an empty entry; {plain}"
    if (secret := credentials_problem(entry)) is not None:  # before any message echoes it
        return secret
    if len(entry) > PIP_ENTRY_MAX_LEN:
        return f"{len(entry)} characters long; at most {PIP_ENTRY_MAX_LEN}"
    if any(not c.isprintable() for c in entry):
        # A newline would start a second line of the requirements file pip reads.
        return f"{entry!r} contains a line break or control character; {plain}"
    words = entry.split()
    if any(w.startswith("-") for w in words):
        return (f"{entry!r} holds a pip option; options (--index-url, -e, --extra-index-url, "
                f"...) are not accepted: packages come from the deployment's index; {plain}")
    low = entry.strip().lower()
    if "://" in entry or low.startswith(("git+", "hg+", "svn+", "bzr+", "file:")):
        return f"{entry!r} is a URL or VCS reference; only packages from the index; {plain}"
    if low.startswith((".", "/", "~")) or "\\" in entry or low.endswith(_ARCHIVES):
        return f"{entry!r} is a path or an archive; only packages from the index; {plain}"
    try:
        req = Requirement(entry)
    except InvalidRequirement as err:
        return f"{entry!r} is not a requirement ({str(err).splitlines()[0]}); {plain}"
    if req.url:
        return f"{entry!r} names a URL (name @ url); only packages from the index; {plain}"
    if req.marker is not None:
        return (f"{entry!r} has an environment marker ('; ...'); the cluster's Python is fixed, "
                f"so remove it")
    if "/" in entry or "@" in entry:
        return f"{entry!r} is not a plain requirement; {plain}"
    if allow is not None and canonicalize_name(req.name) not in allow:
        return (f"{req.name!r} is not in this deployment's allow-list (EPHEMERAL_PIP_ALLOW): "
                + (", ".join(sorted(allow)) or "no package is allowed"))
    return None


def check_pip(entries: object, allow: frozenset[str] | None = None) -> list[str]:
    """The ``pip`` list as plain requirements (``name[extras]<specifier>``); raises a
    RequestError naming each refused entry (``pip[i]``)."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise RequestError([("pip", "a list of requirements such as ['pandas>=2'], or empty")])
    if len(entries) > PIP_MAX_ENTRIES:
        raise RequestError([("pip", f"{len(entries)} entries; at most {PIP_MAX_ENTRIES}")])
    problems = [(f"pip[{i}]", why) for i, e in enumerate(entries)
                if (why := _pip_entry_problem(e, allow)) is not None]
    if problems:
        raise RequestError(problems)
    return [str(e).strip() for e in entries]


# --- entrypoint -------------------------------------------------------------------------------


def check_entrypoint(entrypoint: object, jobs_dir: Path, allow_any: bool = False) -> str:
    """The entrypoint, re-quoted: ``python <script in jobs_dir> [args]`` unless ``allow_any``."""
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise RequestError([("entrypoint", "a command such as `python hello_ray.py`")])
    if len(entrypoint) > ENTRYPOINT_MAX_LEN:
        raise RequestError([("entrypoint", f"{len(entrypoint)} characters long; at most "
                             f"{ENTRYPOINT_MAX_LEN}")])
    try:
        argv = shlex.split(entrypoint)
    except ValueError as err:
        raise RequestError([("entrypoint", f"cannot be split into arguments: {err}")]) from err
    if not allow_any:
        if len(argv) < 2 or argv[0] != "python":
            raise RequestError([("entrypoint", "must be `python <script in jobs/> [args]`; this "
                                 "deployment does not allow arbitrary commands")])
        script = (jobs_dir / argv[1]).resolve()
        if script.parent != jobs_dir.resolve() or not script.is_file():
            known = ", ".join(sorted(x.name for x in jobs_dir.glob("*.py")
                                     if not x.name.startswith("_")))
            raise RequestError([("entrypoint", f"{argv[1]!r} is not a script in jobs/ "
                                 f"({jobs_dir}, EPHEMERAL_JOBS_DIR); choose one of: "
                                 f"{known or 'none'}")])
    return shlex.join(argv)


# --- size and time ----------------------------------------------------------------------------


def check_size(spec: RaySpec, profile: str | None, workers: int, gpus: int | None,
               settings: Settings) -> bool:
    """Refuse a size above the spec's; True when ``workers`` needs ``raise_max_replicas``
    (above a group's maxReplicas, within the deployment's EPHEMERAL_ADHOC_MAX_WORKERS)."""
    problems: list[tuple[str, str]] = []
    raise_max = False
    for g in spec.worker_groups:
        cap = max(g.max, settings.adhoc_max_workers or 0)
        if workers > cap:
            problems.append(("workers", f"{workers} is above the spec's "
                             f"{'maxReplicas' if g.max_replicas is not None else 'replicas'} "
                             f"({g.max}) of worker group {g.name!r}; ask for at most {cap}, or "
                             "have the deployment raise EPHEMERAL_ADHOC_MAX_WORKERS"))
        elif workers > g.max:
            raise_max = True
        gpu_cap = max(g.gpus, settings.adhoc_max_gpus or 0)
        if gpus is not None and gpus > gpu_cap and profile != CI_CPU:
            problems.append(("gpus_per_worker", f"{gpus} is above the spec's {g.gpus} GPU(s) per "
                             f"worker of group {g.name!r}; ask for at most {gpu_cap}, or have "
                             "the deployment raise EPHEMERAL_ADHOC_MAX_GPUS"))
    if problems:
        raise RequestError(problems)
    return raise_max


def _seconds(n: float) -> str:
    n = int(n)
    h, rest = divmod(n, 3600)
    return f"{n} s" + (f" ({h}h{rest // 60:02d}m)" if h else f" ({n // 60} min)" if n >= 60 else "")


def check_timeout_within_ttl(handle: ClusterHandle | Mapping[str, Any], timeout_s: float | None,
                             *, now: datetime | None = None, field: str = "timeout") -> float:
    """Refuse a job timeout longer than the cluster's remaining lifetime (the reaper deletes the
    cluster at ``expires_at``, spec ``lifetime.ttl`` after creation, under a running job).

    ``handle``: a ClusterHandle or its XCom dict. Returns the remaining seconds. ``timeout_s``
    None (no timeout) is not refused: the job is still bounded by the cluster's lifetime.
    Raises RequestError naming ``field`` and both numbers.
    """
    info = handle if isinstance(handle, Mapping) else handle.model_dump()
    expires, created = parse_utc(str(info["expires_at"])), parse_utc(str(info["created_at"]))
    remaining = (expires - (now or datetime.now(UTC))).total_seconds()
    if timeout_s is not None and timeout_s > remaining:
        ttl = (expires - created).total_seconds()
        raise RequestError([(field, f"the job timeout {_seconds(timeout_s)} is longer than the "
                             f"{_seconds(max(remaining, 0))} left of cluster {info['name']}'s "
                             f"lifetime (lifetime.ttl {_seconds(ttl)}, expires "
                             f"{info['expires_at']}): the reaper would delete the cluster under "
                             "the job; shorten the timeout or raise lifetime.ttl in the spec")])
    return remaining


def check_timeout_within_spec_ttl(spec: ResolvedSpec, timeout_s: float, field: str) -> None:
    """Before the cluster exists: the timeout must fit in the spec's whole ``lifetime.ttl``."""
    ttl = spec.spec.lifetime.ttl_seconds
    if timeout_s > ttl:
        raise RequestError([(field, f"the job timeout {_seconds(timeout_s)} is longer than "
                             f"{spec.ref}'s lifetime.ttl {spec.spec.lifetime.ttl} "
                             f"({ttl} s): the reaper would delete the cluster under the job; "
                             f"ask for at most {ttl // 60} minutes or use a spec with a longer "
                             "ttl")])


# --- the whole request ------------------------------------------------------------------------


def _types(p: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the form's schema would refuse, for callers that skip it (the REST API with a conf
    that bypasses the form, a direct call): a wrong type must name its field, not crash."""
    problems = [(k, "unknown field; fields: " + ", ".join(FIELDS)) for k in p if k not in FIELDS]
    problems += [(k, "missing") for k in FIELDS if k not in p and k not in ("profile", "pip",
                                                                            "gpus_per_worker")]

    def whole(key: str, lo: int, hi: int, optional: bool = False) -> None:
        v = p.get(key)
        if v is None and (optional or key not in p):
            return
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            problems.append((key, f"{v!r} is not a whole number from {lo} to {hi}"))

    whole("workers", 1, 1000)
    whole("gpus_per_worker", 0, 64, optional=True)
    whole("timeout_minutes", 1, 7 * 24 * 60)
    for key in ("cluster_spec", "entrypoint"):
        if key in p and not isinstance(p[key], str):
            problems.append((key, f"{p[key]!r} is not text"))
    if p.get("profile") is not None and not isinstance(p["profile"], str):
        problems.append(("profile", f"{p['profile']!r} is not a profile name"))
    return problems


def _field_of(spec_field: str) -> str:
    if spec_field == "profile":
        return "profile"
    if spec_field.endswith(".replicas"):
        return "workers"
    if spec_field.endswith(".gpus"):
        return "gpus_per_worker"
    return "cluster_spec"


def validate_request(params: Mapping[str, Any], settings: Settings | None = None,
                     *, allow_any_entrypoint: bool = False) -> dict[str, Any]:
    """Check a form's values; return what the DAG's tasks need (all JSON, small for XCom):
    spec, profile, overrides, entrypoint, working_dir, runtime_env, timeout_s, spec_hash.

    Raises RequestError naming every refused field. Resolves the spec (files only): nothing is
    created and no process is started.
    """
    s = settings or get_settings()
    p = dict(params)
    if problems := _types(p):
        raise RequestError(problems)
    # A templated null profile can arrive as the text "None"; "none" is how the form shows it.
    profile = None if p.get("profile") in (None, "", "None", "none") else str(p["profile"])
    entrypoint = check_entrypoint(p["entrypoint"], s.jobs_dir, allow_any_entrypoint)
    pip = check_pip(p.get("pip"), pip_allow_list(s.pip_allow))
    workers, gpus = int(p["workers"]), p.get("gpus_per_worker")
    if not _SPEC_REF.fullmatch(p["cluster_spec"]):
        raise RequestError([("cluster_spec", f"{p['cluster_spec']!r} is not a spec reference "
                             "such as ray/adhoc-cpu or ray/adhoc-cpu@1 (paths are not accepted)")])
    try:
        base = resolve(p["cluster_spec"], specs_dir=s.specs_dir)
    except SpecError as err:
        raise RequestError([("cluster_spec", str(err))]) from err
    if not isinstance(base.spec, RaySpec):
        raise RequestError([("cluster_spec", f"{base.ref} is a {base.spec.kind}; this form runs "
                             "Ray jobs, choose a ray/... spec")])
    raise_max = check_size(base.spec, profile, workers, gpus, s)
    group: dict[str, Any] = {"replicas": workers} | ({} if gpus is None else {"gpus": gpus})
    overrides: dict[str, Any] = {"workers": group}
    if raise_max:
        overrides["raise_max_replicas"] = True
    try:
        spec = resolve(p["cluster_spec"], profile, overrides, specs_dir=s.specs_dir)
    except SpecError as err:
        raise RequestError([(_field_of(f), f"{f}: {m}" if f else m)
                            for f, m in err.problems] or [("cluster_spec", str(err))]) from err
    timeout_s = 60 * int(p["timeout_minutes"])
    check_timeout_within_spec_ttl(spec, timeout_s, "timeout_minutes")
    return {"spec": spec.ref, "profile": profile, "overrides": overrides,
            "entrypoint": entrypoint, "working_dir": str(s.jobs_dir),
            "runtime_env": {"pip": pip} if pip else {}, "timeout_s": timeout_s,
            "spec_hash": spec.hash}


def ray_spec_refs(specs_dir: Path) -> list[str]:
    """The Ray specs a form offers: ``ray/<name>`` for each current file (a listing; archived
    ``<name>@<N>.yaml`` versions are left out)."""
    return sorted(f"ray/{p.stem}" for p in (specs_dir / "ray").glob("*.yaml") if "@" not in p.stem)
