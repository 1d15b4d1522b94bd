"""Process-wide settings, read from the environment once per call site that asks.

Everything has a default that works on a fresh machine; nothing here is a secret.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ephemeral.errors import SpecError

INSTANCE_VARS = ("EPHEMERAL_INSTANCE", "AIRFLOW__EPHEMERAL__INSTANCE")
_INSTANCE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")


def _default_specs_dir() -> Path:
    # A checkout keeps its specs next to the package; an installed package uses the working dir.
    here = Path(__file__).resolve().parent.parent / "cluster_specs"
    return here if here.is_dir() else Path.cwd() / "cluster_specs"


@dataclass(frozen=True)
class Settings:
    home: Path
    """Where the local backend keeps one state folder per cluster (``$EPHEMERAL_HOME``)."""
    specs_dir: Path
    """Root of the versioned cluster specs (``$EPHEMERAL_SPECS_DIR``)."""
    backend: str
    """Default backend name: ``local`` (real processes on this host) or ``kubernetes``."""
    default_ttl_seconds: int
    """Lifetime after which the reaper may delete a cluster whose spec sets no ``ttl``."""
    artifact_root: str
    """Where jobs write datasets, checkpoints, models and metrics (``$EPHEMERAL_ARTIFACT_ROOT``):
    a ``file://`` URI by default; ``s3://`` and ``gs://`` work through pyarrow filesystems."""
    instance: str = ""
    """The deployment that owns clusters (``$EPHEMERAL_INSTANCE``, or Airflow's
    ``[ephemeral] instance``): part of every cluster's name digest and owner labels, so two
    Airflows (staging, production) sharing a namespace or a machine never adopt, delete or reap
    each other's clusters. Default: derived from the Airflow home (see ``instance_of``)."""
    instance_explicit: bool = False
    """Whether ``instance`` was set, rather than derived from the Airflow home."""
    jobs_dir: Path = field(default_factory=lambda: _default_dir("jobs"))
    """Job scripts the trigger form may run (``$EPHEMERAL_JOBS_DIR``; default: ``jobs/`` of a
    checkout, else of the working directory)."""
    pip_allow: str | None = None
    """Packages the trigger form may install (``$EPHEMERAL_PIP_ALLOW``): ``name,name`` or the
    path of a file with one name a line. Unset: any plain requirement. Every allowed package
    runs its code on every node of the cluster."""
    adhoc_max_workers: int | None = None
    """Raises the trigger form's cap on workers above a spec's maxReplicas
    (``$EPHEMERAL_ADHOC_MAX_WORKERS``)."""
    adhoc_max_gpus: int | None = None
    """Raises the trigger form's cap on GPUs per worker above a spec's
    (``$EPHEMERAL_ADHOC_MAX_GPUS``)."""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        home = Path(env.get("EPHEMERAL_HOME") or Path.home() / ".ephemeral").expanduser()
        specs = Path(env["EPHEMERAL_SPECS_DIR"]) if env.get("EPHEMERAL_SPECS_DIR") else None
        return cls(
            home=home,
            specs_dir=specs or _default_specs_dir(),
            backend=env.get("EPHEMERAL_BACKEND", "local"),
            default_ttl_seconds=int(env.get("EPHEMERAL_DEFAULT_TTL", "21600")),
            artifact_root=as_uri(env.get("EPHEMERAL_ARTIFACT_ROOT") or str(home / "artifacts")),
            instance=instance_of(env),
            instance_explicit=any(env.get(v) for v in INSTANCE_VARS),
            jobs_dir=Path(env["EPHEMERAL_JOBS_DIR"]) if env.get("EPHEMERAL_JOBS_DIR")
            else _default_dir("jobs"),
            pip_allow=env.get("EPHEMERAL_PIP_ALLOW") or None,
            adhoc_max_workers=_count(env, "EPHEMERAL_ADHOC_MAX_WORKERS"),
            adhoc_max_gpus=_count(env, "EPHEMERAL_ADHOC_MAX_GPUS"),
        )


def instance_of(env: os._Environ[str] | dict[str, str]) -> str:
    """This deployment's instance id: ``$EPHEMERAL_INSTANCE`` (or ``[ephemeral] instance`` as
    ``AIRFLOW__EPHEMERAL__INSTANCE``) when set, else ``h`` and 10 hex digits of a hash of the
    resolved ``$AIRFLOW_HOME`` (``~/airflow`` when unset). The derived value is stable for one
    Airflow home and differs between homes; every Airflow component of one deployment shares
    its home. Containers all use ``/opt/airflow``, so the Kubernetes backend asks for an
    explicit instance."""
    for var in INSTANCE_VARS:
        if value := env.get(var):
            if not _INSTANCE.match(value):
                raise SpecError(var, [(var, f"{value!r} must be 1-40 characters of lower-case "
                                            "letters, digits and '-', starting and ending "
                                            "alphanumeric, e.g. 'staging' or 'prod-eu'")])
            return value
    home = Path(env.get("AIRFLOW_HOME") or Path.home() / "airflow").expanduser().resolve()
    return "h" + hashlib.sha256(str(home).encode()).hexdigest()[:10]


def _default_dir(name: str) -> Path:
    # A checkout keeps specs and jobs next to the package; an installed package uses the cwd.
    here = Path(__file__).resolve().parent.parent / name
    return here if here.is_dir() else Path.cwd() / name


def _count(env: os._Environ[str] | dict[str, str], var: str) -> int | None:
    text = env.get(var)
    if not text:
        return None
    if not text.isdigit():
        raise SpecError(var, [(var, f"{text!r} is not a whole number of 0 or more")])
    return int(text)


def as_uri(path_or_uri: str) -> str:
    """A URI for a local path (``file://``); URIs are returned as they are."""
    if "://" in path_or_uri:
        return path_or_uri.rstrip("/")
    return Path(path_or_uri).expanduser().resolve().as_uri()


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


def job_environ() -> dict[str, str]:
    """The environment of every process the local backend starts (nodes, Ray jobs through
    them, spark-submit drivers): this process's variables named in ``JOB_ENV_ALLOW``, plus the
    names a deployment adds in ``$EPHEMERAL_JOB_ENV_ALLOW`` (comma-separated, ``PREFIX_*``
    allowed; e.g. ``AWS_REGION,AWS_PROFILE`` for an s3:// artifact root; names starting with
    ``AIRFLOW`` or ``EPHEMERAL_`` are never inherited), plus ``EPHEMERAL_ARTIFACT_ROOT`` as this
    process resolves it.

    Nothing else passes: not Airflow's settings, not ``EPHEMERAL_KUBECONFIG_CONTENT``, not an
    unprefixed secret. What a job needs beyond this it declares (a spec's ``runtimeEnv.env``,
    a job's ``runtime_env``), and callers add the cluster's own markers themselves."""
    extra = tuple(n.strip() for n in os.environ.get(JOB_ENV_ALLOW_VAR, "").split(",")
                  if n.strip())
    env = {k: v for k, v in os.environ.items() if job_env_allowed(k, extra)}
    env["EPHEMERAL_ARTIFACT_ROOT"] = get_settings().artifact_root
    return env


def get_settings() -> Settings:
    return Settings.from_env()
