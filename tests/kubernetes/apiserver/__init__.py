"""A strict Kubernetes API mock over real HTTP, for the real ``kubernetes`` client.

``ApiServer`` serves the API (kmock's ``KubernetesScaffold`` for HTTP, request parsing,
discovery and Status errors; an own thread-safe store for the semantics that matter here),
``Operator`` plays KubeRay, the Deployment controller and the garbage collector as the test
decides, and ``WebEndpoints`` answers the Ray dashboard and Spark master UI through an
ingress-style URL template.
"""

from tests.kubernetes.apiserver.operator import ConnectScenario, Operator, RayScenario
from tests.kubernetes.apiserver.server import ApiServer
from tests.kubernetes.apiserver.store import Store
from tests.kubernetes.apiserver.web import WebEndpoints

__all__ = ["ApiServer", "ConnectScenario", "Operator", "RayScenario", "Store", "WebEndpoints"]
