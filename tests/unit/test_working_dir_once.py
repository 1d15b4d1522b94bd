"""A Ray job's working_dir is given once: as the ``working_dir`` argument or in
``runtime_env``, not both (``runtime_env.with_working_dir``). The argument silently replaced
``runtime_env['working_dir']``, so the job ran other code than one of them said. Refused naming
both, before anything is submitted, by ``RayJobs.submit`` (and the request digest a retry
attaches by), ``RayJobOperator`` (at parse when both are values, else once rendered) and so
``ephemeral submit``, which submits through ``RayJobs``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.backends.base import Endpoints, make_handle
from ephemeral.errors import JobRefused
from ephemeral.jobs.ray_jobs import RayJobs, request_digest
from ephemeral.specs import ClusterIdentity, resolve

BOTH = "working_dir and runtime_env\\['working_dir'\\] are both given.*give one of them"
CODE = "s3://bucket/code.zip"


def _never(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("nothing may be looked up or submitted")


class NoApi(RayJobs):
    def __init__(self) -> None:
        super().__init__("http://jobs.invalid:8265", cluster="c")

    @property
    def client(self) -> Any:
        return _never()

    def status(self, *_a: Any, **_k: Any) -> Any:
        return _never()


def test_the_python_api_refuses_both_before_submitting() -> None:
    with pytest.raises(JobRefused, match="Ray job 'j1': " + BOTH):
        NoApi().submit("python t.py", job_id="j1", working_dir="/src",
                       runtime_env={"working_dir": CODE})
    with pytest.raises(JobRefused, match=BOTH):
        NoApi().submit_request("python t.py", job_id="j1", working_dir="/src",
                               runtime_env={"working_dir": CODE})


def test_either_one_alone_is_the_same_request() -> None:
    assert request_digest("python t.py", {"working_dir": CODE}) == request_digest(
        "python t.py", {}, CODE)
    assert request_digest("python t.py", {"working_dir": None}, CODE) == request_digest(
        "python t.py", {}, CODE)


def test_the_operator_refuses_both_values_at_parse() -> None:
    from ephemeral.airflow.operators import RayJobOperator

    with pytest.raises(ValueError, match=r"RayJobOperator\(task_id='train'\): " + BOTH):
        RayJobOperator(task_id="train", cluster={}, entrypoint="python t.py",
                       working_dir="/src", runtime_env={"working_dir": CODE})


def test_the_operator_refuses_both_once_rendered_before_submitting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import operators

    handle = make_handle(resolve("ray/adhoc-cpu", "ci-cpu"),
                         ClusterIdentity.manual("adhoc-cpu", "wd"), backend="fake",
                         endpoints=Endpoints(dashboard="http://127.0.0.1:1"))
    monkeypatch.setattr(operators, "job_target", lambda *_a: (None, handle))
    monkeypatch.setattr(operators.RayJobOperator, "_jobs",
                        lambda *_a: SimpleNamespace(submit_or_attach=_never))
    op = operators.RayJobOperator(task_id="train", cluster=handle.model_dump(mode="json"),
                                  entrypoint="python t.py", deferrable=False,
                                  runtime_env={"working_dir": CODE})
    op.working_dir = "/src"  # as a template or an XComArg renders it
    context = {"ti": SimpleNamespace(xcom_push=_never, try_number=1, task_id="train",
                                     map_index=-1)}
    with pytest.raises(AirflowFailException, match="task train: " + BOTH):
        op.execute(context)


def test_one_of_them_passes() -> None:
    from ephemeral.airflow.operators import RayJobOperator

    RayJobOperator(task_id="a", cluster={}, entrypoint="x", working_dir="/src")
    RayJobOperator(task_id="b", cluster={}, entrypoint="x", runtime_env={"working_dir": CODE})
    RayJobOperator(task_id="c", cluster={}, entrypoint="x", working_dir="/src",
                   runtime_env={"pip": ["numpy"]})
