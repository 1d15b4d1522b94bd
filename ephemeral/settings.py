"""Process-wide settings, read once per call site that asks.

One precedence rule for every setting ``x`` declared in ``ephemeral.config_section``: the
environment variable ``EPHEMERAL_<X>``, else Airflow's ``[ephemeral] x``, else the declared
default. Everything has a default that works on a fresh machine.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ephemeral.config_section import BY_KEY, SECTION
from ephemeral.errors import SettingError

INSTANCE_VARS = ("EPHEMERAL_INSTANCE", "AIRFLOW__EPHEMERAL__INSTANCE")


class Found(NamedTuple):
    value: str | None
    source: str
    """Where the value came from, for error messages: ``EPHEMERAL_<X>``, ``[ephemeral] x`` or
    ``default``."""


def lookup(key: str, env: Mapping[str, str] | None = None) -> Found:
    """Setting ``key`` with where it came from. ``env`` stands in for the process environment
    (tests, a child's environment); then Airflow's configuration counts only as its
    ``AIRFLOW__EPHEMERAL__X`` variables in ``env``. Empty values count as unset."""
    option = BY_KEY[key]  # KeyError: every setting read is declared (docs and provider info)
    environ = os.environ if env is None else env
    if value := environ.get(option.env_var):
        return Found(value, option.env_var)
    where = f"[{SECTION}] {key}"
    if value := environ.get(option.airflow_env_var):
        return Found(value, where)
    # Airflow answers the declared default for an option it has no value of: that is ours.
    if env is None and (value := _airflow_option(key)) and value != option.default:
        return Found(value, where)
    return Found(option.default, "default")


def refuse_unread_variant(key: str) -> None:
    """Raise SettingError for a sensitive option that is unset here but set as ``<key>_secret``
    or ``<key>_cmd``, where no Airflow answers (the CLI, the reaper CronJob): only Airflow's
    own processes resolve those. Called where the value would be used, had it been read (the
    reaper logging in without its password)."""
    if _airflow_conf() is not None or lookup(key).source != "default":
        return
    section = _airflow_cfg(_airflow_cfg_path())
    for suffix in ("_secret", "_cmd"):
        env_var = f"{BY_KEY[key].airflow_env_var}{suffix.upper()}"
        if os.environ.get(env_var) or section.get(key + suffix):
            where = env_var if os.environ.get(env_var) else f"[{SECTION}] {key}{suffix}"
            raise SettingError(where, [("", f"{where} is set, but only Airflow's own "
                                            f"processes resolve {suffix} options, and this "
                                            f"one is not one: give it {BY_KEY[key].env_var} "
                                            "instead (from the same secret)")])


def _airflow_conf() -> Any:
    """The configuration of the Airflow this process runs in, None outside one."""
    for name in ("airflow.configuration", "airflow.sdk.configuration"):
        # (getattr: a module still being imported has no `conf` yet)
        if (conf := getattr(sys.modules.get(name), "conf", None)) is not None:
            return conf
    return None


def setting(key: str, env: Mapping[str, str] | None = None) -> str | None:
    """``$EPHEMERAL_<KEY>``, else Airflow's ``[ephemeral] <key>``, else the declared default."""
    return lookup(key, env).value


def unused_setting(key: str, why: str, env: Mapping[str, str] | None = None) -> str | None:
    """What to warn of when ``key`` is set but does nothing (``why``: what it needs), named
    where it was set; None when it is not set. Said, not refused: what it belongs to (a
    notifier, prices) never stops a DAG or the reaper."""
    found = lookup(key, env)
    if found.source == "default":
        return None
    return f"{found.source} is set but does nothing: {why}"


def _airflow_option(key: str) -> str | None:
    """``[ephemeral] key`` from Airflow's configuration. Inside an Airflow process (its
    configuration already loaded) Airflow answers, with its secrets backends and ``_cmd``
    variants; elsewhere (the ``ephemeral`` CLI) ``airflow.cfg`` is read directly: importing
    Airflow costs seconds."""
    if (conf := _airflow_conf()) is not None:
        value = conf.get(SECTION, key, fallback=None)
        return str(value) if value not in (None, "") else None
    return _airflow_cfg(_airflow_cfg_path()).get(key) or None


def airflow_home(env: Mapping[str, str] | None = None) -> Path:
    """``$AIRFLOW_HOME``, else ``~/airflow`` (Airflow's own default)."""
    environ = os.environ if env is None else env
    return Path(environ.get("AIRFLOW_HOME") or Path.home() / "airflow").expanduser()


def _airflow_cfg_path() -> Path:
    if path := os.environ.get("AIRFLOW_CONFIG"):
        return Path(path).expanduser()
    return airflow_home() / "airflow.cfg"


def airflow_configured() -> bool:
    """Whether an Airflow ran with this process's Airflow home: Airflow writes its
    configuration file there at its first start. A process without it (a cron job without
    ``$AIRFLOW_HOME``) derives an instance that no deployment has."""
    return _airflow_cfg_path().is_file()


def _airflow_cfg(path: Path) -> dict[str, str]:
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    return _read_section(path, stamp)


@functools.lru_cache(maxsize=4)
def _read_section(path: Path, _stamp: int) -> dict[str, str]:
    import configparser  # only where an airflow.cfg exists and the environment is silent

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(path)
    except configparser.Error:  # Airflow itself reports a broken airflow.cfg
        return {}
    return dict(parser[SECTION]) if parser.has_section(SECTION) else {}
INSTANCE_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")


@dataclass(frozen=True)
class Settings:
    """What locating and deleting clusters needs (home, backend, instance) is read here; every
    other setting is read where it is used, so a bad value fails the task that uses it, naming
    its source, and never a teardown, the run-end cleanup, the reaper or ``ephemeral ls``."""

    home: Path
    """Where the local backend keeps one state folder per cluster (``$EPHEMERAL_HOME``)."""
    backend: str
    """Default backend name: ``local`` (real processes on this host) or ``kubernetes``."""
    instance: str = ""
    """The deployment that owns clusters (``$EPHEMERAL_INSTANCE``, or Airflow's
    ``[ephemeral] instance``): part of every cluster's name digest and owner labels, so two
    Airflows (staging, production) sharing a namespace or a machine never adopt, delete or reap
    each other's clusters. Default: derived from the Airflow home (see ``instance_of``)."""
    instance_explicit: bool = False
    """Whether ``instance`` was set, rather than derived from the Airflow home."""

    @property
    def specs_dir(self) -> Path:
        """Root of the versioned cluster specs (``$EPHEMERAL_SPECS_DIR``; default:
        ``cluster_specs/`` of a checkout, else of the working directory)."""
        return folder("specs_dir") or default_dir("cluster_specs")

    @property
    def artifact_root(self) -> str:
        """Where jobs write datasets, checkpoints, models and metrics
        (``$EPHEMERAL_ARTIFACT_ROOT``): a ``file://`` URI by default; ``s3://`` and ``gs://``
        work through pyarrow filesystems."""
        return artifact_root(self.home)

    @property
    def jobs_dir(self) -> Path:
        """Job scripts the trigger form may run (``$EPHEMERAL_JOBS_DIR``; default: ``jobs/`` of
        a checkout, else of the working directory)."""
        return folder("jobs_dir") or default_dir("jobs")

    @property
    def pip_allow(self) -> Found:
        """Packages the trigger form may install (``$EPHEMERAL_PIP_ALLOW``): ``name,name`` or
        the path of a file with one name a line (``adhoc.pip_allow_list`` reads it). Unset: any
        plain requirement. Every allowed package runs its code on every node of the cluster."""
        return lookup("pip_allow")

    @property
    def adhoc_max_workers(self) -> int | None:
        """Raises the trigger form's cap on workers above a spec's maxReplicas
        (``$EPHEMERAL_ADHOC_MAX_WORKERS``)."""
        return count("adhoc_max_workers")

    @property
    def adhoc_max_gpus(self) -> int | None:
        """Raises the trigger form's cap on GPUs per worker above a spec's
        (``$EPHEMERAL_ADHOC_MAX_GPUS``)."""
        return count("adhoc_max_gpus")

    @property
    def allow_arbitrary_entrypoints(self) -> bool:
        """The trigger form may run any entrypoint, not only a script of ``jobs_dir``
        (``$EPHEMERAL_ALLOW_ARBITRARY_ENTRYPOINTS``, or Airflow's ``[ephemeral]
        allow_arbitrary_entrypoints``)."""
        return flag("allow_arbitrary_entrypoints")

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            home=folder("home") or Path.home() / ".ephemeral",
            backend=setting("backend") or "local",
            instance=instance_of(),
            instance_explicit=lookup("instance").source != "default",
        )


def instance_of(env: Mapping[str, str] | None = None) -> str:
    """This deployment's instance id: ``$EPHEMERAL_INSTANCE`` or Airflow's ``[ephemeral]
    instance`` when set, else ``h`` and 10 hex digits of a hash of the resolved
    ``$AIRFLOW_HOME`` (``~/airflow`` when unset). The derived value is stable for one Airflow
    home and differs between homes; every Airflow component of one deployment shares its home.
    Containers all use ``/opt/airflow``, so the Kubernetes backend asks for an explicit
    instance. ``env`` stands in for the process environment (see ``lookup``)."""
    found = lookup("instance", None if env is os.environ else env)
    if found.value:
        if not INSTANCE_PATTERN.fullmatch(found.value):
            raise SettingError(found.source, [(found.source, (
                f"{found.value!r} must be 1-40 characters of lower-case letters, digits and "
                "'-', starting and ending alphanumeric, e.g. 'staging' or 'prod-eu'"))])
        return found.value
    home = airflow_home(env).resolve()
    return "h" + hashlib.sha256(str(home).encode()).hexdigest()[:10]


def instance_mismatch(mine: str, theirs: str) -> str:
    """What is wrong when this process, of deployment instance ``mine``, acts on a cluster of
    ``theirs``: where ``mine`` came from (the setting, or the Airflow home it was derived
    from) and what makes every component agree."""
    found = lookup("instance")
    if found.value:
        return (f"deployment instance {mine!r} (from {found.source}) but the cluster belongs to "
                f"{theirs!r} ({found.source} differs between the setup and this task)")
    home = (f"AIRFLOW_HOME={airflow_home()}" if os.environ.get("AIRFLOW_HOME")
            else f"the Airflow home {airflow_home()}, AIRFLOW_HOME being unset")
    return (f"deployment instance {mine!r} (derived from {home}) but the cluster belongs to "
            f"{theirs!r}: the setup ran with another Airflow home or instance; set "
            f"EPHEMERAL_INSTANCE (or [{SECTION}] instance) to one name on every Airflow "
            "component and the reaper")


def default_dir(name: str) -> Path:
    """``name/`` of a checkout (next to the package), else of the working directory (an
    installed package): where specs, jobs, gates and parameter files are when unset."""
    here = Path(__file__).resolve().parent.parent / name
    return here if here.is_dir() else Path.cwd() / name


_DIGITS = re.compile(r"[0-9]+")  # ASCII: str.isdigit() takes '²', which int() refuses
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def count(key: str, env: Mapping[str, str] | None = None, *, least: int = 0) -> int | None:
    """Setting ``key`` as a whole number of ``least`` or more (None when unset)."""
    found = lookup(key, env)
    if not found.value:
        return None
    text = found.value.strip()
    if not _DIGITS.fullmatch(text) or int(text) < least:
        raise SettingError(found.source, [(found.source, f"{found.value!r} is not a whole number "
                                                      f"of {least} or more")])
    return int(text)


XCOM_MAX_BYTES = 4096


def xcom_max_bytes() -> int:
    """Largest XCom value ``MetadataOnlyXCom`` accepts: ``$EPHEMERAL_XCOM_MAX_BYTES`` or
    ``[ephemeral] xcom_max_bytes`` (default 4096). Here, without Airflow, so a task's own
    checks (``adhoc.validate_request``) can bound what it returns by the same number. 0 is
    refused, not taken for the default: no XCom value at all is no limit anyone means."""
    limit = count("xcom_max_bytes", least=1)
    return XCOM_MAX_BYTES if limit is None else limit


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def flag(key: str, env: Mapping[str, str] | None = None) -> bool:
    """Setting ``key`` as true or false (unset: its declared default, else false); any other
    value fails naming its source, rather than quietly meaning one of them."""
    found = lookup(key, env)
    return as_flag(found) if found.value else False


def as_flag(found: Found) -> bool:
    """``found``'s value as true or false; anything else, a blank one included, fails naming
    its source (the one rule for every true-or-false setting)."""
    text = (found.value or "").strip().lower()
    if text not in _TRUE | _FALSE:
        raise SettingError(found.source, [(found.source, f"{found.value!r} is not true or "
                                           "false; give true or false")])
    return text in _TRUE


def number(key: str, env: Mapping[str, str] | None = None) -> float | None:
    """Setting ``key`` as a number (None when unset); a bad value fails naming its source."""
    found = lookup(key, env)
    if not found.value:
        return None
    text = found.value.strip()
    # float() also reads inf, nan (which would mean "never" without saying so), 1_000 and
    # other scripts' digits: one reading of a number, the one every reader of the value knows.
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise SettingError(found.source, [(found.source, f"{found.value!r} is not a number")])
    return value


def folder(key: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Setting ``key`` as an absolute folder (``~`` expanded; None when unset). A relative one
    would be another folder in each process's working directory: the worker, the run-end
    listener and a reaper started by cron would each look for clusters somewhere else."""
    return _path(key, env, "the folder")


def file_path(key: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Setting ``key`` as an absolute file path, by ``folder``'s rule."""
    return _path(key, env, "the file")


def _path(key: str, env: Mapping[str, str] | None, what: str) -> Path | None:
    found = lookup(key, env)
    if not found.value:
        return None
    example = BY_KEY[key].example or ""
    return absolute(found, what, example if example.startswith("/") else "/srv/ephemeral")


def absolute(found: Found, what: str, example: str) -> Path:
    """``found``'s path, stripped and ``~`` expanded; refused, naming its source, unless it
    is absolute (what a path setting must be, so that every process means the same one)."""
    text = (found.value or "").strip()
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~user of no such user, or no home to expand ~ to
        path = Path(text)
    if not text or not path.is_absolute():
        raise SettingError(found.source, [(found.source, (
            f"{found.value!r} is not an absolute path: give {what} from the root, e.g. "
            f"{example}, so every process of the deployment finds the same one"))])
    return path


def artifact_root(home: Path) -> str:
    """The artifact root as a URI: ``$EPHEMERAL_ARTIFACT_ROOT`` or ``[ephemeral]
    artifact_root`` (a URI, or an absolute folder as for ``folder``), else
    ``<home>/artifacts``. A URI is stripped; one with whitespace or a control character in it
    is refused: every process would read and write under another name than the one shown."""
    found = lookup("artifact_root")
    text = (found.value or "").strip()
    if "://" not in text:
        where = absolute(found, "the folder", "/srv/ephemeral/artifacts (or a URI such as "
                         "s3://bucket/ephemeral)") if found.value else home / "artifacts"
        return where.resolve().as_uri()
    if any(c.isspace() or not c.isprintable() for c in text):
        raise SettingError(found.source, [(found.source, (
            f"{found.value!r} has whitespace or a control character in it: give the URI "
            "alone, e.g. s3://bucket/ephemeral (a space in a path as %20)"))])
    return text.rstrip("/")


# What processes of a cluster may inherit from the process that starts them. An allow-list, not
# a deny-list: the Airflow worker's environment holds Airflow's database URL and keys, kubeconfig
# contents, cloud credentials and whatever else its deployment put there, and jobs print their
# environment into task logs. LC_* names match by prefix.
JOB_ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
                 "JAVA_HOME", "PYTHONPATH", "SPARK_HOME", "CUDA_VISIBLE_DEVICES",
                 # where TLS trust roots are (paths, not secrets): pip and HTTPS from jobs
                 "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")
JOB_ENV_ALLOW_VAR = "EPHEMERAL_JOB_ENV_ALLOW"
# Never inherited, whatever a deployment allows: Airflow's settings and ours (which include
# EPHEMERAL_KUBECONFIG_CONTENT and the reaper's Airflow password).
JOB_ENV_NEVER = ("AIRFLOW", "_AIRFLOW", "EPHEMERAL_")


def job_env_allowed(name: str, extra: tuple[str, ...] = ()) -> bool:
    if name.startswith(JOB_ENV_NEVER):
        return False
    return any(name.startswith(a[:-1]) if a.endswith("*") else name == a
               for a in (*JOB_ENV_ALLOW, *extra))


_ENV_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")


def job_env_extra() -> tuple[str, ...]:
    """The names and ``PREFIX_*`` entries of ``job_env_allow``. A bare ``*`` (the empty prefix)
    is refused: it would pass every variable, secrets included, into every node and job."""
    found = lookup("job_env_allow")
    extra = tuple(n.strip() for n in (found.value or "").split(",") if n.strip())
    for entry in extra:
        if entry == "*":
            why = ("'*' would pass every variable of this process, secrets included "
                   "(AWS_SECRET_ACCESS_KEY, PGPASSWORD), to every node and job")
        elif not _ENV_ENTRY.fullmatch(entry):
            why = f"{entry!r} is no variable name or PREFIX_*"
        else:
            continue
        raise SettingError(found.source, [(found.source, (
            f"{why}: list the names or prefixes the jobs need, e.g. AWS_REGION,AWS_PROFILE"))])
    return extra


def job_environ() -> dict[str, str]:
    """The environment of every process the local backend starts (nodes, Ray jobs through
    them, spark-submit drivers): this process's variables named in ``JOB_ENV_ALLOW``, plus the
    names a deployment adds in ``$EPHEMERAL_JOB_ENV_ALLOW`` or ``[ephemeral] job_env_allow``
    (``job_env_extra``; e.g. ``AWS_REGION,AWS_PROFILE`` for an s3:// artifact root; names
    starting with ``AIRFLOW`` or ``EPHEMERAL_`` are never inherited), plus
    ``EPHEMERAL_ARTIFACT_ROOT`` as this process resolves it.

    Nothing else passes: not Airflow's settings, not ``EPHEMERAL_KUBECONFIG_CONTENT``, not an
    unprefixed secret. What a job needs beyond this it declares (a spec's ``runtimeEnv.env``,
    a job's ``runtime_env``), and callers add the cluster's own markers themselves."""
    extra = job_env_extra()
    env = {k: v for k, v in os.environ.items() if job_env_allowed(k, extra)}
    from ephemeral.jobs.artifacts import job_root

    env["EPHEMERAL_ARTIFACT_ROOT"] = job_root()
    return env


def get_settings() -> Settings:
    return Settings.from_env()
