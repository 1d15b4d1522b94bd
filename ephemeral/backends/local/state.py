"""The per-cluster state folder of the local backend: ``$EPHEMERAL_HOME/clusters/<name>/``.

``state.json`` is written before any process starts and after each one does, so a crash at any
point leaves enough behind for ``list_owned`` and ``delete`` to find and kill what was started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from ephemeral.backends.base import ClusterHandle
from ephemeral.backends.local.procs import NodeProcess
from ephemeral.errors import BackendError
from ephemeral.specs.identity import INSTANCE_LABEL


class PlannedNode(BaseModel):
    """A node to start: what runs, where, and how the probe recognises it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    role: str  # head, worker, master, connect
    ip: str
    argv: list[str]
    env: dict[str, str] = {}
    wait_for: str | None = None
    """``host:port`` that must accept connections before this node starts."""


class ClusterState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    handle: ClusterHandle
    uid: str
    slot: int
    temp_root: str | None = Field(default=None,
                                  validation_alias=AliasChoices("temp_root", "ray_temp_root"))
    """The cluster's folder in the runtime folder: Ray's per-node ``--temp-dir`` and every
    node's ``TMPDIR`` (``ray_temp_root`` in states of earlier versions, Ray only)."""
    plan: list[PlannedNode]
    nodes: list[NodeProcess] = []
    deleting: bool = False


def state_file(cluster_dir: Path) -> Path:
    return cluster_dir / "state.json"


def load(cluster_dir: Path) -> ClusterState | None:
    try:
        return ClusterState.model_validate_json(state_file(cluster_dir).read_text())
    except FileNotFoundError:
        return None
    except (ValidationError, OSError, UnicodeDecodeError) as err:
        # Not ours to read (another OS user's folder, a state.json that is no file, bytes that
        # are no text): one broken cluster, said as such, never an error that stops the rest.
        raise BackendError(f"the state of cluster {cluster_dir.name} ({state_file(cluster_dir)}) "
                           f"is unreadable: {err}") from err


def raw_field(cluster_dir: Path, *names: str) -> str | None:
    """The first of ``names`` a state file that no longer parses as a ``ClusterState`` still
    holds as text (the cluster uid, its temp root)."""
    return _raw_text(cluster_dir, *((name,) for name in names))


def raw_instance(cluster_dir: Path) -> str | None:
    """The deployment instance a state file names, parsed or not (one a newer version wrote
    does not parse as a ``ClusterState`` here); None without one."""
    return _raw_text(cluster_dir, ("handle", "labels", INSTANCE_LABEL))


def _raw_text(cluster_dir: Path, *paths: tuple[str, ...]) -> str | None:
    """The first non-empty text found at one of ``paths`` (keys from the top) in the state
    file read as plain JSON; None without one, or without a readable file."""
    try:
        raw: object = json.loads(state_file(cluster_dir).read_text())
    except (OSError, ValueError):
        return None
    for path in paths:
        value = raw
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


def save(cluster_dir: Path, state: ClusterState) -> None:
    cluster_dir.mkdir(parents=True, exist_ok=True)
    tmp = cluster_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state.model_dump(mode="json"), indent=1))
    os.replace(tmp, state_file(cluster_dir))  # atomic: a reader never sees half a file
