"""Backends: one narrow contract (``base``), several ways to run clusters."""

from __future__ import annotations

from ephemeral.backends.base import (
    ClusterBackend,
    ClusterHandle,
    ClusterStatus,
    Endpoints,
    OwnerSelector,
    Phase,
)
from ephemeral.errors import SettingError

__all__ = [
    "ClusterBackend",
    "ClusterHandle",
    "ClusterStatus",
    "Endpoints",
    "OwnerSelector",
    "Phase",
    "get_backend",
]


def get_backend(name: str | None = None) -> ClusterBackend:
    """The backend called ``name`` (default: ``$EPHEMERAL_BACKEND``, else ``local``)."""
    from ephemeral.settings import get_settings, lookup

    given = name
    name = name or get_settings().backend
    if name == "local":
        from ephemeral.backends.local import LocalBackend

        return LocalBackend()
    if name == "fake":
        from ephemeral.backends.fake import process_backend

        return process_backend()
    if name == "kubernetes":
        from ephemeral.backends.kubernetes import KubeConfig, KubernetesBackend

        return KubernetesBackend(KubeConfig.from_env())
    # Refused input, not an outage: a task retrying a misspelt backend would only fail again.
    source = "backend" if given else lookup("backend").source  # what to correct
    raise SettingError(source, [("", f"unknown backend {name!r}; use local or kubernetes")])
