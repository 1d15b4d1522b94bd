"""A Ray job's own input holds no secret, by the rules a spec follows, whichever way it comes
(the ad-hoc form, ``ephemeral submit``, ``RayJobOperator``, the Python API's ``RayJobs.submit``):

- no credentials (user-info, a signed URL's secret parameter) in a URI of its runtime_env
  (``working_dir``, ``py_modules``, a conda or pip file, ...) or in its entrypoint: both are
  stored in Ray's job info, and the entrypoint reaches XCom, the task log and rendered fields;
- its own ``env_vars`` follow the spec's name and secret rules (``env_name_problem``,
  ``literal_secret``: ``AWS_SECRET_ACCESS_KEY=...`` goes through a Secret, not the job);
- a form's or the CLI's command has no control character and (the form's) no shell operator,
  which fail only on the cluster, after it was made.

Each refusal names the field and does not show the secret.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.adhoc import RequestError, validate_request
from ephemeral.backends.base import ClusterHandle, Endpoints, make_handle
from ephemeral.errors import JobSubmissionFailed
from ephemeral.jobs.runtime_env import check_job_env, check_submitted, merge_runtime_env
from ephemeral.specs import ClusterIdentity, resolve

PW = "s3cr3tPW"
FORM = {"cluster_spec": "ray/adhoc-cpu", "profile": None, "workers": 2, "gpus_per_worker": None,
        "entrypoint": "python hello_ray.py", "pip": None, "timeout_minutes": 60}
WITH_CREDENTIALS = [f"https://alice:{PW}@data.example/x.parquet",
                    f"s3://AKIAX:{PW}@bucket/x.parquet",
                    f"https://data.example/x.parquet?X-Amz-Credential=a&X-Amz-Signature={PW}",
                    f"https://acct.blob.core.windows.net/c/x?sv=1&sig={PW}"]


def _handle() -> ClusterHandle:
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    return make_handle(spec, ClusterIdentity.manual("adhoc-cpu", "secrets"), backend="fake",
                       endpoints=Endpoints(dashboard="http://127.0.0.1:1"))


def _never(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("nothing may be looked up or submitted")


# -- finding 4: URIs of the runtime_env --------------------------------------------------------

@pytest.mark.parametrize(("env", "field"), [
    ({"working_dir": "https://user:{pw}@github.com/org/repo/archive/main.zip"},
     "runtime_env.working_dir"),
    ({"py_modules": ["./mine", "s3://AKIAX:{pw}@bucket/mods.zip"]}, "runtime_env.py_modules[1]"),
    ({"conda": "https://h/env.yaml?token={pw}"}, "runtime_env.conda"),
    ({"conda": {"dependencies": [{"pip": ["https://u:{pw}@h/x.whl"]}]}},
     "runtime_env.conda.dependencies[0].pip[0]"),
    ({"pip": "https://h/requirements.txt?sig={pw}"}, "runtime_env.pip"),
    ({"java_jars": ["https://u:{pw}@maven.example/x.jar"]}, "runtime_env.java_jars[0]"),
])
def test_a_uri_with_credentials_anywhere_in_the_runtime_env_is_refused(
        env: dict[str, Any], field: str) -> None:
    env = json.loads(json.dumps(env).replace("{pw}", PW))
    for check in (lambda: check_submitted(env, "job"), lambda: merge_runtime_env({}, env)):
        with pytest.raises(JobSubmissionFailed) as exc:
            check()
        assert f"{field}: " in str(exc.value)
        assert "credentials" in str(exc.value)
        assert PW not in str(exc.value)


def test_uris_without_credentials_pass() -> None:
    env = {"working_dir": "https://github.com/org/repo/archive/main.zip",
           "py_modules": ["s3://bucket/mods.zip"], "conda": {"dependencies": ["python=3.11"]},
           "config": {"setup_timeout_seconds": 600}}
    assert merge_runtime_env({}, env) == env


def test_ray_jobs_submit_refuses_before_anything_is_uploaded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.jobs.ray_jobs import RayJobs

    monkeypatch.setattr(RayJobs, "client", property(_never))
    jobs = RayJobs("http://127.0.0.1:1", cluster="c")
    with pytest.raises(JobSubmissionFailed, match="working_dir") as exc:
        jobs.submit("python t.py", working_dir=WITH_CREDENTIALS[1])
    assert PW not in str(exc.value)
    with pytest.raises(JobSubmissionFailed, match="entrypoint") as exc:
        jobs.submit(f"python t.py --data-uri {WITH_CREDENTIALS[0]}")
    assert PW not in str(exc.value)


# -- finding 5: the entrypoint -----------------------------------------------------------------

@pytest.mark.parametrize("uri", WITH_CREDENTIALS)
def test_the_forms_entrypoint_with_credentials_is_refused_masked(uri: str) -> None:
    with pytest.raises(RequestError) as exc:
        validate_request(FORM | {"entrypoint": f"python train_ddp.py --data-uri {uri} --steps 5"})
    assert exc.value.fields == ["entrypoint"]
    assert "credentials" in str(exc.value)
    assert "secretKeyRef" in str(exc.value)  # the way to give a job a secret
    assert PW not in str(exc.value)


@pytest.mark.parametrize("entrypoint", ["python hello_ray.py \u0000",
                                        "python hello_ray.py\r\n--steps 5",
                                        "python hello_ray.py \x1b[2J"])
def test_the_forms_entrypoint_with_a_control_character_is_refused(entrypoint: str) -> None:
    with pytest.raises(RequestError, match="control character") as exc:
        validate_request(FORM | {"entrypoint": entrypoint})
    assert exc.value.fields == ["entrypoint"]


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("words", [["python", "train_ddp.py", "--data-uri", WITH_CREDENTIALS[0]],
                                   ["python", "t.py", f"--uri={WITH_CREDENTIALS[3]}"],
                                   ["python", "t.py", "a\u0000b"]])
def test_cli_submit_refuses_such_an_entrypoint_before_looking_anything_up(
        monkeypatch: pytest.MonkeyPatch, as_json: bool, words: list[str]) -> None:
    from typer.testing import CliRunner

    from ephemeral.cli import main
    from ephemeral.jobs import ray_jobs

    monkeypatch.setattr(main, "_cluster", _never)
    monkeypatch.setattr(ray_jobs, "ray_jobs_for", _never)
    out = CliRunner().invoke(main.app, ["submit", "my-ray", *(["--json"] if as_json else []),
                                        "--", *words])
    assert out.exit_code == 2, out.output
    text = json.loads(out.stdout)["message"] if as_json else out.output
    assert "entrypoint" in text
    assert PW not in text


def test_the_operator_refuses_before_submitting_or_logging(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import operators

    handle = _handle()
    monkeypatch.setattr(operators, "job_target", lambda *_a: (None, handle))
    monkeypatch.setattr(operators.RayJobOperator, "_jobs",
                        lambda *_a: SimpleNamespace(submit_or_attach=_never))
    context = {"ti": SimpleNamespace(xcom_push=_never, try_number=1, task_id="run_job",
                                     map_index=-1)}
    for kwargs in ({"entrypoint": f"python t.py --data-uri {WITH_CREDENTIALS[0]}"},
                   {"entrypoint": "python t.py", "working_dir": WITH_CREDENTIALS[1]}):
        op = operators.RayJobOperator(task_id="run_job", cluster=handle.model_dump(mode="json"),
                                      backend="fake", deferrable=False, **kwargs)
        with caplog.at_level(logging.INFO), pytest.raises(AirflowFailException) as exc:
            op.execute(context)
        assert "task run_job" in str(exc.value)
        assert PW not in str(exc.value)
        assert PW not in caplog.text


# -- finding 6: a job's own environment --------------------------------------------------------

@pytest.mark.parametrize(("env", "named"), [
    ({"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG"}, "'AWS_SECRET_ACCESS_KEY'"),
    ({"HF_TOKEN": "hf_abc"}, "'HF_TOKEN'"),
    ({"DATA_URL": WITH_CREDENTIALS[0]}, "'DATA_URL'"),
    ({"BAD NAME": "x"}, "'BAD NAME' is not an environment variable name"),
    ({"1X": "x"}, "'1X' is not an environment variable name"),
    ({"": "x"}, "'' is not an environment variable name"),
])
def test_a_jobs_env_follows_the_specs_name_and_secret_rules(env: dict[str, str],
                                                            named: str) -> None:
    with pytest.raises(JobSubmissionFailed) as exc:
        check_job_env(env, "ephemeral submit", field="--env")
    assert "ephemeral submit: --env" in str(exc.value)
    assert named in str(exc.value)
    for value in env.values():
        assert value == "x" or value not in str(exc.value)


@pytest.mark.parametrize("env", [{"HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}, {"TOKEN_URL": "https://h"},
                                 {"SECRETS_DIR": "/run/secrets"}, {"MY_FLAG": "1"}])
def test_ordinary_variables_and_switches_pass(env: dict[str, str]) -> None:
    check_job_env(env, "the job")


@pytest.mark.parametrize("pair", ["AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "BAD NAME=x",
                                  "1X=x"])
def test_cli_submit_refuses_such_an_env(monkeypatch: pytest.MonkeyPatch, pair: str) -> None:
    from typer.testing import CliRunner

    from ephemeral.cli import main
    from ephemeral.jobs import ray_jobs

    monkeypatch.setattr(main, "_cluster", _never)
    monkeypatch.setattr(ray_jobs, "ray_jobs_for", _never)
    out = CliRunner().invoke(main.app, ["submit", "my-ray", "--env", pair, "--", "python",
                                        "hello_ray.py"])
    assert out.exit_code == 2, out.output  # refused input: nothing ran
    assert "--env" in out.output
    assert "wJalrXUtnFEMI" not in out.output


# -- finding 7: shell syntax in the form's command ---------------------------------------------

@pytest.mark.parametrize("allow_any", [False, True])
@pytest.mark.parametrize(("entrypoint", "operator"), [
    ("python hello_ray.py && echo done", "&&"), ("python hello_ray.py | tee x", "|"),
    ("python hello_ray.py > out.txt", ">"), ("python hello_ray.py 2>&1", "2>&1"),
    ("python hello_ray.py; rm -rf x", "hello_ray.py;"),
    ("python hello_ray.py --tag #1 && rm -rf x", "&&"),  # no comment: shlex.split keeps '#1'
])
def test_shell_syntax_in_the_forms_command_is_refused_saying_why(
        entrypoint: str, operator: str, allow_any: bool) -> None:
    with pytest.raises(RequestError) as exc:
        validate_request(FORM | {"entrypoint": entrypoint}, allow_any_entrypoint=allow_any)
    assert exc.value.fields == ["entrypoint"]
    assert f"{operator} is shell syntax" in str(exc.value)
    assert ("bash -c" in str(exc.value)) == allow_any


@pytest.mark.parametrize("entrypoint", ["bash -c 'python hello_ray.py && echo done'",
                                        "python hello_ray.py --label 'a|b'"])
def test_quoted_operators_are_words_and_pass(entrypoint: str) -> None:
    req = validate_request(FORM | {"entrypoint": entrypoint}, allow_any_entrypoint=True)
    assert req["entrypoint"] == entrypoint


@pytest.mark.parametrize("argument", ["https://h.example/d.parquet?a=1&b=2", "part(1).parquet",
                                      "x;v=2", "'&&'x"])
def test_shell_characters_inside_a_word_are_text(argument: str) -> None:
    """Only a word that is shell syntax is refused: & ; ( ) inside a URL or a file name reach
    the program whole, as they always did."""
    from ephemeral.adhoc import check_entrypoint
    from ephemeral.settings import get_settings

    jobs = get_settings().jobs_dir
    for allow_any in (False, True):
        assert check_entrypoint(f"python hello_ray.py {argument}", jobs, allow_any=allow_any)
