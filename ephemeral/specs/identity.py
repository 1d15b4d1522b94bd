"""Who owns a cluster, and the deterministic name and labels derived from that.

The same (deployment instance, dag_id, run_id, setup task_id, map_index, spec name) always gives
the same cluster name, so a retried setup adopts its cluster and a teardown finds it without XCom.
The instance keeps two deployments whose run ids coincide (``scheduled__<date>``) apart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ephemeral.errors import SpecError
from ephemeral.specs.labels import is_label_value
from ephemeral.specs.models import DNS1123_HELP, DNS1123_LABEL

PREFIX = "ephemeral.dev/"
NAME_MAX = 47  # RayJob names are limited to 47 characters; RayCluster to 53
MANAGED_BY = "app.kubernetes.io/managed-by"


def label_value(value: str) -> str:
    """A Kubernetes label value for ``value``: as is when valid, else a stable hash of it. Two
    ids can share a label (a run id ``h-8bc4...`` and the long id that hashes to it), so
    labels only select: ``OwnerSelector.full`` confirms by the full ids."""
    if is_label_value(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:20]


def cluster_name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a cluster name, or None when nothing is: the one rule for
    every name that comes from outside (the CLI, a backend's get or delete, a handle). A name
    becomes a folder of the local backend's home and a value in Kubernetes label selectors,
    so it is a DNS-1123 label of at most NAME_MAX characters: never '', '..', '/', ',' or '!='."""
    if isinstance(name, str) and len(name) <= NAME_MAX and DNS1123_LABEL.fullmatch(name):
        return None
    return (f"cluster name {name!r} must be at most {NAME_MAX} characters (not empty) "
            f"of {DNS1123_HELP}")


def check_cluster_name(name: object, field: str = "name") -> str:
    """``name`` when it is a cluster name; else a SpecError naming ``field`` (an option or
    argument of the caller's) and the rule, before anything is done with it."""
    if problem := cluster_name_problem(name):
        raise SpecError(field, [(field, problem)])
    return str(name)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def current_instance() -> str:
    """This deployment's instance id (``Settings.instance``)."""
    from ephemeral.settings import get_settings

    return get_settings().instance


INSTANCE_LABEL = PREFIX + "instance"


@dataclass(frozen=True)
class ClusterIdentity:
    """The owner of a cluster. ``name`` is given only for clusters made by hand (the CLI)."""

    spec_name: str
    dag_id: str = ""
    run_id: str = ""
    task_id: str = ""
    map_index: int = -1
    explicit_name: str | None = field(default=None)
    instance: str = field(default_factory=current_instance)

    @classmethod
    def manual(cls, spec_name: str, name: str | None = None) -> ClusterIdentity:
        if name is not None and (problem := cluster_name_problem(name)):
            raise ValueError(problem)
        return cls(spec_name=spec_name, explicit_name=name)

    @property
    def owner(self) -> str:
        return "airflow" if self.dag_id else "manual"

    @property
    def name(self) -> str:
        if self.explicit_name:
            return self.explicit_name
        key = _digest(self.instance, self.dag_id, self.run_id, self.task_id, str(self.map_index),
                      self.spec_name)
        return f"eph-{self.spec_name}-{key[:10]}"

    def labels(self) -> dict[str, str]:
        labels = {
            MANAGED_BY: "ephemeral",
            PREFIX + "cluster": self.name,
            PREFIX + "owner": self.owner,
            PREFIX + "spec": self.spec_name,
            INSTANCE_LABEL: self.instance,
        }
        if self.dag_id:
            labels |= {
                PREFIX + "dag-id": label_value(self.dag_id),
                PREFIX + "run-id": label_value(self.run_id),
                PREFIX + "task-id": label_value(self.task_id),
                # "-1" (an unmapped task) is not a label value: those must start alphanumeric.
                PREFIX + "map-index": str(self.map_index) if self.map_index >= 0 else "none",
            }
        return labels

    def annotations(self) -> dict[str, str]:
        """The raw owner fields, which labels may only hold hashed."""
        if not self.dag_id:
            return {}
        return {PREFIX + "dag-id": self.dag_id, PREFIX + "run-id": self.run_id,
                PREFIX + "task-id": self.task_id}


# Times on handles and in the reaper's memory: UTC, whole seconds, the same text everywhere.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_text(moment: datetime) -> str:
    return moment.strftime(TIME_FORMAT)


def parse_utc(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def parse_rfc3339(text: object) -> datetime | None:
    """A time another system wrote (the Kubernetes API, Airflow's REST API): RFC 3339 with
    seconds or microseconds, "Z" or an offset; a time without a zone is taken as UTC, so it
    compares with ours. None when there is no time or it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def expires_at(created: datetime, ttl_seconds: int) -> str:
    ts = created.astimezone(UTC).timestamp() + ttl_seconds
    return utc_text(datetime.fromtimestamp(ts, UTC))
