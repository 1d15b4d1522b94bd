"""Where an ad-hoc job may write, and which script it may name.

The trigger form's entrypoint may not choose where the job writes (``ephemeral.adhoc.
confine_outputs``): the form passes this run's own folder itself. And every job refuses a
``--run`` that would leave the artifact root (``jobs/_common.run_problem``), whatever DAG or
caller gave it. The script is named bare, from the jobs folder Ray uploads.
"""

from __future__ import annotations

import ast
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.adhoc import (
    OUTPUT_FLAGS,
    RUN_OUTPUTS,
    RequestError,
    check_entrypoint,
    confine_outputs,
    validate_request,
)
from ephemeral.jobs.artifacts import run_folder, run_uri
from ephemeral.settings import get_settings
from tests.conftest import dag_file_module

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "jobs"
sys.path.insert(0, str(JOBS))
import _common  # noqa: E402

FORM = {"cluster_spec": "ray/adhoc-cpu", "profile": None, "workers": 2, "gpus_per_worker": None,
        "entrypoint": "python hello_ray.py", "pip": None, "timeout_minutes": 60}
FOLDER = run_folder("ray_job_adhoc", "manual__2026-11-30T08:00:00+00:00")


def refused(entrypoint: str, **kw: Any) -> str:
    with pytest.raises(RequestError) as err:
        validate_request(FORM | {"entrypoint": entrypoint}, **kw)
    assert err.value.fields == ["entrypoint"], str(err.value)
    return str(err.value)


# --- F2 (a): the form's entrypoint does not choose where the job writes ---------------------


@pytest.mark.parametrize("entrypoint", [
    "python train_ddp.py --run ../../../etc/cron.d",
    "python train_ddp.py --run prod/train_distributed/scheduled__2026-11-29T00_00_00_00_00",
    "python train_ddp.py --run=adhoc/my-model-1",
    "python train_ddp.py --ru prod/x",  # argparse takes an unambiguous prefix
    "python train_ddp.py --artifact-root s3://prod-bucket/artifacts --steps 5",
    "python train_ddp.py --artif=s3://prod-bucket",
    "python evaluate.py --model-uri s3://b/m/model.pt --out=s3://b/prod/eval/metrics.json",
    "python evaluate.py --model-uri s3://b/m/model.pt --output-uri s3://b/x",
    "python hello_ray.py --run x",  # refused for any script: the rule does not guess
])
def test_an_entrypoint_that_names_where_the_job_writes_is_refused(entrypoint: str) -> None:
    for kw in ({}, {"run_folder": FOLDER}):
        message = refused(entrypoint, **kw)
        assert "chooses where the job writes" in message
        assert "remove it" in message
        assert "its own run's folder" in message
    assert FOLDER in refused(entrypoint, run_folder=FOLDER)


def test_every_output_flag_word_is_named_once_in_one_problem() -> None:
    message = refused("python train_ddp.py --run a --output-dir b --steps 3")
    assert "'--run', '--output-dir' (a form of --output) choose where the job writes" in message
    assert "remove them" in message


@pytest.mark.parametrize("entrypoint", [
    "python train_ddp.py --rows 100 --steps 5 --lr 0.1",  # --rows is no prefix of --run
    "python evaluate.py --model-uri s3://b/prod/m/model.pt --data-uri s3://b/d",  # inputs
    "python serve_latency.py --model-uri s3://b/m/model.pt --timeout 5",
])
def test_inputs_and_other_flags_pass(entrypoint: str) -> None:
    assert validate_request(FORM | {"entrypoint": entrypoint})["entrypoint"] == entrypoint


def test_the_form_passes_the_runs_own_folder_to_the_scripts_that_take_one() -> None:
    def entry(e: str) -> str:
        return str(validate_request(FORM | {"entrypoint": e}, run_folder=FOLDER)["entrypoint"])

    assert entry("python train_ddp.py --steps 5") == \
        f"python train_ddp.py --run {FOLDER} --steps 5"
    # etl_features.py is a Spark application, refused by this (Ray) form; its flag is set the
    # same way for a caller that runs it (test_adhoc_scripts).
    # evaluate.py writes next to the model by default: into the run that made it.
    assert entry("python evaluate.py --model-uri s3://b/prod/m/model/model.pt") == shlex.join([
        "python", "evaluate.py", "--output", run_uri(FOLDER, "eval", "metrics.json"),
        "--model-uri", "s3://b/prod/m/model/model.pt"])
    assert entry("python hello_ray.py") == "python hello_ray.py"
    # The folder is this DAG's and this run's, under this deployment instance's.
    assert FOLDER.startswith(f"{get_settings().instance}/ray_job_adhoc/manual__2026-11-30T08")


def test_with_arbitrary_entrypoints_allowed_the_command_is_the_users() -> None:
    entry = "python train_ddp.py --run mine"
    req = validate_request(FORM | {"entrypoint": entry}, allow_any_entrypoint=True,
                           run_folder=FOLDER)
    assert req["entrypoint"] == entry


def test_the_dag_task_passes_its_runs_folder() -> None:
    module = dag_file_module("ray_job_adhoc", "confinement_ray_job_adhoc")
    check = module.dag.get_task("validate_request").python_callable
    conf = {k: p.value for k, p in module.dag.params.items()} | {
        "entrypoint": "python train_ddp.py --steps 5"}
    run = SimpleNamespace(dag_id="ray_job_adhoc", run_id="manual__2026-11-30T08:00:00+00:00")
    assert check(params=conf, dag_run=run)["entrypoint"] == \
        f"python train_ddp.py --run {FOLDER} --steps 5"
    with pytest.raises(RequestError, match="'--run' chooses where the job writes"):
        check(params=conf | {"entrypoint": "python train_ddp.py --run ../x"}, dag_run=run)


def _job_flags() -> dict[str, set[str]]:
    """Each job's long options, read from its ``add_argument`` calls."""
    flags: dict[str, set[str]] = {}
    for path in sorted(JOBS.glob("*.py")):
        if path.name.startswith("_"):
            continue
        found = flags.setdefault(path.name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"):
                found |= {str(a.value) for a in node.args
                          if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    return flags


def test_the_output_flags_are_those_the_jobs_write_by() -> None:
    """A job that gains a flag naming a place (``--out-dir``, ``--save-path``) must be confined
    too: this fails until OUTPUT_FLAGS (and RUN_OUTPUTS) say so."""
    placeish = {"run", "output", "out", "root", "dir", "dest", "save", "path", "checkpoint"}
    flags = _job_flags()
    assert flags["train_ddp.py"] >= {"--run", "--artifact-root"}
    for script, options in flags.items():
        for option in options:
            words = set(option.lstrip("-").split("-"))
            if words & placeish and not option.startswith("--checkpoint-every"):
                assert option in OUTPUT_FLAGS, f"{script} {option}: add it to OUTPUT_FLAGS"
        writes_by = options & set(OUTPUT_FLAGS)
        if writes_by - {"--artifact-root"}:
            assert script in RUN_OUTPUTS, f"{script} takes {sorted(writes_by)}: add to RUN_OUTPUTS"
    for script, (flag, _) in RUN_OUTPUTS.items():
        assert flag in flags[script], f"{script} takes no {flag}"


def test_confine_outputs_alone_adds_nothing_outside_a_run() -> None:
    assert confine_outputs("python train_ddp.py --steps 5", None) == "python train_ddp.py --steps 5"


# --- F2 (b): every job refuses a run that leaves the artifact root ---------------------------


@pytest.mark.parametrize(("run", "why"), [
    ("../../../etc/cron.d", "has a '..' component"),
    ("adhoc/../../prod/x", "has a '..' component"),
    ("%2e%2e/%2E%2E/etc", "has a '..' component"),  # pyarrow decodes a URI's path
    ("a\\..\\..\\b", "has a '..' component"),
    ("/etc/cron.d", "is an absolute path"),
    ("~/x", "is an absolute path"),
    ("s3://prod-bucket/artifacts/prod/x", "is a URI"),
    ("file:///etc", "is a URI"),
    ("x?endpoint_override=evil.example", "holds '?' or '#'"),
    ("", "is empty"),
])
def test_a_job_refuses_a_run_that_leaves_the_root(
        run: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert why in str(_common.run_problem(run))
    with pytest.raises(SystemExit) as exit_:
        _common.run_dir("file:///tmp/artifacts", run)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert f"--run {run!r} {why}" in err
    assert '"error"' in out  # the result line the submitter reads


@pytest.mark.parametrize("run", [
    "adhoc/my-model-1", FOLDER, f"{FOLDER}/trial-lr-0.02", "a..b/c.d", "r"],
    ids=["adhoc", "run-folder", "trial-folder", "dots", "r"])  # FOLDER names this instance
def test_a_job_takes_a_relative_run(run: str) -> None:
    assert _common.run_problem(run) is None
    assert _common.run_dir("s3://b/root/", run) == f"s3://b/root/{run}"


def test_train_ddp_refuses_the_run_before_it_trains(tmp_path: Path) -> None:
    import train_ddp

    args = train_ddp.parse_args(["--run", "../../elsewhere", "--artifact-root", str(tmp_path)])
    with pytest.raises(SystemExit):
        train_ddp.run_ray(args)  # before torch or Ray are imported, before anything is written
    assert list(tmp_path.iterdir()) == []


def test_every_job_that_takes_run_turns_it_into_a_place_by_run_dir() -> None:
    for script, options in _job_flags().items():
        if "--run" not in options:
            continue
        text = (JOBS / script).read_text()
        assert "run_dir(root, args.run)" in text, script
        assert "join(root, args.run" not in text, script


# --- F9: the script is a bare name from the jobs folder --------------------------------------


@pytest.mark.parametrize(("entrypoint", "why"), [
    (f"python {JOBS / 'hello_ray.py'}", "is a path; name the script alone"),
    ("python ../jobs/hello_ray.py", "is a path; name the script alone"),
    ("python ./hello_ray.py", "is a path; name the script alone"),
    ("python jobs/hello_ray.py", "is a path; name the script alone"),
    ("python _common.py", "is a helper module of the jobs, not a job"),
    ("python .hidden.py", "is a helper module of the jobs, not a job"),
])
def test_only_a_bare_job_name_is_a_script(entrypoint: str, why: str) -> None:
    with pytest.raises(RequestError) as err:
        check_entrypoint(entrypoint, JOBS)
    message = str(err.value)
    assert err.value.fields == ["entrypoint"]
    assert "is not a script in jobs/" in message
    assert why in message
    assert "choose one of: " in message
    assert "_common.py" not in message.split("choose one of: ")[1]


def test_a_bare_job_name_passes_unchanged() -> None:
    assert check_entrypoint("python hello_ray.py", JOBS) == "python hello_ray.py"
    assert check_entrypoint("python  train_ddp.py   --steps 5", JOBS) == \
        "python train_ddp.py --steps 5"
