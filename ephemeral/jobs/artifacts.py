"""The artifact store: URIs under the artifact root, read and written through pyarrow's
filesystems (``file://``, ``s3://``, ``gs://``), never hand-written clients. Credentials come
from the environment those filesystems read (instance roles, workload identity), never XCom."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from typing import Any

from ephemeral.settings import get_settings

# What one copy holds in memory at a time, per file (pyarrow's default is 1 MiB).
COPY_CHUNK_BYTES = 4 * 1024 * 1024


def root() -> str:
    return get_settings().artifact_root


ROOT_SETTING = "EPHEMERAL_ARTIFACT_ROOT"


def job_root() -> str:
    """The artifact root as jobs and clusters get it, refused (``SettingError``) when its URI
    carries credentials: they would be in every job's environment and every artifact URI a
    job returns (XCom, logs, the run report). Setups check it before they create anything."""
    from ephemeral.backends.http import url_setting_problem
    from ephemeral.errors import SettingError

    uri = root()
    if problem := url_setting_problem(ROOT_SETTING, uri, "give the store's credentials as "
                                      "its filesystem reads them (AWS_* variables, an instance "
                                      "role, workload identity), never in the URI"):
        raise SettingError(ROOT_SETTING, [("artifact_root", problem)])
    return uri


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts if p]])


def run_uri(run: str, *parts: str) -> str:
    return join(root(), run, *parts)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# The longest slug: one path segment with room for a suffix (``<slug>.json``) on any store
# (a file name is at most 255 bytes; a run id may have 250 characters, a DAG id too).
SLUG_MAX = 100
SHORT_DIGEST, LONG_DIGEST = 8, 32  # hex digits: 32 and 128 bits
_DIGEST_TAIL = re.compile(rf"-(?:[0-9a-f]{{{SHORT_DIGEST}}}|[0-9a-f]{{{LONG_DIGEST}}})$")
# Airflow's own run ids (``<run type>__<ISO time>[_<random>]``: scheduled__, manual__,
# backfill__, asset_triggered__, ...) and ephemeral's creation times (``2026-01-02T03:04:05Z``).
# The only characters the slug changes in them (``:`` and ``+``) sit where the form puts them,
# so two different ids of this form never have the same sanitised text: a short digest cannot
# be brute-forced into another run's folder, and these slugs stay what they always were.
_TIME_FORM = re.compile(r"(?:[a-z]+(?:_[a-z]+)*__)?\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"
                        r"(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})?(?:_[A-Za-z0-9]+)?")


def run_slug(run_id: str) -> str:
    """A run id as one path segment of at most ``SLUG_MAX`` characters, never empty
    (``manual__2026-01-01T00:00:00+00:00`` has ``:`` and ``+``).

    Where the id had to change, a digest of it follows: ``retrain:v2`` and ``retrain+v2`` (both
    valid run ids) must not share a folder, nor ``..`` name the folder above; so does an id
    that already ends like a digest, which could otherwise name another run's folder, an empty
    one, and one too long (cut to fit). The digest is 32 hex digits (128 bits: no crafted run id
    finds another's), but 8 for ids of Airflow's own form (``_TIME_FORM``), whose sanitised
    text alone already tells them apart: their slugs, which existing reports and run folders
    carry, stay as they were. A short-digest slug never equals a long-digest one (their ``-``
    stands elsewhere) nor an unchanged id (which never ends like a digest)."""
    slug = _UNSAFE.sub("_", run_id).strip("_")
    if slug == run_id and 0 < len(slug) <= SLUG_MAX and slug not in (".", "..") \
            and not _DIGEST_TAIL.search(slug):
        return slug
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()
    if _TIME_FORM.fullmatch(run_id) and len(slug) + 1 + SHORT_DIGEST <= SLUG_MAX:
        return f"{slug}-{digest[:SHORT_DIGEST]}"
    return f"{slug[:SLUG_MAX - 1 - LONG_DIGEST] or 'run'}-{digest[:LONG_DIGEST]}"


def deployment_uri(*parts: str, instance: str | None = None) -> str:
    """Under this deployment instance's folder of the artifact root: what its DAG runs write
    (reports, alerts, drift reports, jobs' run folders). Airflows that share a root have the
    same scheduled run ids, so without it one would overwrite, or resume from, another's."""
    return run_uri(instance or get_settings().instance, *parts)


def run_folder(dag_id: str, run_id: str) -> str:
    """A DAG run's folder, relative to the root as jobs take it (``--run``): the instance's,
    then the DAG's, then the run's. The run id, not ``run_after``: two runs can start within
    one second (and a run triggered without a logical date has no ``ts_nodash``), while a
    retry of the run must find its own checkpoints again."""
    return "/".join([get_settings().instance, run_slug(dag_id), run_slug(run_id)])


def _fs(uri: str) -> tuple[Any, str]:
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    return filesystem, str(path)


def exists(uri: str) -> bool:
    from pyarrow import fs

    filesystem, path = _fs(uri)
    return bool(filesystem.get_file_info(path).type != fs.FileType.NotFound)


def read_bytes(uri: str) -> bytes:
    filesystem, path = _fs(uri)
    with filesystem.open_input_stream(path) as src:
        return bytes(src.read())


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` whole: a reader, or a second writer of the same file (two teardowns
    writing a run's report.json), never sees or leaves a half-written file. Object stores
    replace an object at once; a local file is written beside it and renamed over it
    (``os.replace``, atomic in one folder), where writing in place truncated it first."""
    from pyarrow import fs

    filesystem, path = _fs(uri)
    folder = path.rsplit("/", 1)[0]
    filesystem.create_dir(folder, recursive=True)
    if not isinstance(filesystem, fs.LocalFileSystem):
        with filesystem.open_output_stream(path) as out:
            out.write(data)
        return
    # Hidden and not *.json: listings of a folder's records never see it.
    temp = f"{folder}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask's mode, as before
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, value: Any) -> None:
    write_bytes(uri, json.dumps(value, indent=2, sort_keys=True).encode())


def copy(src: str, dst: str) -> None:
    """Copy a file or a directory tree between any two supported filesystems, streamed in
    chunks by pyarrow (``fs.copy_files``): a model of many GiB never sits in memory whole."""
    from pyarrow import fs

    src_fs, src_path = _fs(src)
    dst_fs, dst_path = _fs(dst)
    info = src_fs.get_file_info(src_path)
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError(f"artifact copy: nothing at {src}")
    if info.type == fs.FileType.Directory:
        dst_fs.create_dir(dst_path, recursive=True)
    elif "/" in dst_path.rstrip("/"):
        dst_fs.create_dir(dst_path.rstrip("/").rsplit("/", 1)[0], recursive=True)
    fs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs,
                  chunk_size=COPY_CHUNK_BYTES)
