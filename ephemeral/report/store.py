"""Where a run's report lives in the artifact store, and how several teardowns assemble it.

Layout under the artifact root::

    <instance>/reports/<dag_id>/<run>/clusters/<cluster>-<created>.json   one part per cluster
                                                                life, by what deleted it
    <instance>/reports/<dag_id>/<run>/released/<cluster>.json   a cluster its last job's task deleted
    <instance>/reports/<dag_id>/<run>/ready/<cluster>-<created>.json   when its setup saw it ready
    <instance>/reports/<dag_id>/<run>/report.json               the merged report
    <instance>/reports/<dag_id>/<run>/report.html               the same as a page with a timeline

``<instance>`` is the deployment instance's (``artifacts.deployment_uri``): two Airflows sharing
a root have the same scheduled run ids. Reports written before that layout
(``reports/<dag_id>/<run>/``) are still read (``load_legacy_report``), never written.

A run may have several teardowns, each of which sees only its own cluster and may finish at the
same moment as another. Each writes its own part first (no two write the same file), then
rebuilds the merged report from every part there, writes it, and reads the parts once more:
when one appeared, changed (by its digest) or could not be read (being written) meanwhile, it
rebuilds again, and warns if they still change after its rounds. The last teardown to finish
therefore writes a report with all parts, with no lock and no read-modify-write of a shared
file, on any store with read-after-write listing (local files, S3, GCS). Every file is
replaced whole (``artifacts.write_bytes``: a local one is renamed over the old), so two
writers never interleave their bytes. Readers (``ephemeral report``) rebuild
from the parts too, so a report.json that lost a race is never what they show.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ephemeral.jobs import artifacts
from ephemeral.jobs.artifacts import run_slug
from ephemeral.report.costs import Prices
from ephemeral.report.html import render_html
from ephemeral.report.model import ClusterFacts, Ready, Release, build_report, merge_life
from ephemeral.settings import setting

log = logging.getLogger(__name__)
_Record = TypeVar("_Record", bound=BaseModel)

URL_VAR = "EPHEMERAL_ARTIFACT_URL"
REPORTS = "reports"


def report_dir(dag_id: str, run_id: str, instance: str | None = None) -> str:
    return artifacts.deployment_uri(REPORTS, run_slug(dag_id), run_slug(run_id),
                                    instance=instance)


def report_uri(dag_id: str, run_id: str, name: str = "report.html",
               instance: str | None = None) -> str:
    return artifacts.join(report_dir(dag_id, run_id, instance), name)


def instances_with(dag_id: str, run_id: str) -> list[str]:
    """The deployment instances under the root that recorded a report of this run: what
    ``ephemeral report`` names when the caller's own instance has none (a shell whose
    environment derives another instance than the Airflow's)."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(artifacts.root())
    found = []
    for entry in filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True)):
        if entry.type == fs.FileType.Directory and _list_parts(dag_id, run_id, entry.base_name):
            found.append(entry.base_name)
    return sorted(found)


class ArtifactUrlError(ValueError):
    """``$EPHEMERAL_ARTIFACT_URL`` is no http(s) address: names it and the fix."""


def artifact_url() -> str:
    """``$EPHEMERAL_ARTIFACT_URL`` without its trailing ``/``, "" when unset. Refused (a
    ``ValueError`` naming it) unless it is an http(s) address: it becomes the teardowns' "Run
    report" link and the notifications' link, where ``javascript:`` would run in the UI. Those
    and the setup go on without the link, saying why (``report_link``)."""
    from ephemeral.backends.http import http_address, url_setting_problem
    from ephemeral.specs.models import masked_secrets

    base = (setting("artifact_url") or "").strip().rstrip("/")
    if base and not http_address(base):
        raise ArtifactUrlError(f"{URL_VAR}={masked_secrets(base)[:80]!r}: expected an http(s) "
                               "address that serves the artifact root, such as "
                               "https://artifacts.example.com/ephemeral; unset it to link the "
                               "artifact URI itself")
    # The link goes into notifications, task logs and the UI: never credentials.
    if base and (problem := url_setting_problem(URL_VAR, base, "serve the reports behind your "
                                                "own sign-in instead")):
        raise ArtifactUrlError(problem)
    return base


def report_url(dag_id: str, run_id: str) -> str:
    """The address of the run's HTML report for people: ``$EPHEMERAL_ARTIFACT_URL`` (an http(s)
    address that serves the artifact root, e.g. a bucket's website or a proxy) in place of the
    root when set, else the artifact URI itself, its credentials masked (an artifact root
    with a key in it is refused where clusters are made, not where a notification or the
    reaper shows a link). Raises naming the setting when it is no http(s) address
    (``artifact_url``)."""
    from ephemeral.specs.models import masked_secrets

    uri = report_uri(dag_id, run_id)
    base = artifact_url()
    root = artifacts.root().rstrip("/")
    return masked_secrets(base + uri[len(root):] if base and uri.startswith(root) else uri)


def report_link(dag_id: str, run_id: str) -> str | None:
    """``report_url`` for a teardown's link, a notification or an alert: None, logged naming
    the setting, when the setting is refused; what carries the link goes on without it."""
    try:
        return report_url(dag_id, run_id)
    except ArtifactUrlError as err:
        log.error("no run report link: %s", err)
        return None


def _life(name: str, created_at: str) -> str:
    # One file per cluster life: a failed setup's cluster and its retry's share the name.
    return f"{name}-{run_slug(created_at)}" if created_at else name


def _part_uri(part: ClusterFacts) -> str:
    return artifacts.join(report_dir(part.dag_id, part.run_id), "clusters",
                          f"{_life(part.name, part.created_at)}.json")


def _ready_uri(dag_id: str, run_id: str, name: str, created_at: str) -> str:
    return artifacts.join(report_dir(dag_id, run_id), "ready", f"{_life(name, created_at)}.json")


def write_ready(dag_id: str, run_id: str, ready: Ready) -> None:
    artifacts.write_json(_ready_uri(dag_id, run_id, ready.name, ready.created_at),
                         ready.model_dump(mode="json"))


def read_ready_record(dag_id: str, run_id: str, name: str, created_at: str) -> Ready | None:
    """The setup's record of this cluster life's readiness (or of its wait for it)."""
    ready = _record(_ready_uri(dag_id, run_id, name, created_at), Ready, "readiness")
    return ready if ready is not None and (ready.name, ready.created_at) == (name, created_at) \
        else None


def read_ready(dag_id: str, run_id: str, name: str, created_at: str) -> float | None:
    """When the setup saw this cluster life ready, None when it did not (or never was)."""
    ready = read_ready_record(dag_id, run_id, name, created_at)
    return ready.ready if ready is not None else None


def _release_uri(dag_id: str, run_id: str, name: str) -> str:
    return artifacts.join(report_dir(dag_id, run_id), "released", f"{name}.json")


def write_release(dag_id: str, run_id: str, release: Release) -> None:
    artifacts.write_json(_release_uri(dag_id, run_id, release.name),
                         release.model_dump(mode="json"))


def read_release(dag_id: str, run_id: str, name: str) -> Release | None:
    """The release of cluster ``name`` in this run, None when no job task deleted it."""
    return _record(_release_uri(dag_id, run_id, name), Release, "release")


def _record(uri: str, model: type[_Record], what: str) -> _Record | None:
    """The record at ``uri``; None when there is none, or it is unreadable (logged: the
    reader's own view serves then)."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(path).type != fs.FileType.File:
        return None
    try:
        return model.model_validate(artifacts.read_json(uri))
    except (ValidationError, ValueError, OSError) as err:
        log.warning("ignoring unreadable %s record %s: %s", what, uri, err)
        return None


def _list_parts(dag_id: str, run_id: str, instance: str | None = None) -> list[str]:
    return _parts_in(report_dir(dag_id, run_id, instance))


def _parts_in(report_folder: str) -> list[str]:
    from pyarrow import fs

    folder = artifacts.join(report_folder, "clusters")
    filesystem, path = fs.FileSystem.from_uri(folder)
    infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return sorted(artifacts.join(folder, i.base_name) for i in infos
                  if i.type == fs.FileType.File and i.base_name.endswith(".json"))


def read_parts(dag_id: str, run_id: str, instance: str | None = None) -> list[ClusterFacts]:
    return _read(_list_parts(dag_id, run_id, instance))


def _read(uris: list[str]) -> list[ClusterFacts]:
    return _read_digested(uris)[0]


def _read_digested(uris: list[str]) -> tuple[list[ClusterFacts], dict[str, str | None]]:
    """The parts at ``uris``, and each one's digest of what was read: None for one that could
    not be read (another teardown may be writing it)."""
    parts: list[ClusterFacts] = []
    digests: dict[str, str | None] = {}
    for uri in uris:
        digests[uri] = None
        try:
            data = artifacts.read_bytes(uri)
            parts.append(ClusterFacts.model_validate(json.loads(data)))
            digests[uri] = hashlib.sha256(data).hexdigest()
        except (ValidationError, ValueError, OSError) as err:  # one bad part must not hide all
            log.warning("ignoring unreadable report part %s: %s", uri, err)
    return parts, digests


def load_report(dag_id: str, run_id: str, instance: str | None = None, *,
                prices: Prices | None = None) -> dict[str, Any] | None:
    """The run's report (this deployment instance's run unless ``instance`` says another)
    rebuilt from its parts, those recorded without a price priced by ``prices``; None when no
    teardown recorded anything."""
    parts = read_parts(dag_id, run_id, instance)
    return build_report(dag_id, run_id, parts, prices=prices) if parts else None


# The layout before deployment instances (commit 7d8db52): ``<root>/reports/<dag>/<run>/``,
# each id made a path segment by the slug of then, which had no digest.
_LEGACY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def legacy_slug(run_id: str) -> str:
    """An id as the pre-instance layout made it a path segment."""
    return _LEGACY_UNSAFE.sub("_", run_id).strip("_") or "run"


def legacy_report_dir(dag_id: str, run_id: str) -> str:
    """Where a report written before the instance layout lives."""
    return artifacts.run_uri(REPORTS, legacy_slug(dag_id), legacy_slug(run_id))


def load_legacy_report(dag_id: str, run_id: str, *,
                       prices: Prices | None = None) -> dict[str, Any] | None:
    """The run's report as written before the instance layout (no ``<instance>/`` segment),
    for ``ephemeral report`` after an upgrade; None when there is none. That slug gave
    ``retrain:v2`` and ``retrain+v2`` one folder: only this run's parts count."""
    if {legacy_slug(dag_id), legacy_slug(run_id)} & {".", ".."}:
        return None  # that slug let these name a folder above: never read there
    parts = [p for p in _read(_parts_in(legacy_report_dir(dag_id, run_id)))
             if p.dag_id == dag_id and p.run_id == run_id]
    return build_report(dag_id, run_id, parts, prices=prices) if parts else None


def write_report(report: dict[str, Any]) -> str:
    """Write report.json and report.html; return the HTML's URI."""
    folder = report_dir(report["dag_id"], report["run_id"])
    # allow_nan=False: NaN or Infinity is no JSON; the facts are finite, so this never fires
    # unless the arithmetic overflowed, and then the teardown logs it instead of a bad file.
    artifacts.write_bytes(artifacts.join(folder, "report.json"),
                          json.dumps(report, indent=2, sort_keys=True, allow_nan=False).encode())
    html = artifacts.join(folder, "report.html")
    artifacts.write_bytes(html, render_html(report).encode())
    return html


def record(parts: list[ClusterFacts], *, rounds: int = 5) -> dict[str, Any]:
    """Store this teardown's parts and (re)write the run's merged report with every part
    (see the module's note on concurrent teardowns). Returns the report written."""
    if not parts:
        raise ValueError("record() needs at least one cluster's facts")
    dag_id, run_id = parts[0].dag_id, parts[0].run_id
    for part in parts:
        # A later writer of the same life (the reaper or run-end after a failed teardown, a
        # teardown's retry) adds to what the first saw, never erases it.
        earlier = _record(_part_uri(part), ClusterFacts, "report part")
        if earlier is not None and (earlier.name, earlier.created_at) == (part.name,
                                                                          part.created_at):
            part = merge_life(earlier, part)
        artifacts.write_json(_part_uri(part), part.model_dump(mode="json"))
    # Rebuilt until the parts read are the ones the report written was built from, by their
    # contents: another teardown may have written or merged into a part meanwhile (same name,
    # new contents), and a part it was writing (unreadable) counts as changed.
    built: dict[str, str | None] | None = None
    report: dict[str, Any] = {}
    for attempt in range(rounds + 1):
        parts_read, digests = _read_digested(_list_parts(dag_id, run_id))
        if digests == built and None not in digests.values():
            return report
        if attempt == rounds:
            break
        report = build_report(dag_id, run_id, parts_read)
        write_report(report)
        built = digests
    log.warning("the report of %s %s may miss a cluster: its parts still changed after %d "
                "rebuilds (ephemeral report rebuilds it from the parts)", dag_id, run_id, rounds)
    return report
