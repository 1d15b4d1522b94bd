"""``ephemeral report`` after the upgrade to the instance layout still shows a report written
before it: ``<root>/reports/<dag>/<run>/clusters/<cluster>.json``, each id made a path segment
by the slug of then (``[^A-Za-z0-9._-]+`` to ``_``, no digest; commit 7d8db52 moved reports
under ``<instance>/``), and says on stderr which layout it read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ephemeral.cli.main import app

RUN = "scheduled__2026-11-29T00:00:00+00:00"
OLD_RUN_FOLDER = "scheduled__2026-11-29T00_00_00_00_00"  # the slug of then: no digest
T0 = 1_795_910_400.0


def old_part(name: str, run_id: str = RUN) -> dict[str, object]:
    """A part as the teardown of then wrote it (its fields, none added since)."""
    return {
        "dag_id": "train", "run_id": run_id, "name": name, "engine": "ray",
        "backend": "local", "spec_ref": "ray/adhoc-cpu@1", "spec_hash": "abc",
        "profile": "ci-cpu", "setup_task": "create", "teardown_task": "delete",
        "groups": [{"name": "head", "role": "head", "replicas": 1, "cpu": 1.0,
                    "memory_bytes": 2 * 1024**3, "gpus": 0}],
        "created": T0, "ready": T0 + 12, "teardown_started": T0 + 70, "deleted": T0 + 72,
        "deletion": "complete", "recorded_at": T0 + 72,
        "jobs": [{"job_id": "j1", "engine": "ray", "task": "train", "status": "SUCCEEDED",
                  "start": T0 + 20, "end": T0 + 60, "source": "ray jobs api"}]}


def lay_out_old(root: Path, folder: str, *parts: dict[str, object]) -> Path:
    clusters = root / "reports" / "train" / folder / "clusters"
    clusters.mkdir(parents=True)
    for part in parts:
        (clusters / f"{part['name']}.json").write_text(json.dumps(part))
    return clusters.parent


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", str(tmp_path / "art"))
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "prod")
    return tmp_path / "art"


def test_a_report_of_the_pre_instance_layout_is_shown_and_said_to_be(root: Path) -> None:
    folder = lay_out_old(root, OLD_RUN_FOLDER, old_part("eph-adhoc-cpu-1"))
    # Another run whose id the slug of then made the same folder: not this run's.
    lay_out_old(root, "retrain_v2", old_part("theirs", run_id="retrain+v2"))
    out = CliRunner().invoke(app, ["report", "train", RUN])
    assert out.exit_code == 0, out.output
    assert "eph-adhoc-cpu-1" in out.stdout
    assert "read from the pre-instance layout" in out.stderr
    assert f"page: {folder.as_uri()}/report.html" in out.stdout
    out = CliRunner().invoke(app, ["report", "train", RUN, "--json"])
    report = json.loads(out.stdout)
    [cluster] = report["clusters"]
    assert (cluster["lifetime_s"], cluster["starting_s"], cluster["busy_s"]) == (72.0, 12.0, 40.0)
    out = CliRunner().invoke(app, ["report", "train", "retrain:v2"])
    assert out.exit_code == 1
    assert "no run report of train retrain:v2" in out.output


def test_the_instance_layout_comes_first(root: Path) -> None:
    from ephemeral.report import ClusterFacts, record

    lay_out_old(root, OLD_RUN_FOLDER, old_part("old-life"))
    record([ClusterFacts.model_validate(old_part("new-life"))])
    out = CliRunner().invoke(app, ["report", "train", RUN])
    assert out.exit_code == 0, out.output
    assert "new-life" in out.stdout
    assert "old-life" not in out.stdout
    assert "pre-instance" not in out.stderr


def test_no_report_in_either_layout_is_still_an_error(root: Path) -> None:
    out = CliRunner().invoke(app, ["report", "train", RUN])
    assert out.exit_code == 1
    assert f"no run report of train {RUN}" in out.output
