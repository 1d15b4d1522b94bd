"""The ephemeral CLI as a user runs it: the installed entry point, in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ephemeral.backends.local import LocalBackend

EPHEMERAL = shutil.which("ephemeral", path=str(Path(sys.executable).parent)) or "ephemeral"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([EPHEMERAL, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), check=False)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_validate_all_shipped_specs() -> None:
    out = json.loads(cli("specs", "validate", "--json").stdout)
    assert {Path(r["file"]).name for r in out} >= {"train-gpu.yaml", "adhoc-cpu.yaml", "etl.yaml",
                                                   "etl-gpu.yaml"}
    assert all(r["ok"] for r in out)


def test_validate_reports_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: RayCluster\nname: Bad_Name\nversion: 1\nimage: x\nrayVersion: '2.60.0'\n"
                   "workerGroups: [{name: w, replicas: 0}]\n")
    proc = cli("specs", "validate", str(bad), check=False)
    assert proc.returncode == 2
    assert str(bad) in proc.stdout
    assert "name: 'Bad_Name' is not a DNS-1123 label" in proc.stdout
    assert "workerGroups[0].replicas" in proc.stdout


def test_show_applies_profile_and_overrides() -> None:
    doc = json.loads(cli("specs", "show", "ray/train-gpu@1", "-p", "ci-cpu", "--replicas", "1",
                         "--json").stdout)
    assert doc["ref"] == "ray/train-gpu@1"
    assert doc["profile"] == "ci-cpu"
    group = doc["spec"]["workerGroups"][0]
    assert (group["replicas"], group["gpus"]) == (1, 0)
    assert len(doc["hash"]) == 16
    # ci-cpu's sizes are limits an override does not lift.
    proc = cli("specs", "show", "ray/train-gpu@1", "-p", "ci-cpu", "--replicas", "3",
               check=False)
    assert proc.returncode == 2
    assert "workerGroups.gpu.replicas: 3 is more than profile ci-cpu allows" in proc.stderr


def test_show_unknown_version_names_the_versions_that_exist() -> None:
    proc = cli("specs", "show", "ray/train-gpu@7", check=False)
    assert proc.returncode == 2
    assert "versions that exist: ray/train-gpu@1" in proc.stderr


def test_up_refuses_gpus_on_a_host_without_them_and_creates_nothing(
    ephemeral_home: Path,
) -> None:
    proc = cli("up", "ray/train-gpu", "--json", check=False)
    assert proc.returncode == 2
    err = json.loads(proc.stdout)
    assert err["error"] == "SpecError"
    assert "workerGroups[0].gpus" in err["message"]
    assert "ci-cpu" in err["message"]
    assert LocalBackend(ephemeral_home).list_owned() == []


@pytest.mark.local
def test_up_ls_submit_down_a_real_ray_cluster(local_backend: LocalBackend) -> None:
    """One Ray cluster through the whole CLI: up (idempotent), ls, submit (streamed logs, JSON
    result, a failing job's exit code), a Spark command refused on it, down (idempotent)."""
    up = json.loads(cli("up", "ray/adhoc-cpu", "-p", "ci-cpu", "--replicas", "1",
                        "--name", "cli-ray", "--json").stdout)
    handle = up["handle"]
    assert handle["name"] == "cli-ray"
    assert handle["endpoints"]["dashboard"].startswith("http://127.0.")
    # up again is idempotent: same cluster, same endpoints
    again = json.loads(cli("up", "ray/adhoc-cpu", "-p", "ci-cpu", "--replicas", "1",
                           "--name", "cli-ray", "--json").stdout)
    assert again["handle"] == handle
    listed = json.loads(cli("ls", "--json").stdout)
    assert [(r["handle"]["name"], r["phase"]) for r in listed] == [("cli-ray", "ready")]
    human = cli("ls").stdout
    assert "cli-ray" in human

    jobs = str(Path(__file__).resolve().parents[2] / "jobs")
    ok = cli("submit", "cli-ray", "--working-dir", jobs, "--", "python", "hello_ray.py")
    assert '"sum_of_squares": 328350' in ok.stdout  # the job's own output, streamed
    assert "SUCCEEDED" in ok.stderr
    as_json = json.loads(cli("submit", "cli-ray", "--json", "--", "python", "-c",
                             "print('{\"answer\": 42}')").stdout)
    assert (as_json["status"], as_json["result"]) == ("SUCCEEDED", {"answer": 42})
    bad = cli("submit", "cli-ray", "--", "python", "-c",
              "print('going', 'down'); raise SystemExit(3)", check=False)
    assert bad.returncode == 1
    assert "JobFailed" in bad.stderr
    # the job's last lines are on the terminal once: streamed, or shown under the error when
    # the stream did not deliver them (Ray echoes the command, which does not hold the words)
    assert (bad.stdout + bad.stderr).count("going down") == 1, (bad.stdout, bad.stderr)
    as_json_bad = cli("submit", "cli-ray", "--json", "--", "python", "-c",
                      "print('going', 'down'); raise SystemExit(3)", check=False)
    assert "going down" in json.loads(as_json_bad.stdout)["message"]  # --json keeps the tail
    wrong = cli("spark-submit", "cli-ray", "x.py", "--json", check=False)
    assert wrong.returncode == 1
    assert "is a ray cluster, not spark" in json.loads(wrong.stdout)["message"]

    down = json.loads(cli("down", "cli-ray", "--json").stdout)
    assert down["deleted"][0]["existed"] is True
    assert local_backend.pids("cli-ray") == []
    assert json.loads(cli("ls", "--json").stdout) == []
    again_down = json.loads(cli("down", "cli-ray", "--json").stdout)
    assert again_down["deleted"] == []
    assert again_down["not_found"][0]["name"] == "cli-ray"


@pytest.mark.local
def test_spark_submit_runs_on_the_workers_and_down_all_deletes_every_cluster(
        local_backend: LocalBackend) -> None:
    """spark-submit on a two-worker Spark cluster; then `down --all` deletes it and a second
    one (two Spark clusters, not three: each start costs this 2-core machine)."""
    app = str(Path(__file__).resolve().parents[2] / "jobs" / "hello_spark.py")
    cli("up", "spark/etl", "-p", "ci-cpu", "--name", "cli-spark", "--json")
    out = json.loads(cli("spark-submit", "cli-spark", app, "--json").stdout)
    assert out["status"] == "SUCCEEDED"
    assert out["job_id"].startswith("app-")
    workers = sorted(n.ip for n in local_backend.node_plan("cli-spark") if n.role == "worker")
    assert out["result"]["ran_on"] == workers
    assert 3.0 < out["result"]["pi"] < 3.3

    cli("up", "spark/etl", "-p", "ci-cpu", "--replicas", "1", "--name", "all-b", "--json")
    out = json.loads(cli("down", "--all", "--json").stdout)
    assert sorted(d["name"] for d in out["deleted"]) == ["all-b", "cli-spark"]
    assert local_backend.list_owned() == []
