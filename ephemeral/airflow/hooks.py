"""The ``ephemeral`` connection type: which backend tasks use (local or kubernetes), the
namespace, the deployment instance their clusters belong to and the ``kubernetes`` connection
that reaches the API server; and ``test_connection``, which says whether the backend is
reachable and this identity may do what the backend does.

Airflow 3.2+ reads the connection form from the provider info (``CONNECTION_TYPE``, declared
in ``ephemeral.airflow.backends`` beside the fields it describes: its ``conn-fields`` and
``ui-field-behaviour``), without importing this module, which imports Airflow; the hook's
``get_ui_field_behaviour`` answers the same for callers that ask the class.
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from ephemeral.airflow.backends import (
    CONN_TYPE,
    HIDDEN_FIELDS,
    EphemeralConnection,
    Target,
    resolve,
)

if TYPE_CHECKING:
    from ephemeral.backends.kubernetes import KubernetesBackend


@dataclass(frozen=True)
class Rule:
    """What the backend does to one resource: the verbs it needs, and when it needs them."""

    group: str
    resource: str
    verbs: tuple[str, ...]
    needed_when: str = ""
    """Empty: always. Else the setting without which this rule is not needed (test_connection
    reports a denial then, but does not fail)."""

    @property
    def qualified(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


CRUD = ("create", "get", "list", "watch", "delete")
RULES = (
    Rule("ray.io", "rayclusters", CRUD),
    Rule("sparkoperator.k8s.io", "sparkconnects", CRUD, needed_when="spark_mode operator"),
    Rule("", "pods", ("get", "list", "watch")),
    Rule("", "services", CRUD),
    Rule("apps", "deployments", CRUD),
    Rule("", "events", ("get", "list")),
    Rule("networking.k8s.io", "networkpolicies", CRUD),
    Rule("", "secrets", ("get",)),
    Rule("", "services/proxy", ("get", "create"), needed_when="endpoint mode proxy"),
)
"""The Role the project ships (compose/k8s/rbac.yaml, which explains each rule), as the
checks ask for it; a test keeps the two equal."""


class EphemeralHook(BaseHook):
    """Reads an ``ephemeral`` connection; ``target()`` is the backend and instance its tasks
    use (the same resolution as the operators' ``conn_id``)."""

    conn_name_attr = "ephemeral_conn_id"
    default_conn_name = "ephemeral_default"
    conn_type = CONN_TYPE
    hook_name = "Ephemeral clusters"

    def __init__(self, ephemeral_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ephemeral_conn_id = ephemeral_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {"hidden_fields": list(HIDDEN_FIELDS), "relabeling": {}}

    def get_conn(self) -> EphemeralConnection:
        conn = self.get_connection(self.ephemeral_conn_id)
        return EphemeralConnection.from_extra(self.ephemeral_conn_id, conn.extra_dejson)

    def target(self) -> Target:
        return resolve(conn_id=self.ephemeral_conn_id)

    def test_connection(self) -> tuple[bool, str]:
        """(ok, message): whether the backend is reachable and may create, watch and delete
        what it needs; every refused (resource, verb) is named."""
        try:
            target = self.target()
        except Exception as err:  # noqa: BLE001 - the form shows whatever went wrong
            return False, f"{type(err).__name__}: {err}"
        from ephemeral.backends.kubernetes import KubernetesBackend

        if isinstance(target.backend, KubernetesBackend):
            return check_kubernetes(target.backend, target.instance)
        if target.backend.name == "local":
            return check_local(target.instance)
        return True, f"backend {target.backend.name}: nothing to check"


def check_local(instance: str) -> tuple[bool, str]:
    """EPHEMERAL_HOME writable (clusters keep their state there) and the engines importable."""
    from ephemeral.settings import get_settings

    home = get_settings().home
    problems = []
    if (why := _unwritable(home)) is not None:
        problems.append(f"EPHEMERAL_HOME {home} is not writable: {why}")
    missing = [name for name in ("ray", "pyspark") if importlib.util.find_spec(name) is None]
    if missing:
        problems.append(f"{' and '.join(missing)} not importable: pip install "
                        "'airflow-provider-ephemeral[local]'")
    if problems:
        return False, "; ".join(problems)
    return True, f"local backend: {home} writable, ray and pyspark importable; instance " \
                 f"{instance}"


def _unwritable(home: Path) -> str | None:
    existing = home
    while not existing.exists():  # it is made at first use: its nearest parent must allow it
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:  # a real write: permissions, read-only mounts and full disks alike
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"cannot create files in {existing}: {err.strerror or err}"
    return None


def check_kubernetes(backend: KubernetesBackend, instance: str) -> tuple[bool, str]:
    """One SelfSubjectAccessReview per (resource, verb) of ``RULES`` in the backend's
    namespace. The first review also proves the API server reachable and the credentials
    accepted."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from ephemeral.errors import EphemeralError

    config = backend.config
    namespace = config.namespace
    conditions = {"spark_mode operator": config.spark_mode == "operator",
                  "endpoint mode proxy": config.resolved_endpoint_mode() == "proxy"}
    try:
        api = k8s.AuthorizationV1Api(backend.client.api)
        server = backend.client.server
    except EphemeralError as err:
        return False, str(err)
    denied: list[str] = []
    optional: list[str] = []
    for rule in RULES:
        for verb in rule.verbs:
            attrs = k8s.V1ResourceAttributes(
                namespace=namespace, verb=verb, group=rule.group,
                resource=rule.resource.split("/")[0],
                subresource=rule.resource.partition("/")[2] or None)
            body = k8s.V1SelfSubjectAccessReview(
                api_version="authorization.k8s.io/v1", kind="SelfSubjectAccessReview",
                spec=k8s.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
            try:
                review = api.create_self_subject_access_review(
                    body, _request_timeout=config.request_timeout)
            except ApiException as err:
                return False, (f"API server {server} refused the access review "
                               f"({err.status} {err.reason})")
            except Exception as err:  # noqa: BLE001 - unreachable: any transport error
                return False, f"API server {server} unreachable: {type(err).__name__}: {err}"
            if review.status is not None and review.status.allowed:
                continue
            reason = (review.status.reason if review.status is not None else "") or ""
            what = f"{verb} {rule.qualified}" + (f" ({reason})" if reason else "")
            if not rule.needed_when or conditions[rule.needed_when]:
                denied.append(what)
            else:
                optional.append(what)
    where = f"namespace {namespace} on {server}, instance {instance}"
    if denied:
        return False, (f"{where}: denied {', '.join(denied)}; apply compose/k8s/rbac.yaml "
                       "(docs/kubernetes.md) to this identity")
    note = (f"; denied but not needed with these settings: {', '.join(optional)}"
            if optional else "")
    return True, f"{where}: every verb the backend needs is allowed{note}"
