"""The ad-hoc form's numbers: a job timeout that fits the cluster's lifetime once the cluster has
started (one time budget, before and after creation), a job timeout that is a finite number of
seconds above 0 (CLI and operator alike), and whole numbers written as floats."""

from __future__ import annotations

import copy
import inspect
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ephemeral.adhoc import (
    SCHEDULING_MARGIN,
    RequestError,
    check_timeout_within_ttl,
    job_timeout_seconds,
    validate_request,
)
from ephemeral.backends.base import Endpoints, make_handle
from ephemeral.lifecycle import SETUP_READY_TIMEOUT
from ephemeral.specs import ClusterIdentity, resolve
from tests.conftest import dag_file_module

FORM = {"cluster_spec": "ray/adhoc-cpu", "profile": None, "workers": 2, "gpus_per_worker": None,
        "entrypoint": "python hello_ray.py", "pip": None, "timeout_minutes": 60}
# ray/adhoc-cpu: lifetime.ttl 2h; the setup may take 15 min to get the cluster ready, and the
# job's task 2 min to start after it: 103 minutes are left for the job.
FITS = int((7200 - SETUP_READY_TIMEOUT - SCHEDULING_MARGIN) // 60)


def refused(field: str, **form: Any) -> str:
    with pytest.raises(RequestError) as err:
        validate_request(FORM | form)
    assert err.value.fields == [field], str(err.value)
    return str(err.value)


# --- one time budget, before and after the cluster exists ------------------------------------


def test_the_longest_timeout_the_form_accepts_is_named_when_refusing_more() -> None:
    assert FITS == 103
    assert validate_request(FORM | {"timeout_minutes": FITS})["timeout_s"] == FITS * 60
    for minutes in (FITS + 1, 120):  # 120: the whole ttl, accepted before and failed later
        text = refused("timeout_minutes", timeout_minutes=minutes)
        assert f"ask for at most {FITS} minutes" in text
        assert "lifetime.ttl 2h (7200 s)" in text
        assert "up to 900 s (15 min) to get ready" in text


def test_a_timeout_the_form_accepts_still_fits_when_the_job_starts() -> None:
    """The rule after creation (operator, CLI: what is left of the ttl) holds for every
    timeout the rule before creation accepts, however long the start took within its bounds."""
    spec = resolve("ray/adhoc-cpu")
    created = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    handle = make_handle(spec, ClusterIdentity.manual(spec.spec.name, "eph-budget"),
                         backend="fake", endpoints=Endpoints(), created=created)
    timeout_s = validate_request(FORM | {"timeout_minutes": FITS})["timeout_s"]
    latest_start = created + timedelta(seconds=SETUP_READY_TIMEOUT + SCHEDULING_MARGIN)
    assert check_timeout_within_ttl(handle, timeout_s, now=latest_start,
                                    field="job_timeout") >= timeout_s


def test_a_spec_whose_ttl_leaves_no_time_says_so() -> None:
    with pytest.raises(RequestError) as err:
        validate_request(FORM | {"timeout_minutes": 1}, ready_timeout=7200.0)
    assert "use a spec with a longer ttl" in str(err.value)
    assert "ask for at most" not in str(err.value)


def test_the_budget_uses_the_setups_own_ready_timeout() -> None:
    from ephemeral.airflow.operators import CreateClusterOperator

    default = inspect.signature(CreateClusterOperator).parameters["ready_timeout"].default
    assert default == SETUP_READY_TIMEOUT
    module = dag_file_module("ray_job_adhoc", "limits_ray_job_adhoc")
    # The form's setup keeps the default the budget assumes.
    assert module.dag.get_task("create_cluster").ready_timeout == SETUP_READY_TIMEOUT


# --- a job timeout is a finite number of seconds above 0 --------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [(None, None), ("", None), (90, 90.0),
                                                ("1.5", 1.5)])
def test_a_job_timeout_is_seconds_or_nothing(value: Any, seconds: float | None) -> None:
    assert job_timeout_seconds(value, "--timeout") == seconds


@pytest.mark.parametrize("value", [-5, 0, math.nan, math.inf, "inf", "abc", True, [1]])
def test_any_other_job_timeout_is_refused_naming_the_field(value: Any) -> None:
    with pytest.raises(RequestError) as err:
        job_timeout_seconds(value, "--timeout")
    assert err.value.fields == ["--timeout"]


@pytest.mark.parametrize("timeout", ["-5", "0", "nan", "inf"])
def test_ephemeral_submit_refuses_such_a_timeout_before_submitting(
        monkeypatch: pytest.MonkeyPatch, timeout: str) -> None:
    from typer.testing import CliRunner

    import ephemeral.cli.main as cli
    import ephemeral.jobs.ray_jobs as ray_jobs
    from ephemeral.backends.fake import InMemoryBackend

    backend = InMemoryBackend()
    backend.create(resolve("ray/adhoc-cpu"), identity=ClusterIdentity.manual("adhoc-cpu",
                                                                               "my-ray"))
    monkeypatch.setattr(cli, "_backend", lambda name: backend)

    def no_jobs_api(*_: Any) -> Any:
        raise AssertionError("the Jobs API was reached")

    monkeypatch.setattr(ray_jobs, "ray_jobs_for", no_jobs_api)
    result = CliRunner().invoke(cli.app, ["submit", "my-ray", "--timeout", timeout, "--",
                                          "python", "hello_ray.py"])
    assert result.exit_code == 2, result.output
    assert "--timeout: " in result.output
    assert "above 0" in result.output
    assert not isinstance(result.exception, AssertionError | OverflowError)


# --- whole numbers written as floats -----------------------------------------------------------


def test_whole_numbers_written_as_floats_are_whole_numbers() -> None:
    req = validate_request(FORM | {"workers": 2.0, "timeout_minutes": 60.0,
                                   "gpus_per_worker": 0.0})
    assert req["overrides"] == {"workers": {"replicas": 2, "gpus": 0}}
    assert type(req["overrides"]["workers"]["replicas"]) is int
    assert req["timeout_s"] == 3600
    assert type(req["timeout_s"]) is int
    for field, value in (("workers", 2.5), ("timeout_minutes", math.nan),
                         ("gpus_per_worker", math.inf)):
        refused(field, **{field: value})


def test_the_form_and_its_task_agree_on_floats() -> None:
    """What the form's JSON schema accepts as an integer, its first task accepts too."""
    module = dag_file_module("ray_job_adhoc", "floats_ray_job_adhoc")
    check = module.dag.get_task("validate_request").python_callable
    conf = {"workers": 2.0, "timeout_minutes": 60.0, "gpus_per_worker": 0.0}
    params = copy.deepcopy(module.dag.params)
    for key, value in conf.items():
        params[key] = value
    params.validate()
    merged = {k: p.value for k, p in module.dag.params.items()} | conf
    assert check(params=merged)["overrides"] == {"workers": {"replicas": 2, "gpus": 0}}


# --- the validated request fits in the task's result (the metadata-only XCom) ----------------


def _pushed(req: dict[str, Any]) -> None:
    from ephemeral.airflow.xcom import MetadataOnlyXCom

    MetadataOnlyXCom.serialize_value(req, key="return_value", task_id="validate_request",
                                     dag_id="ray_job_adhoc")


def _pips(exclusions: int) -> list[str]:
    """The form's most entries (50), each a plain requirement of 18 + 8 * ``exclusions``
    characters."""
    return [f"package-{i:02d}>=1.0.0" + ",!=1.0.9" * exclusions for i in range(50)]


def test_what_the_form_accepts_fits_in_its_tasks_result() -> None:
    for form in ({"entrypoint": "python hello_ray.py " + "a " * 990},  # 2000 plain characters
                 {"pip": _pips(7)}):
        _pushed(validate_request(FORM | form, run_folder="inst/ray_job_adhoc/manual__1"))


def test_an_entrypoint_that_grows_past_the_limit_when_quoted_is_refused_by_name() -> None:
    quotes = "python hello_ray.py " + '"' + "'" * 1970 + '"'  # within the form's 2000
    text = refused("entrypoint", entrypoint=quotes)
    assert "a task's result may be at most 4096 (EPHEMERAL_XCOM_MAX_BYTES)" in text
    assert "use fewer quote characters" in text


def test_pip_entries_past_the_limit_are_refused_by_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = refused("pip", pip=_pips(10))
    assert "50 entries take" in text
    assert "at most 4096" in text
    monkeypatch.setenv("EPHEMERAL_XCOM_MAX_BYTES", "8192")  # the deployment's own limit
    validate_request(FORM | {"pip": _pips(10)})


# --- training workers the cluster can place --------------------------------------------------


@pytest.mark.parametrize(("profile", "workers", "flags", "most"), [
    ("ci-cpu", 2, "--num-workers 4", 2),          # ci-cpu: a fixed size, no autoscaling
    (None, 2, "--num-workers 5", 4),              # maxReplicas 4: the autoscaler adds two
    (None, 2, "--num-workers 2 --cpus-per-worker 2", 0),  # no 1-CPU node holds a 2-CPU worker
    ("ci-cpu", 2, "--num-workers=1 --gpus-per-worker=1", 0),
    ("ci-cpu", 2, "--num-workers 2 --num-workers 3", 2),  # the parser keeps the last
    ("ci-cpu", 2, "--num-w 4", 2),                # a prefix argparse takes is the flag
    ("ci-cpu", 2, "--num-workers 1 --num=3", 2),
    ("ci-cpu", 2, "--num-workers 1 --gpus 1", 0),
])
def test_training_workers_no_node_layout_can_hold_are_refused_before_creating(
        profile: str | None, workers: int, flags: str, most: int) -> None:
    why = refused("entrypoint", profile=profile, workers=workers,
                  entrypoint=f"python train_ddp.py --steps 5 {flags}")
    assert f"can hold at most {most}" in why
    assert "leave out --num-workers" in why


@pytest.mark.parametrize(("profile", "flags"), [
    ("ci-cpu", ""),                                # sized from the cluster by the DAG
    ("ci-cpu", "--num-workers 2 --cpus-per-worker 1"),
    (None, "--num-workers 4"),                     # within maxReplicas
    ("ci-cpu", "--num-workers 2 --cpus-per-worker 0.5"),
    ("ci-cpu", "--num-workers 9 --num-workers 1"),
    ("ci-cpu", "--num-w 9 --num-workers 1"),
])
def test_training_workers_the_cluster_can_hold_pass(profile: str | None, flags: str) -> None:
    req = validate_request(FORM | {"profile": profile,
                                   "entrypoint": f"python train_ddp.py --steps 5 {flags}"})
    assert req["entrypoint"].endswith(flags)


@pytest.mark.parametrize("flags", ["--num-workers nan", "--gpus-per-worker inf",
                                   "--cpus-per-worker nan", "--num-workers 0"])
def test_a_size_the_jobs_parser_refuses_is_refused_by_it_alone(flags: str) -> None:
    from ephemeral.jobs.scaling import placement_problem
    from ephemeral.specs.models import RaySpec

    spec = resolve("ray/adhoc-cpu", "ci-cpu").spec
    assert isinstance(spec, RaySpec)
    assert placement_problem(f"python train_ddp.py {flags}", spec) is None  # not its rule
    why = refused("entrypoint", profile="ci-cpu", entrypoint=f"python train_ddp.py {flags}")
    assert "train_ddp.py refuses these arguments: argument --" in why


def test_the_kubernetes_examples_form_offers_the_workers_its_spec_allows() -> None:
    """Its form took up to 16 workers, which the setup then refused (ray/train-gpu's
    maxReplicas is 4): the form's bound is the spec's."""
    from ephemeral.specs import resolve

    module = dag_file_module("kubernetes_executor_example", "limits_kubernetes_example")
    (group,) = resolve("ray/train-gpu").spec.worker_groups
    assert module.dag.params.get_param("workers").schema["maximum"] == group.max
