"""The rules of an ad-hoc Ray job request (the ``ray_job_adhoc`` trigger form), without Airflow.

The form's JSON schema refuses what a schema can (types, ranges, the spec list); this module
refuses the rest before anything is created, naming the field and the fix: a script that is not
a job of the jobs folder named bare, an argument choosing where the job writes, a pip entry that
is not a plain requirement, a size above what the spec allows, GPUs on the CPU-only profile, a
timeout the cluster's lifetime cannot hold. The DAG's validation task, the CLI and the tests
share it, so a rule lands once.

Security note on ``pip``: an allowed package is installed on every node of the cluster and
runs its own code there (setup scripts, import-time code). Only plain PEP 508 requirements
from the configured package index are accepted (no options, URLs, paths or VCS references,
which would pick the code's origin; no ``===``, which compares any text; no environment-variable
reference, which pip would expand from the node's secrets: ``specs.pip_credentials``);
``EPHEMERAL_PIP_ALLOW`` narrows the names further.

Where the job writes: the form's job writes under this run's own folder and nowhere else
(``confine_outputs``). The entrypoint may not choose a location: ``--run``, ``--artifact-root``
and ``--output`` (the flags by which the jobs in jobs/ choose where they write; also their
abbreviations, which argparse accepts, and ``--output-...``-like names) are refused, and the form
passes the location itself to the scripts that take one: ``--run <instance>/ray_job_adhoc/<run>``
(``artifacts.run_folder``) to train_ddp.py and etl_features.py, ``--output <that folder>/eval/
metrics.json`` to evaluate.py (whose default is next to the evaluated model, i.e. in the run that
made it). Refused rather than rewritten: a user who typed ``--run adhoc/my-model`` to resume
from it, or to find the model there, learns at once that it is not so, instead of finding the
model elsewhere; and a folder per run is what the scheduled DAGs do (``run_folder``), so a
retry resumes from its own checkpoints and no run can plant one another resumes from.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ephemeral.errors import SpecError
from ephemeral.settings import Found, Settings, absolute, get_settings, xcom_max_bytes
from ephemeral.specs.identity import parse_utc
from ephemeral.specs.loader import is_spec_ref
from ephemeral.specs.models import RaySpec
from ephemeral.specs.pip_credentials import pip_entry_problem
from ephemeral.specs.resolve import CI_CPU, ResolvedSpec, resolve

if TYPE_CHECKING:
    from ephemeral.backends.base import ClusterHandle

FIELDS = ("cluster_spec", "profile", "workers", "gpus_per_worker", "entrypoint", "pip",
          "timeout_minutes")
PIP_MAX_ENTRIES, PIP_ENTRY_MAX_LEN = 50, 200
ENTRYPOINT_MAX_LEN = 2000
# What pip reads as a local archive's path rather than a project of the index (its
# ARCHIVE_EXTENSIONS, pip._internal.utils.filetypes), and .egg.
# Longest first, so an entry names its whole ending (".tar.gz", not ".gz").
_ARCHIVES = tuple(sorted((".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz",
                          ".txz", ".tlz", ".tar.lz", ".tar.lzma", ".egg"), key=len, reverse=True))


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


def pip_allow_list(setting: Found | str | None) -> frozenset[str] | None:
    """Canonical package names of ``EPHEMERAL_PIP_ALLOW`` (a text: as that variable's value):
    ``name,name``, or an absolute file path (one name a line, ``#`` comments) when the value
    contains a path separator or starts with ``~``. None: no list."""
    from packaging.utils import canonicalize_name

    found = Found(setting, "EPHEMERAL_PIP_ALLOW") if not isinstance(setting, Found) else setting
    if not found.value:
        return None
    text = found.value
    if "/" in text or "\\" in text or text.strip().startswith("~"):
        path = absolute(found, "the file", "/opt/airflow/pip-allow.txt")
        try:
            text = path.read_text()
        except OSError as err:
            raise RequestError([(found.source, f"cannot read the allow-list file "
                                 f"{path}: {err.strerror}")], "settings") from err
    names = [n.split("#", 1)[0].strip() for line in text.splitlines() for n in line.split(",")]
    return frozenset(canonicalize_name(n) for n in names if n)


def _archive_of(entry: str) -> str | None:
    """The archive ending by which pip would install ``entry`` from a local file, or None. pip
    drops a ``;`` marker and a trailing ``[extras]`` and takes what ends as an archive for a
    path (``evil.whl[x]``, ``foo.tar``): a file on the node is installed, whatever the index
    holds. A name ending so (``evil.whl>=1``, ``foo.whl [x]``) is refused too: no project
    of an index is named like a file."""
    text = entry.split(";", 1)[0].strip().lower()
    read_by_pip = re.sub(r"\[[^\]]+\]$", "", text)
    name = re.split(r"[\s\[<>=!~(@]", text, maxsplit=1)[0]
    return next((ext for ext in _ARCHIVES
                 for t in (text, read_by_pip, name) if t.endswith(ext)), None)


def _pip_entry_problem(entry: object, allow: frozenset[str] | None) -> str | None:
    """Why one ``pip`` entry is refused, or None with a plain requirement that is allowed."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if not isinstance(entry, str):
        return f"{entry!r} is not a text requirement such as 'pandas>=2'"
    plain = "write a plain requirement: a name, optional [extras] and a version, e.g. 'pandas>=2'"
    if not entry.strip():
        return f"an empty entry; {plain}"
    if (secret := pip_entry_problem(entry)) is not None:  # before any message echoes it
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
    if low.startswith((".", "/", "~")) or "\\" in entry:
        return f"{entry!r} is a path or an archive; only packages from the index; {plain}"
    if (ext := _archive_of(entry)) is not None:
        return (f"{entry!r} is a path or an archive: pip reads a name ending in {ext} as a "
                f"local file to install, not a package of the index; {plain}")
    try:
        req = Requirement(entry)
    except InvalidRequirement as err:
        return f"{entry!r} is not a requirement ({str(err).splitlines()[0]}); {plain}"
    if req.url:
        return f"{entry!r} names a URL (name @ url); only packages from the index; {plain}"
    if "===" in entry:
        return (f"{entry!r} uses '===' (arbitrary equality: the version compared as any text, "
                f"not parsed); use '==' with a version, e.g. 'pandas==2.2.3'")
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


def _scripts(jobs_dir: Path) -> list[str]:
    """The jobs a form may run: the ``*.py`` files of ``jobs_dir`` whose names do not start with
    ``_`` (helper modules such as ``_common.py``) or ``.``."""
    return sorted(x.name for x in jobs_dir.glob("*.py")
                  if not x.name.startswith(("_", ".")) and x.is_file())


def _script_problem(name: str, jobs_dir: Path) -> str | None:
    """Why ``name`` is not a script the form may run ("": not one of them), or None. Only a bare
    file name: Ray runs the entrypoint in the jobs folder it uploads (the working dir), so a path
    (absolute or relative) would be judged here, on the Airflow host, but mean something else
    there; and a ``_`` name is a helper module (``_common.py``), not a job."""
    if "/" in name or "\\" in name:
        return ("is a path; name the script alone, as it is in the jobs folder (Ray runs it from "
                "there), e.g. `python hello_ray.py`")
    if name.startswith(("_", ".")):
        return "is a helper module of the jobs, not a job (names starting with '_' or '.')"
    script = (jobs_dir / name).resolve()
    if name not in _scripts(jobs_dir) or script.parent != jobs_dir.resolve():
        return ""
    return None


# A word that is shell syntax: an operator alone (&&, |, ;, &), a redirection (>out, 2>&1,
# <in), or a command ended by one (x.py;). Inside a word, & ; ( ) are text: a URL's
# ?a=1&b=2 or part(1).parquet reaches the program whole, as it always did.
_SHELL_WORD = re.compile(r"[();<>|&]+|[0-9]*[<>].*|.*(?:;|&&|\|)")


def _shell_operators(argv: list[str]) -> list[str]:
    """The words of ``argv`` (``shlex.split``'s) that would be shell syntax to a shell."""
    return list(dict.fromkeys(w for w in argv if _SHELL_WORD.fullmatch(w)))


def check_entrypoint(entrypoint: object, jobs_dir: Path, allow_any: bool = False) -> str:
    """The entrypoint, re-quoted: ``python <script> [args]`` with ``<script>`` the bare name of
    a job in ``jobs_dir``, unless ``allow_any``. No credentials in a URL of it and no control
    character (``runtime_env.entrypoint_problem``), no shell operator (each word is quoted, so
    ``&&`` or ``2>&1`` would reach the program as an argument). Where the job writes is
    ``confine_outputs``'s."""
    from ephemeral.jobs.runtime_env import entrypoint_problem

    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise RequestError([("entrypoint", "a command such as `python hello_ray.py`")])
    if (problem := entrypoint_problem(entrypoint, one_line=True)) is not None:
        raise RequestError([("entrypoint", problem)])  # before any message quotes it
    if len(entrypoint) > ENTRYPOINT_MAX_LEN:
        raise RequestError([("entrypoint", f"{len(entrypoint)} characters long; at most "
                             f"{ENTRYPOINT_MAX_LEN}")])
    try:
        argv = shlex.split(entrypoint)
        operators = _shell_operators(argv)
    except ValueError as err:
        raise RequestError([("entrypoint", f"cannot be split into arguments: {err}")]) from err
    if operators:
        raise RequestError([("entrypoint", f"{' '.join(operators)} is shell syntax, which the "
                             "form does not pass to a shell: each word is quoted, so the program "
                             "would get it as an argument and fail on the cluster. Run one "
                             "command" + ("; for several, `bash -c '<commands>'`" if allow_any
                                          else ""))])
    if not allow_any:
        if len(argv) < 2 or argv[0] != "python":
            raise RequestError([("entrypoint", "must be `python <script in jobs/> [args]`; this "
                                 "deployment does not allow arbitrary commands")])
        if (why := _script_problem(argv[1], jobs_dir)) is not None:
            raise RequestError([("entrypoint", f"{argv[1]!r} is not a script in jobs/ "
                                 f"({jobs_dir}, EPHEMERAL_JOBS_DIR){': it ' + why if why else ''}"
                                 f"; choose one of: {', '.join(_scripts(jobs_dir)) or 'none'}")])
    return shlex.join(argv)


# --- where the job writes ---------------------------------------------------------------------

# The flags by which the jobs in jobs/ choose where they write (their argparse options):
# --run (train_ddp.py, etl_features.py: everything under <artifact root>/<run>/), --artifact-root
# (both: the root itself) and --output (etl_features.py: the features folder; evaluate.py: the
# metrics file). A job given none of them writes by default under <root>/<run>/, except
# evaluate.py: next to --model-uri's run, i.e. into the run that made the model.
OUTPUT_FLAGS = ("--run", "--artifact-root", "--output")
# What the form passes itself, per script: {run} is the run's folder relative to the artifact
# root (as --run takes it), {uri} the same folder as a URI under the root.
RUN_OUTPUTS: dict[str, tuple[str, str]] = {
    "train_ddp.py": ("--run", "{run}"),
    "etl_features.py": ("--run", "{run}"),
    "evaluate.py": ("--output", "{uri}/eval/metrics.json"),
}


def _output_flag(word: str) -> str | None:
    """The output flag ``word`` stands for, or None. argparse takes any unambiguous prefix of a
    long option (``--ru x``, ``--out=x``), so a prefix counts; so does a longer name made from
    one (``--output-uri``, ``--run-dir``), a deployment's own script's likely spelling."""
    if not word.startswith("--") or len(word) < 3:
        return None
    name = word.split("=", 1)[0]
    for flag in OUTPUT_FLAGS:
        if flag.startswith(name) or name.startswith((flag + "-", flag + "_")):
            return flag
    return None


def _named(word: str, flag: str) -> str:
    name = word.split("=", 1)[0]
    return repr(name) if name == flag else f"{name!r} (a form of {flag})"


def confine_outputs(entrypoint: str, run_folder: str | None) -> str:
    """``entrypoint`` (``python <script> [args]``, as ``check_entrypoint`` returns it) with the
    location it writes to chosen here, not by the request: a word that names an output flag is
    refused, naming it; the script's flag from ``RUN_OUTPUTS`` is then put right after the
    script, pointing into ``run_folder`` (``artifacts.run_folder(dag_id, run_id)``; None: a
    check outside a DAG run, nothing is added)."""
    argv = shlex.split(entrypoint)
    given = [_named(w, flag) for w in argv[2:] if (flag := _output_flag(w)) is not None]
    if given:
        where = run_folder or "<instance>/ray_job_adhoc/<run id>"
        raise RequestError([("entrypoint", f"{', '.join(given)} "
                             f"{'chooses' if len(given) == 1 else 'choose'} where the job "
                             f"writes; an ad-hoc job writes only under its own run's folder "
                             f"({where} under the artifact root), which the form passes to the "
                             "script itself, so a retry resumes from its own checkpoints and no "
                             "other run's folder is touched: remove "
                             f"{'it' if len(given) == 1 else 'them'} (to start from another "
                             "run's data or model, give it as an input: --data-uri, "
                             "--model-uri)")])
    if run_folder is None or argv[1] not in RUN_OUTPUTS:
        return entrypoint
    from ephemeral.jobs import artifacts

    flag, value = RUN_OUTPUTS[argv[1]]
    value = value.format(run=run_folder, uri=artifacts.run_uri(run_folder))
    return shlex.join([*argv[:2], flag, value, *argv[2:]])


# --- which engine the script runs on ------------------------------------------------------------

# A job of the jobs folder declares the engine it runs on at module level: ``__engine__ =
# "ray"`` or ``"spark"`` (a Spark application fails on a Ray cluster only after the cluster is
# created). Read from the source, never imported: importing would run the job's module code
# (pyspark, ray, torch imports) in the Airflow worker. A script that declares none is taken as
# a Ray job (a deployment's own scripts, written before the marker).
ENGINE_MARKER = "__engine__"
ENGINES = ("ray", "spark")


def _module_body(script: Path) -> list[Any]:
    """The top-level statements of ``script``'s source (``ast``), or none when it cannot be read
    or parsed here (the cluster's Python may be newer than this one): then it is not judged."""
    import ast

    try:
        return ast.parse(script.read_text(encoding="utf-8"), str(script)).body
    except (OSError, SyntaxError, ValueError):
        return []


def script_engine(script: Path) -> str | None:
    """The engine ``script`` declares (``ENGINE_MARKER``), or None when it declares none."""
    import ast

    for node in _module_body(script):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        if any(isinstance(t, ast.Name) and t.id == ENGINE_MARKER for t in targets) and \
                isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
    return None


def check_engine(entrypoint: str, jobs_dir: Path) -> None:
    """Refuse an entrypoint whose script is a job of ``jobs_dir`` declared for another engine
    than Ray (the form's clusters are Ray clusters). Other commands (an arbitrary entrypoint
    the deployment allows) are not judged here."""
    argv = shlex.split(entrypoint)
    if len(argv) < 2 or argv[0] != "python" or _script_problem(argv[1], jobs_dir) is not None:
        return
    engine = script_engine(jobs_dir / argv[1])
    if engine in (None, "ray"):
        return
    ray_jobs = [n for n in _scripts(jobs_dir) if script_engine(jobs_dir / n) in (None, "ray")]
    where = ("on a Spark cluster (`ephemeral spark-submit`, a DAG's "
             "EphemeralSparkSubmitOperator)" if engine == "spark" else
             f"where its engine runs (engines: {', '.join(ENGINES)})")
    raise RequestError([("entrypoint", f"{argv[1]!r} is not a Ray job ({ENGINE_MARKER} = "
                         f"{engine!r} in it), and this form runs Ray jobs on a Ray cluster, "
                         "where it would fail once the cluster exists: choose a Ray job "
                         f"({', '.join(ray_jobs) or 'none'}), or run it {where}")])


# A job whose module defines ``parse_args(argv)`` at top level (the jobs' convention) has its
# arguments parsed by it before the cluster exists, so a typo fails in seconds, not after the
# cluster's start. It runs in a separate Python with the standard library only (-I -S) and no
# environment: a script whose module code needs more (ray, torch) fails to import there and is
# not checked, and nothing of the Airflow worker's (its secrets) reaches the script's code.
_PARSE = """
import importlib, json, sys
folder, script = sys.argv[1], sys.argv[2]
sys.path.insert(0, folder)
sys.argv = [script]
try:
    module = importlib.import_module(script[:-3])
except BaseException:
    sys.exit(90)
module.parse_args(json.loads(sys.stdin.read()))
"""
_NOT_CHECKED = 90
PARSE_TIMEOUT = 20.0


def _defines_parse_args(script: Path) -> bool:
    import ast

    return any(isinstance(n, ast.FunctionDef) and n.name == "parse_args"
               for n in _module_body(script))


def check_arguments(entrypoint: str, jobs_dir: Path) -> None:
    """Refuse arguments the job's own ``parse_args`` refuses (an unknown flag, ``--steps
    abc``, a missing required option), naming ``entrypoint`` with argparse's message. Only
    ``python <job of jobs_dir> [args]`` with such a job; anything else is not checked."""
    import json
    import subprocess
    import sys

    argv = shlex.split(entrypoint)
    if len(argv) < 2 or argv[0] != "python" or _script_problem(argv[1], jobs_dir) is not None \
            or not _defines_parse_args(jobs_dir / argv[1]):
        return
    try:
        # In the jobs folder, where Ray runs the job: a path argument is judged from there.
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _PARSE, str(jobs_dir), argv[1]],
                              input=json.dumps(argv[2:]), capture_output=True, text=True,
                              env={}, timeout=PARSE_TIMEOUT, check=False, cwd=jobs_dir)
    except (OSError, subprocess.TimeoutExpired):
        return  # not checked: the job's own parse on the cluster still says it
    if done.returncode == 2:  # argparse's exit status for a usage error
        said = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        said = said.split(": error: ", 1)[-1]  # argparse's "<prog>: error: <why>"
        raise RequestError([("entrypoint", f"{argv[1]} refuses these arguments: {said} "
                             f"(`python {argv[1]} --help` lists them)")])


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


def job_timeout_seconds(value: Any, field: str = "job_timeout",
                        fix: str = "give one, or leave it empty for no limit") -> float | None:
    """A job timeout as given (an operator's rendered ``job_timeout``, the CLI's ``--timeout``,
    every seconds option of the CLI): seconds, or None for no limit. Anything but a finite
    number above 0 is refused naming ``field`` and ending with ``fix``: 0 or less would stop
    the job the moment it starts, nan would mean no limit and inf cannot be compared with a
    cluster's expiry."""
    import math

    if value in (None, "", "None"):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise RequestError([(field, f"{value!r} is not a finite number of seconds above 0: "
                             + fix)])
    return seconds


# The time budget of a job on a cluster made for it: the job must end before the cluster's
# expiry (``lifetime.ttl`` after creation: the reaper deletes it then, under a running job). What
# comes before the job's start is the cluster's start-up (at most the setup's ready timeout,
# ``lifecycle.SETUP_READY_TIMEOUT``) and the scheduling of the job's task after it (its worker
# slot, a triggerer's resume, the submission): SCHEDULING_MARGIN.
SCHEDULING_MARGIN = 120.0


# No job is submitted to a cluster with this little of its lifetime left, whatever its timeout:
# the reaper deletes the cluster at its expiry whatever runs on it, and its clock and this
# host's may differ by seconds.
EXPIRY_MARGIN = 60.0
# Why a cluster the CLI is asked to run a job on is near its expiry, and what to do.
NEAR_EXPIRY = ("It was made about its lifetime.ttl ago: make a new cluster (`ephemeral up`), "
               "or raise lifetime.ttl in its spec.")


def lifetime_left(handle: ClusterHandle | Mapping[str, Any], *,
                  now: datetime | None = None) -> float:
    """Seconds until the cluster's expiry (``expires_at``), negative once it has passed;
    ``handle``: a ClusterHandle or its XCom dict."""
    info = handle if isinstance(handle, Mapping) else handle.model_dump()
    return (parse_utc(str(info["expires_at"])) - (now or datetime.now(UTC))).total_seconds()


def check_timeout_within_ttl(handle: ClusterHandle | Mapping[str, Any], timeout_s: float | None,
                             *, now: datetime | None = None, field: str = "timeout",
                             late: str = NEAR_EXPIRY) -> float:
    """At the job's start: refuse a job on a cluster whose remaining lifetime is
    EXPIRY_MARGIN or less, whatever its timeout (``late`` says why it came to that and what to
    do), and a job timeout longer than the remaining lifetime: the reaper deletes the cluster
    at ``expires_at`` (spec ``lifetime.ttl`` after creation) under a running job.

    ``handle``: a ClusterHandle or its XCom dict. Returns the remaining seconds. Raises
    RequestError naming ``cluster`` or ``field`` and the numbers.
    """
    info = handle if isinstance(handle, Mapping) else handle.model_dump()
    remaining = lifetime_left(info, now=now)
    ttl = (parse_utc(str(info["expires_at"]))
           - parse_utc(str(info["created_at"]))).total_seconds()
    lifetime = (f"cluster {info['name']}'s lifetime (lifetime.ttl {_seconds(ttl)}, expires "
                f"{info['expires_at']})")
    if remaining <= EXPIRY_MARGIN:
        raise RequestError([("cluster", f"{_seconds(max(remaining, 0))} left of {lifetime}: "
                             f"no job is submitted within {_seconds(EXPIRY_MARGIN)} of the "
                             "expiry, when the reaper deletes the cluster whatever runs on it. "
                             + late)])
    if timeout_s is not None and timeout_s > remaining:
        raise RequestError([(field, f"the job timeout {_seconds(timeout_s)} is longer than the "
                             f"{_seconds(remaining)} left of {lifetime}: the reaper would delete "
                             "the cluster under the job; shorten the timeout or raise "
                             "lifetime.ttl in the spec")])
    return remaining


def check_timeout_within_spec_ttl(spec: ResolvedSpec, timeout_s: float, field: str,
                                  ready_timeout: float) -> None:
    """Before the cluster exists: the timeout, after the cluster's start (up to
    ``ready_timeout``) and SCHEDULING_MARGIN, must end within the spec's ``lifetime.ttl``;
    refused naming ``field`` (minutes, as the form asks) with the largest value that fits."""
    ttl = spec.spec.lifetime.ttl_seconds
    before = ready_timeout + SCHEDULING_MARGIN
    if timeout_s + before <= ttl:
        return
    fits = int((ttl - before) // 60)
    fix = (f"ask for at most {fits} minutes or use a spec with a longer ttl" if fits >= 1
           else "use a spec with a longer ttl")
    raise RequestError([(field, f"the job timeout {_seconds(timeout_s)} does not fit in "
                         f"{spec.ref}'s lifetime.ttl {spec.spec.lifetime.ttl} ({ttl} s) after "
                         f"the cluster's start (up to {_seconds(ready_timeout)} to get ready) "
                         f"and {_seconds(SCHEDULING_MARGIN)} to start the job: the reaper would "
                         f"delete the cluster under the job; {fix}")])


# --- the whole request ------------------------------------------------------------------------


def _types(p: dict[str, Any]) -> list[tuple[str, str]]:
    """What the form's schema would refuse, for callers that skip it (the REST API with a conf
    that bypasses the form, a direct call): a wrong type must name its field, not crash. Whole
    numbers written as floats are made ints in ``p``."""
    problems = [(k, "unknown field; fields: " + ", ".join(FIELDS)) for k in p if k not in FIELDS]
    problems += [(k, "missing") for k in FIELDS if k not in p and k not in ("profile", "pip",
                                                                            "gpus_per_worker")]

    def whole(key: str, lo: int, hi: int, optional: bool = False) -> None:
        v = p.get(key)
        if v is None and (optional or key not in p):
            return
        # 2.0 is a whole number to JSON Schema's "integer" (the form's), so here too.
        if isinstance(v, float) and v.is_integer():
            v = p[key] = int(v)
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


def _size(value: Any) -> int:
    """Bytes of ``value`` as an XCom holds it: MetadataOnlyXCom measures Airflow's serialized
    form (the dict itself, by its ``str``), the database stores JSON; the larger of both."""
    import json

    return max(len(str(value).encode()), len(json.dumps(value).encode()))


def check_result_size(result: Mapping[str, Any], limit: int) -> None:
    """The validated request must fit in a task's result (the metadata-only XCom's ``limit``):
    beyond it the task would fail pushing it, naming no field. The fields that can grow are
    named: the entrypoint (``shlex.join`` quotes each ``'`` of it as 5 characters) and pip."""
    size = _size(result)
    if size <= limit:
        return
    over = size - limit
    pip = list(result.get("runtime_env", {}).get("pip") or [])
    entry, pips = _size(result["entrypoint"]), _size(pip)
    where = (f"of the validated request, which is {size} bytes; a task's result may be at most "
             f"{limit} (EPHEMERAL_XCOM_MAX_BYTES)")
    if entry >= pips:
        raise RequestError([("entrypoint", f"once quoted for the job it is "
                             f"{len(result['entrypoint'])} characters (each quote character "
                             f"takes up to 5), {entry} bytes {where}: it may take at most "
                             f"{max(entry - over, 0)}; use fewer quote characters or shorten it "
                             "(pass long inputs as a file's URI)")])
    raise RequestError([("pip", f"{len(pip)} entries take {pips} bytes {where}: they may take "
                         f"at most {max(pips - over, 0)}; remove entries or shorten them (e.g. a "
                         "version range such as 'pkg>=1,<2' instead of many '!=' exclusions)")])


def validate_request(params: Mapping[str, Any], settings: Settings | None = None,
                     *, allow_any_entrypoint: bool = False, run_folder: str | None = None,
                     ready_timeout: float | None = None) -> dict[str, Any]:
    """Check a form's values; return what the DAG's tasks need (all JSON, small for XCom):
    spec, profile, overrides, entrypoint, working_dir, runtime_env, timeout_s, spec_hash.

    ``run_folder``: the DAG run's folder (``artifacts.run_folder(dag_id, run_id)``), where the
    job writes (``confine_outputs``; the DAG passes it; None outside a run: output flags are
    still refused, none is added). With ``allow_any_entrypoint`` the command is the user's own:
    nothing is confined (the jobs still refuse a run path that leaves the root).
    ``ready_timeout``: the setup's (default ``lifecycle.SETUP_READY_TIMEOUT``, the
    CreateClusterOperator's), part of the job's time budget within the spec's ttl.

    Raises RequestError naming every refused field. Resolves the spec (files only): nothing is
    created and no process is started.
    """
    s = settings or get_settings()
    jobs_dir, specs_dir = s.jobs_dir, s.specs_dir  # read once, where the form uses them
    p = dict(params)
    if problems := _types(p):
        raise RequestError(problems)
    # A templated null profile can arrive as the text "None"; "none" is how the form shows it.
    profile = None if p.get("profile") in (None, "", "None", "none") else str(p["profile"])
    entrypoint = check_entrypoint(p["entrypoint"], jobs_dir, allow_any_entrypoint)
    check_engine(entrypoint, jobs_dir)
    if not allow_any_entrypoint:
        entrypoint = confine_outputs(entrypoint, run_folder)
    check_arguments(entrypoint, jobs_dir)
    pip = check_pip(p.get("pip"), pip_allow_list(s.pip_allow))
    workers, gpus = int(p["workers"]), p.get("gpus_per_worker")
    # A reference into the specs folder only: a path would let a request read any YAML file.
    if not is_spec_ref(p["cluster_spec"]):
        raise RequestError([("cluster_spec", f"{p['cluster_spec']!r} is not a spec reference "
                             "such as ray/adhoc-cpu or ray/adhoc-cpu@1 (paths are not accepted)")])
    try:
        base = resolve(p["cluster_spec"], specs_dir=specs_dir)
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
        spec = resolve(p["cluster_spec"], profile, overrides, specs_dir=specs_dir)
    except SpecError as err:
        raise RequestError([(_field_of(f), f"{f}: {m}" if f else m)
                            for f, m in err.problems] or [("cluster_spec", str(err))]) from err
    from ephemeral.jobs.scaling import placement_problem

    assert isinstance(spec.spec, RaySpec)
    if (why := placement_problem(entrypoint, spec.spec)) is not None:
        raise RequestError([("entrypoint", why)])
    timeout_s = 60 * int(p["timeout_minutes"])
    from ephemeral.lifecycle import SETUP_READY_TIMEOUT

    check_timeout_within_spec_ttl(spec, timeout_s, "timeout_minutes",
                                  SETUP_READY_TIMEOUT if ready_timeout is None else ready_timeout)
    result = {"spec": spec.ref, "profile": profile, "overrides": overrides,
              "entrypoint": entrypoint, "working_dir": str(jobs_dir),
              "runtime_env": {"pip": pip} if pip else {}, "timeout_s": timeout_s,
              "spec_hash": spec.hash}
    check_result_size(result, xcom_max_bytes())
    return result


def ray_spec_refs(specs_dir: Path) -> list[str]:
    """The Ray specs a form offers: ``ray/<name>`` for each current file (a listing; archived
    ``<name>@<N>.yaml`` versions are left out)."""
    refs = (f"ray/{p.stem}" for p in (specs_dir / "ray").glob("*.yaml") if "@" not in p.stem)
    return sorted(ref for ref in refs if is_spec_ref(ref))  # Adhoc.yaml could never be chosen
