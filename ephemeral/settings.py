"""Process-wide settings, read from the environment once per call site that asks.

Everything has a default that works on a fresh machine; nothing here is a secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
        )


def as_uri(path_or_uri: str) -> str:
    """A URI for a local path (``file://``); URIs are returned as they are."""
    if "://" in path_or_uri:
        return path_or_uri.rstrip("/")
    return Path(path_or_uri).expanduser().resolve().as_uri()


# Airflow's own configuration and credentials (database URL, fernet and JWT keys, API tokens)
# must not reach cluster processes and jobs, whose output is streamed into task logs.
_NOT_FOR_JOBS = ("AIRFLOW", "_AIRFLOW", "EPHEMERAL_AIRFLOW_")


def job_environ() -> dict[str, str]:
    """This process's environment without Airflow's settings and secrets."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_NOT_FOR_JOBS)}


def get_settings() -> Settings:
    return Settings.from_env()
