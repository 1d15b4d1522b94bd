"""The job operators' list and dict fields are stored as given (a template, an XComArg, None
render or resolve only at run time) and their rendered types are checked once, at the start of
``execute``: a text where a list or a dict belongs fails the task naming the field."""

from __future__ import annotations

from datetime import datetime

import pytest
from airflow.sdk.exceptions import AirflowFailException

from ephemeral.airflow.operators import RayJobOperator
from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator


def _spark(**kwargs: object) -> EphemeralSparkSubmitOperator:
    return EphemeralSparkSubmitOperator(task_id="s", cluster={}, application="a.py",
                                        **kwargs)  # type: ignore[arg-type]


def test_list_fields_are_stored_as_given_at_parse() -> None:
    from airflow.sdk import DAG, task

    assert _spark(application_args="{{ params.args }}").application_args == "{{ params.args }}"
    assert _spark(application_args=None).application_args is None
    with DAG("d", schedule=None, start_date=datetime(2026, 1, 1)):
        @task
        def args() -> list[str]:
            return ["--x", "1"]

        given = args()
        assert _spark(application_args=given).application_args is given


@pytest.mark.parametrize(("field", "value", "said"), [
    ("application_args", "--x 1", "application_args is a str where a list belongs"),
    ("conf", '{"spark.executor.memory": "1g"}', "conf is a str where a dict belongs"),
    ("conf", ["a"], "conf is a list where a dict belongs"),
    ("env_vars", "A=1", "env_vars is a str where a dict belongs"),
])
def test_a_rendered_field_of_another_type_fails_naming_it(field: str, value: object,
                                                          said: str) -> None:
    with pytest.raises(AirflowFailException, match=said) as err:
        _spark(**{field: value})._check_input()
    assert "render_template_as_native_obj" in str(err.value)


def test_no_application_args_pass() -> None:
    _spark(application_args=None)._check_input()
    _spark(application_args=("--x", 1), conf={"spark.x": "1"})._check_input()


def test_a_ray_jobs_runtime_env_rendered_as_text_fails_naming_it() -> None:
    op = RayJobOperator(task_id="train", cluster={}, entrypoint="python t.py",
                        runtime_env='{"pip": ["pandas"]}')  # type: ignore[arg-type]
    with pytest.raises(AirflowFailException, match="runtime_env is a str where a dict belongs"):
        op.execute({})
