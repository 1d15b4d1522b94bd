"""Which Kubernetes objects are a cluster's: labels only find candidates (anyone may copy them
onto an object, a Deployment or a pod of their own), ownership decides. An object is the
cluster's when it is one of the objects found so far, or names one of them as its owner, from
the verified primary down: RayCluster -> pods; SparkConnect -> server pod -> executor pods;
master Deployment -> the other Deployments -> their ReplicaSets -> pods. ReplicaSets are
never read (the Role grants nothing on them): a pod's ReplicaSet owner counts by its name,
``<deployment>-<pod-template-hash>``, of one of the cluster's Deployments."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ephemeral.backends.kubernetes.client import DEPLOYMENT, Kind, name_of


def deployment_of(replicaset: str) -> str | None:
    """The Deployment a ReplicaSet named ``<deployment>-<pod-template-hash>`` belongs to, or
    None for a name of no such form. The hash is one token without a '-', so the Deployment's
    name is all before the last '-', exactly: matched as a prefix, cluster ``etl``'s
    ``etl-worker`` would take cluster ``etl-worker``'s ``etl-worker-master-<hash>``."""
    deployment, _, template_hash = replicaset.rpartition("-")
    return deployment if deployment and template_hash.isalnum() else None


@dataclass
class Owned:
    """The objects of one cluster found so far, by uid, and its Deployments' names."""

    uids: set[str] = field(default_factory=set)
    deployments: set[str] = field(default_factory=set)

    def add(self, kind: Kind, obj: dict[str, Any]) -> None:
        self.uids.add(str(obj["metadata"].get("uid")))
        if kind is DEPLOYMENT:
            self.deployments.add(name_of(obj))

    def claims(self, obj: dict[str, Any]) -> bool:
        """Whether ``obj`` is one of them, or names one of them (or a ReplicaSet of one of
        their Deployments) as its owner."""
        if str(obj["metadata"].get("uid")) in self.uids:
            return True
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("uid") in self.uids:
                return True
            if ref.get("kind") == "ReplicaSet" and \
                    deployment_of(str(ref.get("name", ""))) in self.deployments:
                return True
        return False

    def take(self, kind: Kind, candidates: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The candidates that are the cluster's, added, in their order; then those they own
        in turn (a Connect server pod owns its executors), until no more are."""
        left = list(candidates)
        taken: list[dict[str, Any]] = []
        while found := [o for o in left if self.claims(o)]:
            for obj in found:
                self.add(kind, obj)
            taken += found
            left = [o for o in left if not any(o is f for f in found)]
        return taken

