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
        )


def get_settings() -> Settings:
    return Settings.from_env()
