"""Helpers shared by the workloads in jobs/. They run on the clusters, where ephemeral itself is
not installed, so they depend only on pyarrow (present with Ray Train and pyspark).

Every job ends by printing one line of JSON (artifact and metrics URIs plus a few scalars): the
submitter reads the last such line as the job's result. When the submitter names a file in
$EPHEMERAL_RESULT_FILE (spark-submit's driver, which runs beside it), the result goes there too,
and that file is what the submitter reads: the driver's output is merged with the JVM's log lines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

# --- argument types: a value the job would fail on later is refused while parsing ---------------
# argparse turns an ArgumentTypeError into its usage error (exit 2, "argument --steps: <why>"),
# which ephemeral.adhoc.check_arguments shows before a cluster exists.

def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
            if low <= value and (high is None or value <= high):
                return value
        except ValueError:
            pass
        span = f"of {low} or more" if high is None else f"from {low} to {high}"
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number {span}")
    return parse


def number(low: float, high: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` (``above``: more than it, as a timeout
    must be) to ``high``. ``float`` alone takes nan, which every comparison lets through."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            span = (f" from {low:g} to {high:g}" if high < math.inf else "" if low == -math.inf
                    else f" above {low:g}" if above else f" of {low:g} or more")
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number{span}")
        return value
    return parse


def text(what: str) -> Callable[[str], str]:
    """An argparse type: a text with more than whitespace in it (``what``: what it names). An
    empty URI would read the job's own folder, and fail there."""
    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"{value!r} is empty: give {what}")
        return value
    return parse


# numpy's and torch's generators take a seed of 0 or more; torch's up to 2**64 - 1 (the jobs add
# a worker's rank to it): a 32-bit seed is every seed anyone gives.
SEED = whole(0, 2**32 - 1)


def to_uri(path_or_uri: str) -> str:
    """A URI for a path or URI: plain paths become file:// URIs."""
    if urlparse(path_or_uri).scheme:
        return path_or_uri.rstrip("/")
    return "file://" + os.path.abspath(path_or_uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


# A scheme (``s3:``, ``file:``, ``c:``): the text names a place of its own, not one under the root.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def run_problem(run: str) -> str | None:
    """Why ``run`` (``--run``) is refused as a folder under the artifact root, or None.

    A run is a relative path under the root, as the DAGs pass it (``<instance>/<dag>/<run>``,
    ephemeral.jobs.artifacts.run_folder). An absolute path, a URI or a ``..`` component would
    leave the run's folder, or the root (``--run ../../etc/cron.d``): into another run's or
    another deployment's folder, e.g. planting a checkpoint another run resumes from.
    ``%2e%2e`` counts as ``..`` (pyarrow decodes a URI's path: ``file:///a/%2e%2e`` is
    ``/a/..``), and ``\\`` as ``/``."""
    if not run.strip():
        return "is empty"
    decoded = unquote(run)
    if any(not c.isprintable() for c in decoded):
        return "holds a control character"
    if _SCHEME.match(run) or _SCHEME.match(decoded) or "://" in decoded:
        return "is a URI (--artifact-root sets the root)"
    if decoded.startswith(("/", "\\", "~")):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", decoded):
        return "has a '..' component, which would leave the run's folder"
    if "?" in decoded or "#" in decoded:
        # s3://bucket/root/x?endpoint_override=host would send the writes to another host.
        return "holds '?' or '#', which the root's URI would read as options or a fragment"
    return None


def run_dir(root: str, run: str) -> str:
    """``<root>/<run>``, the run's folder: the one way a job turns ``--run`` into a place. A run
    ``run_problem`` refuses ends the job (``fail``: exit code 2, an error result) before it
    writes anything."""
    if (problem := run_problem(run)) is not None:
        fail(f"--run {run!r} {problem}: name the run's folder relative to the artifact root, "
             "e.g. my-team/my-model-1 (DAGs pass <instance>/<dag id>/<run id>)")
    return join(root, run)


def default_root() -> str:
    return to_uri(os.environ.get("EPHEMERAL_ARTIFACT_ROOT")
                  or os.path.join(os.environ.get("EPHEMERAL_HOME", os.path.expanduser("~/.ephemeral")),
                                  "artifacts"))


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a file://, s3:// or gs:// URI."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(uri)


def write_bytes(uri: str, data: bytes) -> None:
    filesys, path = filesystem(uri)
    filesys.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesys.open_output_stream(path) as out:
        out.write(data)


def read_bytes(uri: str) -> bytes:
    filesys, path = filesystem(uri)
    with filesys.open_input_stream(path) as src:
        return bytes(src.read())


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def exists(uri: str) -> bool:
    from pyarrow import fs

    filesys, path = filesystem(uri)
    return bool(filesys.get_file_info(path).type != fs.FileType.NotFound)


def emit_result(result: dict[str, Any]) -> None:
    """The job's result: what travels to XCom. Keep it small: URIs and scalars only."""
    line = json.dumps(result, sort_keys=True)
    target = os.environ.get("EPHEMERAL_RESULT_FILE")
    if target:  # written whole, then renamed: the submitter never reads half a result
        with open(f"{target}.tmp", "w") as fh:
            fh.write(line)
        os.replace(f"{target}.tmp", target)
    sys.stderr.flush()
    sys.stdout.flush()
    # One write with its newline: print() writes the text and the newline apart when Python
    # runs unbuffered (as under spark-submit), and another writer's line can fall in between.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 2) -> None:
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    print(json.dumps({"error": message}), flush=True)
    sys.exit(code)
