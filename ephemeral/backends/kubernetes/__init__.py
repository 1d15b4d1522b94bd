"""The Kubernetes backend: KubeRay RayClusters and Spark standalone clusters.

``KubernetesBackend`` and ``KubeConfig`` are imported lazily by ``get_backend("kubernetes")``;
the ``kubernetes`` package itself is imported only inside ``client``.
"""

from __future__ import annotations

from ephemeral.backends.kubernetes.backend import KubernetesBackend
from ephemeral.backends.kubernetes.config import KubeConfig

__all__ = ["KubeConfig", "KubernetesBackend"]
