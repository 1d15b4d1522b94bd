"""Per-cluster credentials of the local backend, each in its own file of the cluster's state
folder, readable by this user only (0600) and never copied into ``state.json``, the handle,
XCom, an argv or a log. Deleting the cluster removes the folder and with it the credentials.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

RAY_TOKEN = "ray-token"
"""Ray's ``RAY_AUTH_TOKEN_PATH``: every node and every client of the cluster authenticates."""
SPARK_SECRET = "spark-secret"
"""The ``spark.authenticate`` secret of master, workers, executors and drivers."""
CONNECT_TOKEN = "connect-token"
"""The Spark Connect server's pre-shared bearer token."""
SPARK_PROPERTIES = "spark-auth.properties"
"""``spark.authenticate`` settings of master and workers, for ``--properties-file``."""


def path(cluster_dir: Path, name: str) -> Path:
    return cluster_dir / name


def write_private(file: Path, text: str) -> None:
    """Create ``file`` with mode 0600 from the start (never briefly readable by others)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    file.unlink(missing_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def create(cluster_dir: Path, name: str) -> str:
    """A new random credential (256 bits, hex) stored as ``name``; returns it."""
    value = secrets.token_hex(32)
    write_private(path(cluster_dir, name), value)
    return value


def read(cluster_dir: Path, name: str) -> str | None:
    """The stored credential, or None when the cluster (or this credential) does not exist."""
    try:
        return path(cluster_dir, name).read_text().strip() or None
    except FileNotFoundError:
        return None


def spark_properties(secret: str) -> str:
    """What a Spark process needs to authenticate to the cluster (``spark.authenticate``)."""
    return f"spark.authenticate=true\nspark.authenticate.secret={secret}\n"


def create_ray(cluster_dir: Path) -> Path:
    """The cluster's Ray token; returns its file (for ``RAY_AUTH_TOKEN_PATH``)."""
    create(cluster_dir, RAY_TOKEN)
    return path(cluster_dir, RAY_TOKEN)


def create_spark(cluster_dir: Path) -> tuple[Path, Path]:
    """The cluster's Spark secret and Connect token; returns the properties files of the
    daemons (master, workers) and of the Connect server."""
    secret = create(cluster_dir, SPARK_SECRET)
    token = create(cluster_dir, CONNECT_TOKEN)
    common = spark_properties(secret) + (
        # The master's and workers' web UIs answer anyone who reaches their port: read-only.
        "spark.ui.killEnabled=false\n"
        "spark.master.ui.decommission.allow.mode=DENY\n"
        # The REST submission server (on by default since Spark 4.1, port 6066) ignores
        # spark.authenticate: it would run any driver for anyone. Nothing here uses it.
        "spark.master.rest.enabled=false\n")
    daemons, connect = path(cluster_dir, SPARK_PROPERTIES), path(cluster_dir, "connect.properties")
    write_private(daemons, common)
    write_private(connect, common + f"spark.connect.authenticate.token={token}\n")
    return daemons, connect
