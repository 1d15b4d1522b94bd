"""The mock's object store: resource versions, uids, label and field selectors, the
foreground-deletion bookkeeping of the real API server, and the change history watches are
served from. Thread-safe: the HTTP server, the operator thread and the test all use it."""

from __future__ import annotations

import copy
import itertools
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FOREGROUND = "foregroundDeletion"


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = {r.plural: r for r in (
    Resource("ray.io", "v1", "rayclusters", "RayCluster"),
    Resource("sparkoperator.k8s.io", "v1alpha1", "sparkconnects", "SparkConnect"),
    Resource("apps", "v1", "deployments", "Deployment"),
    Resource("apps", "v1", "statefulsets", "StatefulSet"),
    Resource("apps", "v1", "replicasets", "ReplicaSet"),
    Resource("", "v1", "services", "Service"),
    Resource("", "v1", "configmaps", "ConfigMap"),
    Resource("", "v1", "pods", "Pod"),
    Resource("", "v1", "events", "Event"),
    Resource("", "v1", "secrets", "Secret"),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
)}
BY_KIND = {r.kind: r for r in RESOURCES.values()}


@dataclass(frozen=True)
class Change:
    """One write, as a watch sees it: ``old`` is None for ADDED, ``new`` is the object as
    written (for DELETED: its last state, with the deletion's resourceVersion)."""

    rv: int
    type: str
    plural: str
    namespace: str
    old: dict[str, Any] | None
    new: dict[str, Any]


Listener = Callable[[Change], None]
HISTORY = 10_000  # changes kept for watches that resume from a resourceVersion, as etcd does


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._rv = itertools.count(1000)
        self._history: list[Change] = []
        self._compacted = 0  # a watch from an older resourceVersion gets 410 Gone
        self._listeners: list[Listener] = []

    # -- writes --------------------------------------------------------------------------------

    def put(self, plural: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object as the server does: uid, resourceVersion, timestamps."""
        res = RESOURCES[plural]
        with self.lock:
            obj = copy.deepcopy(obj)
            obj.setdefault("apiVersion", res.api_version)
            obj.setdefault("kind", res.kind)
            meta = obj.setdefault("metadata", {})
            meta["namespace"] = namespace
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            meta["generation"] = 1
            meta["resourceVersion"] = str(next(self._rv))
            self._objects[(plural, namespace, meta["name"])] = obj
            self._record("ADDED", plural, namespace, None, obj)
            return copy.deepcopy(obj)

    def update(self, plural: str, namespace: str, name: str, change: Any) -> dict[str, Any] | None:
        """Apply ``change(obj)`` in place and bump the resourceVersion."""
        with self.lock:
            obj = self._objects.get((plural, namespace, name))
            if obj is None:
                return None
            old = copy.deepcopy(obj)
            change(obj)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self._record("MODIFIED", plural, namespace, old, obj)
            return copy.deepcopy(obj)

    def remove(self, plural: str, namespace: str, name: str) -> None:
        with self.lock:
            obj = self._objects.pop((plural, namespace, name), None)
            if obj is not None:
                # The real server gives the DELETED event a resourceVersion of its own.
                obj["metadata"]["resourceVersion"] = str(next(self._rv))
                self._record("DELETED", plural, namespace, obj, obj)

    def mark_deleted(self, plural: str, namespace: str, name: str, *, foreground: bool) -> None:
        """deletionTimestamp, plus the foregroundDeletion finalizer for Foreground; an object
        without finalizers then goes at once (the collector handles the rest)."""
        def mark(obj: dict[str, Any]) -> None:
            meta = obj["metadata"]
            meta.setdefault("deletionTimestamp", now())
            if foreground and FOREGROUND not in meta.setdefault("finalizers", []):
                meta["finalizers"].append(FOREGROUND)

        with self.lock:
            self.update(plural, namespace, name, mark)
            obj = self._objects.get((plural, namespace, name))
            if obj is not None and not obj["metadata"].get("finalizers") and plural != "pods":
                self.remove(plural, namespace, name)

    # -- history, for watches ------------------------------------------------------------------

    def _record(self, type_: str, plural: str, namespace: str, old: dict[str, Any] | None,
                new: dict[str, Any]) -> None:
        change = Change(int(new["metadata"]["resourceVersion"]), type_, plural, namespace,
                        copy.deepcopy(old), copy.deepcopy(new))
        self._history.append(change)
        if len(self._history) > HISTORY:
            self._compacted = self._history.pop(0).rv
        for listener in list(self._listeners):
            listener(change)

    def subscribe(self, listener: Listener, since: int | None) -> list[Change] | None:
        """Call ``listener`` with every later change, and return the changes after ``since``
        (none when None), atomically: nothing is missed or seen twice between the two. None
        when ``since`` is older than the history kept (410 Gone)."""
        with self.lock:
            if since is not None and since < self._compacted:
                return None
            self._listeners.append(listener)
            return [c for c in self._history if since is not None and c.rv > since]

    def unsubscribe(self, listener: Listener) -> None:
        with self.lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def compact(self) -> int:
        """Forget the history (as etcd compaction does); returns the oldest version a watch
        may still resume from."""
        with self.lock:
            self._history.clear()
            self._compacted = int(self.resource_version())
            return self._compacted

    # -- reads ---------------------------------------------------------------------------------

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self._objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, plural: str, namespace: str | None = None, *, labels: str = "",
             fields: str = "") -> list[dict[str, Any]]:
        label_match = parse_label_selector(labels)
        field_match = parse_field_selector(fields)
        with self.lock:
            return [copy.deepcopy(o) for (p, ns, _), o in sorted(self._objects.items())
                    if p == plural and (namespace is None or ns == namespace)
                    and label_match(o["metadata"].get("labels") or {}) and field_match(o)]

    def all(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(p, copy.deepcopy(o)) for (p, _, _), o in sorted(self._objects.items())]

    def resource_version(self) -> str:
        with self.lock:
            return str(next(self._rv))


_REQ = re.compile(r"^\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|"
                  r"\s+(in|notin)\s*\(([^)]*)\))?\s*$")


class SelectorError(ValueError):
    pass


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def parse_label_selector(selector: str) -> Any:
    """A predicate for a label selector: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
    ``k notin (a)``, ``k`` (exists), ``!k`` (does not exist). Raises on bad syntax."""
    checks = []
    for part in _split(selector or ""):
        m = _REQ.match(part)
        if not m:
            raise SelectorError(f"unable to parse requirement: {part!r}")
        neg, key, op, value, setop, values = m.groups()
        if neg and (op or setop):
            raise SelectorError(f"invalid requirement: {part!r}")
        if setop:
            options = {v.strip() for v in values.split(",") if v.strip()}
            if setop == "in":
                checks.append(lambda ls, k=key, o=options: ls.get(k) in o)
            else:
                checks.append(lambda ls, k=key, o=options: ls.get(k) not in o)
        elif op in ("=", "=="):
            checks.append(lambda ls, k=key, v=value: ls.get(k) == v)
        elif op == "!=":
            checks.append(lambda ls, k=key, v=value: ls.get(k) != v)
        elif neg:
            checks.append(lambda ls, k=key: k not in ls)
        else:
            checks.append(lambda ls, k=key: k in ls)
    return lambda labels: all(c(labels) for c in checks)


def parse_field_selector(selector: str) -> Any:
    """``a.b=v`` / ``a.b!=v`` on dotted paths (what the real server allows for events)."""
    checks = []
    for part in _split(selector or ""):
        m = re.match(r"^\s*([A-Za-z0-9.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        path, op, value = m.groups()
        checks.append((path.split("."), op == "!=", value))

    def match(obj: dict[str, Any]) -> bool:
        for path, negate, value in checks:
            cur: Any = obj
            for step in path:
                cur = cur.get(step) if isinstance(cur, dict) else None
            if (str(cur) == value if cur is not None else value == "") == negate:
                return False
        return True

    return match
