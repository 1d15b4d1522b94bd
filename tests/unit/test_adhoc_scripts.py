"""What the form's entrypoint runs, checked before a cluster exists: a job declares its engine
(``__engine__``) and the Ray form refuses a Spark application; a job with a ``parse_args``
has its arguments parsed by it (standard library only, no environment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ephemeral.adhoc import (
    ENGINES,
    RequestError,
    _scripts,
    confine_outputs,
    script_engine,
    validate_request,
)

JOBS = Path(__file__).resolve().parents[2] / "jobs"
FORM = {"cluster_spec": "ray/adhoc-cpu", "profile": None, "workers": 2, "gpus_per_worker": None,
        "entrypoint": "python hello_ray.py", "pip": None, "timeout_minutes": 60}
FOLDER = "inst/ray_job_adhoc/manual__1"


def refused(entrypoint: str) -> str:
    with pytest.raises(RequestError) as err:
        validate_request(FORM | {"entrypoint": entrypoint}, run_folder=FOLDER)
    assert err.value.fields == ["entrypoint"], str(err.value)
    return str(err.value)


# --- the engine ---------------------------------------------------------------------------------


def test_every_job_in_the_jobs_folder_declares_its_engine() -> None:
    engines = {name: script_engine(JOBS / name) for name in _scripts(JOBS)}
    assert set(engines.values()) <= set(ENGINES), engines
    assert sorted(n for n, e in engines.items() if e == "spark") == ["etl_features.py",
                                                                      "hello_spark.py"]


@pytest.mark.parametrize("entrypoint", ["python hello_spark.py",
                                        "python etl_features.py --rows 100"])
def test_a_spark_application_is_refused_by_the_ray_form(entrypoint: str) -> None:
    text = refused(entrypoint)
    assert "is not a Ray job (__engine__ = 'spark' in it)" in text
    assert "choose a Ray job (evaluate.py, hello_ray.py, serve_latency.py, train_ddp.py)" in text
    assert "ephemeral spark-submit" in text


def test_a_deployments_script_without_a_marker_is_a_ray_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.py").write_text("print('hi')\n")
    (tmp_path / "other.py").write_text('__engine__: str = "dask"\n')
    monkeypatch.setenv("EPHEMERAL_JOBS_DIR", str(tmp_path))
    assert script_engine(tmp_path / "mine.py") is None
    assert validate_request(FORM | {"entrypoint": "python mine.py"})["entrypoint"] == \
        "python mine.py"
    assert "run it where its engine runs" in refused("python other.py")


def test_the_spark_jobs_output_flag_is_still_set_for_their_callers() -> None:
    assert confine_outputs("python etl_features.py --rows 10", FOLDER) == \
        f"python etl_features.py --run {FOLDER} --rows 10"
    with pytest.raises(RequestError, match="'--output' chooses where the job writes"):
        confine_outputs("python etl_features.py --output s3://b/prod/features", FOLDER)


# --- the job's own argument parser --------------------------------------------------------------


@pytest.mark.parametrize(("entrypoint", "said"), [
    ("python train_ddp.py --steps abc", "argument --steps: 'abc' is not a whole number"),
    ("python train_ddp.py --bogus-flag", "unrecognized arguments: --bogus-flag"),
    ("python train_ddp.py --launcher mpi", "argument --launcher: invalid choice: 'mpi'"),
    ("python serve_latency.py", "the following arguments are required: --model-uri"),
    ("python serve_latency.py --model-uri s3://b/m.pt --concurrency 0",
     "argument --concurrency: '0' is not a whole number of 1 or more"),
    # What the job would fail on once the cluster runs it: refused by its parser, here.
    ("python serve_latency.py --model-uri s3://b/m.pt --timeout nan",
     "argument --timeout: 'nan' is not a finite number above 0"),
    ("python train_ddp.py --num-workers 0", "argument --num-workers: '0' is not a whole number"),
    ("python train_ddp.py --gpus-per-worker 2", "argument --gpus-per-worker: '2' is more than 1"),
    ("python train_ddp.py --lr nan", "argument --lr: 'nan' is not a finite number of 0 or more"),
    ("python evaluate.py", "the following arguments are required: --model-uri"),
    ("python evaluate.py --model-uri s3://b/m/model.pt --rows 0",
     "argument --rows: '0' is not a whole number of 1 or more"),
])
def test_arguments_the_job_refuses_are_refused_with_its_message(entrypoint: str,
                                                                 said: str) -> None:
    text = refused(entrypoint)
    assert f"refuses these arguments: {said}" in text
    assert "--help` lists them" in text


@pytest.mark.parametrize("entrypoint", [
    "python train_ddp.py --steps 5 --num-workers 2",
    "python serve_latency.py --model-uri s3://b/m.pt --requests 10",
    "python evaluate.py --model-uri s3://b/m/model.pt",
    "python train_ddp.py --num-w 1 --cpus-per-worker 1",  # a prefix argparse takes
    "python hello_ray.py",
])
def test_arguments_the_job_takes_pass(entrypoint: str) -> None:
    validate_request(FORM | {"entrypoint": entrypoint}, run_folder=FOLDER)


def _script(folder: Path, name: str, module_code: str) -> None:
    (folder / name).write_text(module_code + """
import argparse
import os
def parse_args(argv: Any = None) -> Any:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int)
    args = p.parse_args(argv)
    seen = set(os.environ) - {"LC_CTYPE"}  # Python's own locale coercion (PEP 538)
    if seen:
        p.error("saw the environment: " + ",".join(sorted(seen)))
    return args
""")


def test_the_parse_runs_apart_with_the_standard_library_and_no_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _script(tmp_path, "light.py", "from typing import Any\n")
    # Module code that needs more than the standard library is not run to a parse.
    _script(tmp_path, "heavy.py", "from typing import Any\nimport pydantic\n")
    monkeypatch.setenv("EPHEMERAL_JOBS_DIR", str(tmp_path))
    monkeypatch.setenv("EPHEMERAL_TEST_SECRET", "not for the job's code")
    validate_request(FORM | {"entrypoint": "python light.py --n 3"})
    assert "argument --n: invalid int value: 'x'" in refused("python light.py --n x")
    validate_request(FORM | {"entrypoint": "python heavy.py --n x"})


def test_a_script_that_does_not_parse_here_is_left_to_the_cluster(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "newer.py").write_text("def parse_args(argv):\n    match argv\n")
    monkeypatch.setenv("EPHEMERAL_JOBS_DIR", str(tmp_path))
    req: dict[str, Any] = validate_request(FORM | {"entrypoint": "python newer.py --x"})
    assert req["entrypoint"] == "python newer.py --x"


def test_the_dry_run_judges_paths_from_the_jobs_folder(tmp_path: Path) -> None:
    """Ray runs the job from its jobs folder: a path argument names a file there."""
    from ephemeral.adhoc import check_arguments

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.yaml").write_text("x: 1\n")
    (tmp_path / "cfg_job.py").write_text(
        "import argparse\n__engine__ = 'ray'\n\n"
        "def parse_args(argv=None):\n    p = argparse.ArgumentParser()\n"
        "    p.add_argument('--config', type=argparse.FileType('r'))\n"
        "    return p.parse_args(argv)\n")
    check_arguments("python cfg_job.py --config configs/a.yaml", tmp_path)
