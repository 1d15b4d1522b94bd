"""The runtime environment of a Ray job submitted through ephemeral (CLI ``submit`` and
``RayJobOperator``): the cluster's default (its spec's ``runtimeEnv.pip``, carried by the handle),
then ephemeral's own variables, then the job's own ``runtime_env``. Later layers win:

- ``pip``: lists are concatenated; a package named in a later layer drops the earlier layer's
  entry for it (the job's version of a package wins; names compared as PEP 503 normalises them).
- ``env_vars``: merged, the later value wins.
- Any other key (``working_dir``, ``py_modules``, ``conda``, ...): the later layer's value.

A job's own ``working_dir`` is given once: as the argument (``--working-dir``,
``working_dir=``) or in its ``runtime_env``, not both (``with_working_dir``).

Ray (2.60, ``RuntimeEnv``) takes only one of ``pip``, ``uv`` and ``conda``, and ``image_uri`` or
``container`` only with ``env_vars`` and ``config``. So with the cluster's default ``pip``:

- a job's own ``uv`` installs the cluster's packages too: they move into its ``uv`` list by the
  ``pip`` rule above (the job's entry for a package wins), and ``pip`` goes;
- a job's own ``conda``, ``image_uri`` or ``container`` is an error naming the field, the
  packages and the fix, not a silent drop, raised before anything is uploaded or submitted.

A job's pip or uv entry with credentials in its URL is refused (``ephemeral.specs.pip_credentials``,
the rule the spec's ``runtimeEnv.pip`` follows).

A job's own ``env_vars`` (``RayJobOperator``'s ``runtime_env``, ``ephemeral submit --env``,
``EphemeralSparkSubmitOperator``'s ``env_vars``) may not set a reserved name, by the rule a
spec's ``runtimeEnv.env`` follows (``ephemeral.specs.models.reserved_env``): Ray starts a job's
driver in a session of its own, so for anything the driver detaches the local cluster's
``EPHEMERAL_CLUSTER_UID`` marker is all teardown finds it by, and a job's own value would hide
it. ``check_job_env`` is that check; ``merge_runtime_env`` applies it to its overlay (the
caller's layer), ``job_runtime_env`` sets ephemeral's own variables past it. The one name of
ephemeral's a job may set is ``EPHEMERAL_ARTIFACT_ROOT`` (``JOB_MAY_SET``): where a job writes
is its own choice, and nothing ephemeral runs for the cluster reads it from the job.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ephemeral.errors import JobRefused
from ephemeral.jobs.command_secrets import (
    SECRET_SOURCES,
    command_words,
    masked_command,
    odd_space_problem,
    secret_words_problem,
)
from ephemeral.specs.models import (
    RESERVED_ENV,
    literal_secret,
    masked_secrets,
    reserved_env,
    settable_env_problem,
)
from ephemeral.specs.pip_credentials import credentials_problem, pip_entry_problem

if TYPE_CHECKING:
    from ephemeral.backends.base import ClusterHandle


def _project(requirement: str) -> str | None:
    """The normalised project name of a pip entry (after ``-e``, before a trailing comment or
    ``--hash`` option; a URL's ``#egg=`` name or wheel or sdist file name); None when it names
    none (an option, a bare VCS URL or path)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )

    line = re.sub(r"^(-e|--editable)\s+", "", requirement.split(" #", 1)[0].strip())
    if line.startswith("-"):
        return None
    line = re.split(r"\s+--", line, maxsplit=1)[0]
    try:
        return str(canonicalize_name(Requirement(line).name))
    except InvalidRequirement:
        pass
    if egg := re.search(r"[#&]egg=([A-Za-z0-9][A-Za-z0-9._-]*)", line):
        return str(canonicalize_name(egg.group(1)))
    file = urlsplit(line).path.rsplit("/", 1)[-1]
    try:
        if file.endswith(".whl"):
            return str(parse_wheel_filename(file)[0])
        if file.endswith((".tar.gz", ".zip")):
            return str(parse_sdist_filename(file)[0])
    except (InvalidWheelFilename, InvalidSdistFilename):
        pass
    return None


def _mergeable(requirement: str) -> bool:
    """Whether an entry can sit beside the cluster's packages: it names its package, or it is
    an option that installs none (``--index-url``, ``--extra-index-url``, ...); not a file of
    requirements or constraints, whose packages cannot be compared."""
    line = requirement.strip()
    if re.match(r"^(-r|--requirement|-c|--constraint)\b", line):
        return False
    return _project(line) is not None or (line.startswith("-")
                                          and not re.match(r"^(-e|--editable)\b", line))


def _name(requirement: str) -> str:
    """The entry's project name; the entry itself when it names none, so that it only ever
    replaces itself."""
    return _project(requirement) or requirement.strip()


def _packages(pip: Any, where: str, field: str = "pip") -> tuple[list[str], dict[str, Any]]:
    """(package list, other options) of a ``pip`` (or ``uv``) value: a list, or Ray's dict
    form."""
    if isinstance(pip, list | tuple):
        return [str(p) for p in pip], {}
    if isinstance(pip, Mapping) and isinstance(pip.get("packages", []), list | tuple):
        options = {k: v for k, v in pip.items() if k != "packages"}
        return [str(p) for p in pip.get("packages", [])], options
    raise JobRefused(
        f"{where}: runtime_env.{field} must be a list of requirements (or Ray's "
        f"{{'packages': [...]}} form) to merge with the cluster's default pip packages; got "
        f"{type(pip).__name__}. Pass the requirements as a list.")


def merge_pip(base: list[str], overlay: list[str], where: str = "the job") -> list[str]:
    """``base`` then ``overlay``; ``overlay``'s entry for a package replaces ``base``'s. With a
    ``base``, an ``overlay`` entry that names no package (and is none of ``base``'s) is refused:
    it could replace none, and pip would find both (``torch==2.3`` and a URL of another torch) only on the cluster."""
    same = {b.strip() for b in base}
    unnamed = [r for r in overlay if not _mergeable(r) and r.strip() not in same] \
        if base else []
    if unnamed:
        raise JobRefused(
            f"{where}: runtime_env pip entries {unnamed} name no package, so they cannot take "
            f"the place of the cluster's default packages ({base}). Name each: 'torch @ "
            "git+https://...', a '#egg=name' URL, or the requirements themselves instead of "
            "-r/-c FILE")
    replaced = {_name(r) for r in overlay}
    return [r for r in base if _name(r) not in replaced] + list(overlay)


# Ray's limits (ray/runtime_env/runtime_env.py, 2.60): one installer; an image alone.
_INSTALLERS = ("pip", "uv", "conda")
_IMAGE_KEYS = {"image_uri": {"image_uri", "config", "env_vars"},
               "container": {"container", "config", "env_vars"}}


# What a job does instead of writing a credential into a URI or a command line.
CREDENTIALS_FIX = ("give the job no credentials in a URI or on its command line: it reads "
                   f"them from its environment ({SECRET_SOURCES}) or from the storage's "
                   "credential provider (an IAM role or workload identity, a credentials file "
                   "on the image), and takes the plain URL")


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    """Every text in ``value`` (nested mappings and lists), with its path (``py_modules[0]``)."""
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in _strings(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{path}[{i}]")]
    return []


def _with_credentials(overlay: Mapping[str, Any], where: str) -> None:
    """Refuse, naming it, an overlay's pip or uv entry that holds or refers to a secret
    (``pip_entry_problem``), and any URI of any other field (``working_dir``, ``py_modules``,
    ``conda``, ``java_jars``, a pip file's path, ...) with credentials in it
    (``credentials_problem``): the runtime_env is stored in Ray's job info. ``env_vars`` are
    ``check_job_env``'s."""
    for field in ("pip", "uv"):
        value = overlay.get(field)
        entries = value.get("packages") if isinstance(value, Mapping) else value
        if not isinstance(entries, list | tuple):
            continue
        for i, entry in enumerate(entries):
            if isinstance(entry, str) and (problem := pip_entry_problem(entry)) is not None:
                raise JobRefused(f"{where}: runtime_env.{field}[{i}]: {problem}")
    for field, value in overlay.items():
        if field == "env_vars":
            continue
        for path, text in _strings(value, f"runtime_env.{field}"):
            if (problem := credentials_problem(text, CREDENTIALS_FIX)) is not None:
                raise JobRefused(f"{where}: {path}: {problem}")


def command_line(entrypoint: str | Sequence[Any]) -> str:
    """The shell command Ray runs for ``entrypoint``: a string as it is (its author wrote a
    command), an argv list quoted word by word (``shlex.join``). Ray's job supervisor runs the
    entrypoint with a shell, so a value rendered from XCom, an Asset event or a param belongs in
    an argv element: there ``;``, ``|`` or ``$(`` stay text, never a second command."""
    if isinstance(entrypoint, str):
        return entrypoint
    words: list[str] = []
    for i, word in enumerate(entrypoint):
        if isinstance(word, bool) or not isinstance(word, str | int | float):
            raise JobRefused(f"entrypoint[{i}] is a {type(word).__name__}, not a word: each "
                             "element of an argv entrypoint renders to one string")
        words.append(str(word))
    if not words:
        raise JobRefused("the entrypoint is an empty argv list: give the command to run")
    return shlex.join(words)


def entrypoint_problem(entrypoint: str, *, one_line: bool = False) -> str | None:
    """Why a job's command is refused, or None: credentials in a URL of it (they would reach
    Ray's job info, the task log and the rendered fields; ``credentials_problem``), a secret in
    any of its words (``command_secrets``), whitespace the shell does not split at (U+00A0:
    ``odd_space_problem``) or a control character (the shell on the cluster would fail on it,
    after the cluster was made), or a whole command quoted as its one word (the shell would
    look for a program of that name, after submission). ``one_line``: a line break or tab
    counts too (a form's or the CLI's command is one line)."""
    if (problem := credentials_problem(entrypoint, CREDENTIALS_FIX)) is not None:
        return problem
    words = command_words(entrypoint)
    if (problem := secret_words_problem(words, lambda i: f"word {i}")) is not None:
        return problem
    if (problem := odd_space_problem(entrypoint)) is not None:
        return problem
    bad = sorted({c for c in entrypoint if not c.isprintable()
                  and (one_line or c not in "\t\n\r")})
    if bad:
        return (f"contains control characters ({', '.join(map(repr, bad))}): a command is "
                "one line of printable text, and the cluster's shell would fail on them or "
                "split the command at them; remove them")
    return _quoted_command(words)


def _quoted_command(words: list[str]) -> str | None:
    """A command given as one argument (``submit c -- "python -c 'print(1)'"``, the habit of
    ``ray job submit -- "..."``) is quoted whole by ``shlex.join``: the shell then looks for a
    program named the whole text and fails with "not found" on the cluster. A file whose name
    has a space is the one such word a shell runs."""
    if len(words) != 1 or not re.search(r"\s", words[0]) or Path(words[0]).is_file():
        return None
    return (f"its one word {masked_secrets(words[0])!r} is a whole command, which the cluster's "
            "shell would look for as one program name and fail on ('not found') after "
            "submission; give the words separately, without quoting the whole command (ephemeral "
            "submit CLUSTER -- python -c 'print(1)'; an argv entrypoint: one word per element)")


def job_label(job_id: str | None, entrypoint: str) -> str:
    """How a message names a job: its id, else its command (masked: it may be the reason)."""
    return f"Ray job {job_id or masked_command(entrypoint)!r}"


def _pip_into_uv(base_pip: Any, uv: Any, where: str) -> Any:
    """The job's ``uv`` with the cluster's default pip packages in it (the job's entry for a
    package wins)."""
    base_pkgs, base_opts = _packages(base_pip, "the cluster")
    if base_opts:
        raise JobRefused(
            f"{where} sets runtime_env.uv, and the cluster's default pip has options uv does not "
            f"take ({sorted(base_opts)}); list the cluster's packages ({base_pkgs}) in the job's "
            "uv yourself, or use runtime_env.pip instead of uv")
    pkgs, opts = _packages(uv, where, "uv")
    merged = merge_pip(base_pkgs, pkgs, where)
    return {"packages": merged, **opts} if opts else merged


# Of the reserved names (ephemeral.specs.models.RESERVED_ENV), what a job may set itself: where
# its artifacts go. Ephemeral's default for it (job_runtime_env) is only a default; the job's
# result carries the URIs it wrote, and no teardown, report or auth reads it from the job.
JOB_MAY_SET = frozenset({"EPHEMERAL_ARTIFACT_ROOT"})


def check_job_env(env_vars: Any, where: str, field: str = "runtime_env.env_vars") -> None:
    """Refuse a job's own environment variables (the spec's rules: ``settable_env_problem``,
    ``reserved_env`` with ``JOB_MAY_SET`` excepted, ``literal_secret``), naming them (never a
    value), ``field`` and the fix: before anything is uploaded or submitted. ``None`` sets
    nothing."""
    if env_vars is None:
        return
    if not isinstance(env_vars, Mapping):
        raise JobRefused(
            f"{where}: {field} must be a mapping of variable names to values; got "
            f"{type(env_vars).__name__}")
    if bad := [p for n in env_vars if (p := settable_env_problem(str(n))) is not None]:
        raise JobRefused(f"{where}: {field}: {'; '.join(bad)}")
    refused = sorted(str(n) for n in env_vars
                     if reserved_env(str(n)) and str(n) not in JOB_MAY_SET)
    if refused:
        raise JobRefused(
            f"{where}: {field} sets {', '.join(map(repr, refused))}, reserved (names starting "
            f"with {', '.join(RESERVED_ENV)}): ephemeral, Airflow and the cluster's Ray "
            "authentication own such names, and teardown finds what a job leaves running on a "
            "local cluster by ephemeral's markers (EPHEMERAL_CLUSTER_UID), which a job's own "
            "value would hide. Pick another name; of ephemeral's, a job may set only "
            f"{', '.join(sorted(JOB_MAY_SET))}")
    secrets = sorted(str(n) for n, v in env_vars.items()
                     if v is not None and literal_secret(str(n), str(v)) is not None)
    if secrets:
        raise JobRefused(
            f"{where}: {field} sets {', '.join(map(repr, secrets))} to a secret (by its name, "
            "or a value with credentials or a key in it): a job's own environment is stored "
            "and shown with its settings (Ray's job info and dashboard, the task's rendered "
            "fields). Give the secret to the cluster instead, which passes it to every job: "
            "the spec's runtimeEnv.env with secretKeyRef (a Kubernetes Secret), or fromEnv on "
            "the local backend; a spark-submit driver, which runs on the Airflow worker, "
            "inherits a variable of the worker's own environment that the deployment names in "
            "EPHEMERAL_JOB_ENV_ALLOW")


def check_submitted(env: Mapping[str, Any], where: str, entrypoint: str | None = None) -> None:
    """What every Ray job ephemeral submits passes, however it came (operator, CLI, the Python
    API's ``RayJobs.submit``): ``check_job_env`` on its ``env_vars``, no credential or
    environment reference in a pip or uv entry, no credentials in any URI of its runtime_env
    (``working_dir``, ``py_modules``, ...) nor in its ``entrypoint`` (``entrypoint_problem``)."""
    if entrypoint is not None and (problem := entrypoint_problem(entrypoint)) is not None:
        raise JobRefused(f"{where}: entrypoint: {problem}")
    check_job_env(env.get("env_vars"), where)
    _with_credentials(env, where)


def with_working_dir(runtime_env: Mapping[str, Any] | None, working_dir: str | None,
                     where: str) -> dict[str, Any]:
    """``runtime_env`` with a job's ``working_dir`` argument in it (``RayJobOperator``'s,
    ``ephemeral submit --working-dir``, ``RayJobs.submit``'s). Both given is refused, naming
    both: one silently replaced the other, and the job ran other code than it was given. Values
    are not shown (a URI may hold credentials)."""
    env = dict(runtime_env or {})
    if not working_dir:
        return env
    if env.get("working_dir") is not None:
        raise JobRefused(f"{where}: working_dir and runtime_env['working_dir'] are both given, "
                         "and only one can be the job's: give one of them")
    return env | {"working_dir": working_dir}


def merge_runtime_env(base: Mapping[str, Any], overlay: Mapping[str, Any] | None, *,
                      where: str = "the job") -> dict[str, Any]:
    """``overlay`` (the caller's layer: its ``env_vars`` pass ``check_job_env``) over ``base``
    by the rules of this module; neither is modified."""
    check_job_env((overlay or {}).get("env_vars"), where)
    return _merge(base, overlay, where)


def _merge(base: Mapping[str, Any], overlay: Mapping[str, Any] | None,
           where: str) -> dict[str, Any]:
    out = dict(base)
    overlay = {k: v for k, v in (overlay or {}).items() if v is not None}  # None: not set
    _with_credentials(overlay, where)
    if "uv" in overlay and "pip" not in overlay and out.get("pip") is not None:
        overlay["uv"] = _pip_into_uv(out.pop("pip"), overlay["uv"], where)
    for key, value in overlay.items():
        if key == "env_vars" and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **(value or {})}
        elif key == "pip" and "pip" in out:
            base_pkgs, base_opts = _packages(out["pip"], "the cluster")
            pkgs, opts = _packages(value, where)
            merged = merge_pip(base_pkgs, pkgs, where)
            options = {**base_opts, **opts}
            out[key] = {"packages": merged, **options} if options else merged
        else:
            out[key] = value
    _check_rays_limits(out, base, where)
    return out


def _check_rays_limits(env: Mapping[str, Any], base: Mapping[str, Any], where: str) -> None:
    """Refuse, naming the field and the fix, the conflicts this merge can create that Ray's
    ``RuntimeEnv`` would refuse with a bare message. Ray's own check (``RayJobs.submit``, before
    the upload) stays the authority for everything else."""
    if "conda" in env and env.get("pip") and base.get("pip"):
        raise JobRefused(
            f"{where} sets runtime_env.conda, and the cluster adds pip packages to every job "
            f"({env['pip']}); Ray takes only one of them. List those packages under your conda "
            "environment's pip dependencies and drop conda from the job, or use another cluster.")
    if len(given := [k for k in _INSTALLERS if env.get(k) is not None]) > 1:
        raise JobRefused(
            f"{where}: runtime_env sets {' and '.join(given)}, and Ray takes only one of them: "
            "list every package under one of them")
    for image, allowed in _IMAGE_KEYS.items():
        if env.get(image) is None or not (extra := sorted(set(env) - allowed)):
            continue
        from_cluster = f" (the cluster adds pip packages to every job: {env['pip']})" \
            if "pip" in extra and base.get("pip") else ""
        raise JobRefused(
            f"{where} sets runtime_env.{image}, which Ray runs only with "
            f"{' and '.join(sorted(allowed - {image}))}, not with {', '.join(extra)}"
            f"{from_cluster}. Install those packages (and the job's code) in the image, or use a "
            "cluster spec without runtimeEnv.pip and no pip, uv, conda or working_dir of its own")


def cluster_runtime_env(handle: ClusterHandle) -> dict[str, Any]:
    """The cluster's default runtime environment (its spec's ``runtimeEnv.pip``)."""
    return {"pip": list(handle.job_pip)} if handle.job_pip else {}


def job_runtime_env(handle: ClusterHandle, job: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a Ray job on ``handle``'s cluster runs with: the cluster's default, ephemeral's
    artifact root, then the job's own ``runtime_env`` (which wins)."""
    from ephemeral.jobs import artifacts

    ours = {"env_vars": {"EPHEMERAL_ARTIFACT_ROOT": artifacts.job_root()}}
    env = _merge(cluster_runtime_env(handle), ours, "ephemeral")  # ours: past check_job_env
    return merge_runtime_env(env, job)
