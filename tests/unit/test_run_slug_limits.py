"""run_slug's limits: a slug is one path segment of at most SLUG_MAX characters, never empty
(a 250-character run id with ':' made a 259-character folder name: OSError 36 on a file://
root, the run's report and folders lost; "" made run_folder 'inst/d/'), and a crafted run id
cannot brute-force its way into another run's folder. Airflow's own run ids keep the slugs
their existing reports and run folders carry."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path

import pytest

from ephemeral.jobs import artifacts
from ephemeral.jobs.artifacts import SLUG_MAX, run_folder, run_slug

HEX32 = re.compile(r"-[0-9a-f]{32}$")
HEX8 = re.compile(r"(?<![0-9a-f])-[0-9a-f]{8}$")


def legacy_slug(run_id: str) -> str:
    """run_slug before the limits (the slugs existing reports and run folders carry)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_")
    if slug == run_id and slug not in (".", "..") and not re.search(r"-[0-9a-f]{8}$", slug):
        return slug
    return f"{slug or 'run'}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


AIRFLOW_IDS = [
    "scheduled__2026-01-01T00:00:00+00:00",
    "manual__2026-01-02T03:04:05.123456+00:00",
    "manual__2026-01-02T03:04:05+00:00_AbCd1234",  # Airflow 3: no logical date, random tail
    "asset_triggered__2026-01-01T00:00:00+00:00_AbCd1234",
    "asset_materialization__2026-11-30T07:51:00.5+00:00",
    "backfill__2026-01-01T00:00:00+00:00", "dataset_triggered__2025-06-01T12:00:00+00:00",
    "operator_triggered__2026-01-01T00:00:00Z",
    "2026-01-02T03:04:05Z",  # a cluster's creation time (report parts, readiness records)
]
SAFE_IDS = ["retrain_v2", "manual__once", "train_distributed", "a-b.c", "x" * SLUG_MAX]


@pytest.mark.parametrize("run_id", [*AIRFLOW_IDS, *SAFE_IDS])
def test_airflows_run_ids_and_safe_ids_keep_their_slugs(run_id: str) -> None:
    assert run_slug(run_id) == legacy_slug(run_id)


def test_a_known_slug_of_a_manual_run() -> None:
    assert run_slug("manual__2026-01-02T03:04:05.123456+00:00") == (
        "manual__2026-01-02T03_04_05.123456_00_00-b3e14bb2")


LONG_IDS = [
    "retrain:" + "x" * 242,  # 250 characters, ':' -> 259 before
    "+" * 10 + "y" * 240, "~".join(["z" * 49] * 5) + "~~~~~", "a" * 250,
    "manual__2026-01-02T03:04:05.123456+00:00_" + "q" * 200, "b" * (SLUG_MAX + 1),
    "é" * 250, "x" * 10_000,
]


@pytest.mark.parametrize("run_id", LONG_IDS)
def test_a_long_run_id_fits_one_folder_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            run_id: str) -> None:
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", (tmp_path / "art").as_uri())
    slug = run_slug(run_id)
    assert 0 < len(slug) <= SLUG_MAX
    assert HEX32.search(slug)  # cut: a long digest tells the ids apart
    # What the report store, the alerts and the jobs write under it, on a file:// root.
    artifacts.write_json(artifacts.deployment_uri("reports", "d", slug, "report.json"), {})
    artifacts.write_json(artifacts.deployment_uri("alerts", "d", f"{slug}.json"), {})
    artifacts.write_json(artifacts.run_uri(run_folder("d", run_id), "metrics.json"), {})
    assert artifacts.read_json(artifacts.run_uri(run_folder("d", run_id), "metrics.json")) == {}


def test_ids_that_share_their_first_characters_get_different_slugs() -> None:
    head = "retrain:" + "x" * 150
    slugs = {run_slug(head + tail) for tail in ("a", "b", ":", "+", "~", "")}
    assert len(slugs) == 6


@pytest.mark.parametrize("run_id", ["", "_", ":", "+++", "..", "."])
def test_an_empty_or_dots_only_slug_is_never_empty_nor_a_parent(run_id: str) -> None:
    slug = run_slug(run_id)
    assert slug
    assert slug not in (".", "..")
    assert "/" not in slug
    assert not run_folder("d", run_id).endswith("/")
    assert run_folder("d", run_id).rsplit("/", 1)[1] == slug
    assert len({run_slug(r) for r in ("", "_", ":", "+++")}) == 4


def test_crafted_variants_of_a_run_id_get_long_digests_never_its_slug() -> None:
    """The variants a crafted manual run id could try (same sanitised text, another unsafe
    character or a literal '_' where the original has ':' or '+') are not of Airflow's form:
    their digest is 128 bits, and a short-digest slug never equals a long-digest one."""
    victim = "manual__2026-01-02T03:04:05.123456+00:00"
    target = run_slug(victim)
    unsafe = [i for i, c in enumerate(victim) if c in ":+"]
    slugs = {target}
    for chars in itertools.product(":+~@ _", repeat=len(unsafe)):
        crafted = list(victim)
        for i, c in zip(unsafe, chars, strict=True):
            crafted[i] = c
        crafted_id = "".join(crafted)
        if crafted_id == victim:
            continue
        slug = run_slug(crafted_id)
        assert slug != target
        assert HEX32.search(slug) or slug == crafted_id, crafted_id
        slugs.add(slug)
    assert len(slugs) == 6 ** len(unsafe)


@pytest.mark.parametrize("run_id", ["retrain:v2", "retrain+v2", "a b", "run~1", "..", ""])
def test_other_ids_that_change_get_a_128_bit_digest(run_id: str) -> None:
    assert HEX32.search(run_slug(run_id))
    assert not HEX8.search(run_slug(run_id))


@pytest.mark.parametrize("run_id", ["x-0123abcd", "x-" + "0123abcd" * 4])
def test_an_unchanged_slug_never_ends_like_a_digest(run_id: str) -> None:
    assert run_slug(run_id) != run_id
    assert run_slug(run_id).startswith(run_id + "-")


def test_slugs_of_many_ids_are_distinct() -> None:
    ids = [*AIRFLOW_IDS, *SAFE_IDS, *LONG_IDS, "", ":", "..", "retrain:v2", "retrain+v2",
           "retrain_v2", "_retrain_v2"]
    ids += [run_slug(i) for i in ids]  # a slug given as a run id names another folder
    ids = list(dict.fromkeys(ids))
    assert len({run_slug(i) for i in ids}) == len(ids)
