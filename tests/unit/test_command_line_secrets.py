"""No secret in the words of a job's command line, by the rule a job's own environment follows
(``ephemeral.jobs.command_secrets``): a Ray job's entrypoint (``ephemeral submit``, the form,
``RayJobOperator``, ``RayJobs.submit``) and a Spark application's arguments (``ephemeral
spark-submit``, ``EphemeralSparkSubmitOperator``). A refusal comes before anything is looked
up, names the field and the word's index, shows no secret and says where a secret goes.

And a whole command quoted as the entrypoint's one word (``submit c -- "python -c ..."``), or
whitespace the shell does not split at (U+00A0), which the cluster's shell would fail on after
submission, is refused before it.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeral.adhoc import RequestError, validate_request
from ephemeral.errors import JobSubmissionFailed
from ephemeral.jobs.command_secrets import character_name, masked_command, secret_words
from ephemeral.jobs.runtime_env import entrypoint_problem

GH = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
AWS = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
PW = "hunter2-Pw"
FORM = {"cluster_spec": "ray/adhoc-cpu", "profile": None, "workers": 2, "gpus_per_worker": None,
        "entrypoint": "python hello_ray.py", "pip": None, "timeout_minutes": 60}


def _never(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("nothing may be looked up or submitted")


def _no_secret(text: str) -> None:
    for secret in (GH, AWS, PW):
        assert secret not in text


@pytest.mark.parametrize(("words", "index"), [
    (["env", f"GH={GH}", "python", "t.py"], 1),  # a value by its shape
    (["env", f"AWS_SECRET_ACCESS_KEY={AWS}", "python", "t.py"], 1),  # by its name
    (["python", "t.py", "--token", GH], 3),
    (["python", "t.py", "--password", PW], 3),
    (["python", "t.py", "--api-key", PW], 3),
    (["python", "t.py", "--secret", PW], 3),
    (["python", "t.py", "-token", PW], 3),
    (["python", "t.py", f"--api-key={PW}"], 2),
    (["python", "t.py", f"db.password={PW}"], 2),  # a Hydra-style override
    (["python", "t.py", f"spark.hadoop.fs.s3a.secret.key={AWS}"], 2),
    (["python", "t.py", GH], 2),  # a token alone
    (["python", "t.py", "--auth", "AKIAIOSFODNN7EXAMPLE"], 3),
    (["bash", "-c", f"python t.py --token {PW} && echo done"], 2),  # a command in a word
    # An HTTP header's credential, whatever its shape: after its scheme, or bare.
    (["curl", "-H", f"Authorization: Bearer {PW}", "https://h/x"], 2),
    (["curl", "-H", f"authorization: basic {PW}", "https://h/x"], 2),
    (["curl", "-H", f"Authorization: {PW}", "https://h/x"], 2),
    (["wget", f"--header=Proxy-Authorization: Basic {PW}", "https://h/x"], 1),
    (["curl", "-H", f"X-Api-Key: {PW}", "https://h/x"], 2),
    (["curl", "-H", f"PRIVATE-TOKEN: {PW}", "https://h/x"], 2),
    (["python", "t.py", "--auth", f"Bearer {PW}"], 3),
    (["bash", "-c", f"curl -sH 'Authorization: Bearer {PW}' https://h/x | python t.py"], 2),
])
def test_a_secret_in_any_word_is_found_by_its_index(words: list[str], index: int) -> None:
    assert [i for i, _, _ in secret_words(words)] == [index]
    problem = entrypoint_problem(shlex.join(words))
    assert problem is not None
    assert problem.startswith(f"word {index} ")
    assert "secretKeyRef" in problem  # where a secret goes instead
    _no_secret(problem)


@pytest.mark.parametrize("words", [
    ["python", "t.py", "--commit", "3f2a9c0d1e2b3a4c5d6e7f8091a2b3c4d5e6f708"],  # a hash
    ["python", "t.py", "--image", "repo/x@sha256:" + "a" * 64],
    ["python", "t.py", "--token", "$HF_TOKEN"],  # a reference: the secret stays in the env
    ["python", "t.py", "--token=${HF_TOKEN}"],
    ["python", "t.py", "--token-file", "/run/secrets/hf", "--password-file", "/p"],
    ["python", "t.py", "--token", "/run/secrets/hf"],  # where it is, not what
    ["python", "t.py", "--pad-token", "[PAD]", "--eos-token", "</s>"],
    ["python", "t.py", "--max-new-tokens", "20", "--tokenizer", "bert-base"],
    ["python", "t.py", "--secret-name", "db", "--use-token", "true"],
    ["python", "t.py", "--data-uri", "s3://bucket/x.parquet", "--input=gs://b/y"],
    ["env", "HF_HUB_DISABLE_IMPLICIT_TOKEN=1", "TOKEN_URL=https://h/t", "python", "t.py"],
    ["python", "t.py", "--password"],  # an option that asks for it: no value given
    ["python", "t.py", "--token", "--verbose"],
    ["curl", "-H", "Authorization: Bearer $HF_TOKEN", "https://h/x"],  # from the environment
    ["curl", "-H", "Authorization: Bearer ${HF_TOKEN}", "-H", "Accept: text/plain", "https://h/x"],
    ["curl", "-H", "Content-Type: application/json", "https://h/x"],  # no credential's header
    ["python", "t.py", "--note", "status: done", "--mode", "bearer-free"],
])
def test_ordinary_arguments_pass(words: list[str]) -> None:
    assert secret_words(words) == []
    assert entrypoint_problem(shlex.join(words), one_line=True) is None


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize(("words", "named"), [
    (["env", f"GH={GH}", f"AWS_SECRET_ACCESS_KEY={AWS}", "python", "-c", "print('ran')"],
     "word 1 'GH=***'"),
    (["python", "t.py", "--token", PW], "word 3 '***'"),
])
def test_cli_submit_refuses_a_secret_in_the_command_before_looking_anything_up(
        monkeypatch: pytest.MonkeyPatch, as_json: bool, words: list[str], named: str) -> None:
    from typer.testing import CliRunner

    from ephemeral.cli import main
    from ephemeral.jobs import ray_jobs

    monkeypatch.setattr(main, "_cluster", _never)
    monkeypatch.setattr(ray_jobs, "ray_jobs_for", _never)
    out = CliRunner().invoke(main.app, ["submit", "c", *(["--json"] if as_json else []),
                                        "--", *words])
    assert out.exit_code == 2, out.output
    text = json.loads(out.stdout)["message"] if as_json else " ".join(out.output.split())
    assert f"entrypoint: {named}" in text
    _no_secret(text)


@pytest.mark.parametrize(("args", "named"), [
    (["--", "--token", GH], "args[1]: '***'"),
    (["--", f"AWS_SECRET_ACCESS_KEY={AWS}"], "args[0]: 'AWS_SECRET_ACCESS_KEY=***'"),
])
def test_cli_spark_submit_refuses_a_secret_argument(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path, args: list[str],
                                                    named: str) -> None:
    from typer.testing import CliRunner

    from ephemeral.cli import main

    monkeypatch.setattr(main, "_cluster", _never)
    app = tmp_path / "ok.py"
    app.write_text("print(1)\n")
    out = CliRunner().invoke(main.app, ["spark-submit", "c", str(app), *args])
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert f"ephemeral spark-submit: {named}" in text
    _no_secret(text)


def test_the_form_refuses_a_secret_in_its_entrypoint() -> None:
    with pytest.raises(RequestError) as exc:
        validate_request(FORM | {"entrypoint": f"python hello_ray.py --token {GH}"})
    assert exc.value.fields == ["entrypoint"]
    assert "word 3" in str(exc.value)
    _no_secret(str(exc.value))


def test_ray_jobs_submit_refuses_without_showing_the_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.jobs.ray_jobs import RayJobs

    monkeypatch.setattr(RayJobs, "client", property(_never))
    with pytest.raises(JobSubmissionFailed, match="word 3") as exc:
        RayJobs("http://127.0.0.1:1", cluster="c").submit(f"python t.py --password {PW}")
    assert "--password ***" in str(exc.value)  # the job's label: its command, masked
    _no_secret(str(exc.value))


def test_the_ray_operators_argv_is_refused_before_submitting_or_logging(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import operators
    from ephemeral.backends.base import Endpoints, make_handle
    from ephemeral.specs import ClusterIdentity, resolve

    handle = make_handle(resolve("ray/adhoc-cpu", "ci-cpu"),
                         ClusterIdentity.manual("adhoc-cpu", "secrets"), backend="fake",
                         endpoints=Endpoints(dashboard="http://127.0.0.1:1"))
    monkeypatch.setattr(operators, "job_target", lambda *_a: (None, handle))
    monkeypatch.setattr(operators.RayJobOperator, "_jobs",
                        lambda *_a: SimpleNamespace(submit_or_attach=_never))
    op = operators.RayJobOperator(task_id="run_job", cluster=handle.model_dump(mode="json"),
                                  backend="fake", deferrable=False,
                                  entrypoint=["python", "t.py", "--api-key", PW])
    context = {"ti": SimpleNamespace(xcom_push=_never, try_number=1, task_id="run_job",
                                     map_index=-1)}
    with caplog.at_level(logging.INFO), pytest.raises(AirflowFailException) as exc:
        op.execute(context)
    assert "task run_job: entrypoint: word 3 '***'" in str(exc.value)
    _no_secret(str(exc.value) + caplog.text)


def test_the_spark_operators_arguments_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow import spark_submit as module
    from ephemeral.airflow.spark_submit import EphemeralSparkSubmitOperator

    monkeypatch.setattr(module, "pointer", _never)
    monkeypatch.setattr(module, "job_target", _never)
    op = EphemeralSparkSubmitOperator(task_id="etl", cluster={}, application="app.py",
                                      application_args=["--run", "r1", "--token", GH])
    with pytest.raises(AirflowFailException) as exc:
        op.execute({"ti": None})
    assert "task etl: application_args[3]: '***'" in str(exc.value)
    _no_secret(str(exc.value))


# -- a whole command quoted as one word ----------------------------------------------------------

def test_cli_submit_refuses_a_command_quoted_as_one_word(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from ephemeral.cli import main
    from ephemeral.jobs import ray_jobs

    monkeypatch.setattr(main, "_cluster", _never)
    monkeypatch.setattr(ray_jobs, "ray_jobs_for", _never)
    out = CliRunner().invoke(main.app, ["submit", "c", "--", "python -c 'print(1)'"])
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert "entrypoint: its one word" in text
    assert "give the words separately, without quoting the whole command" in text


def test_the_operators_argv_of_one_quoted_command_is_refused_too() -> None:
    from ephemeral.jobs.runtime_env import command_line

    assert entrypoint_problem(command_line(["python -c 'print(1)'"])) is not None
    assert entrypoint_problem(command_line(["python", "-c", "print(1)"])) is None
    assert entrypoint_problem("python -c 'print(1)'") is None  # a string is a command line


def test_a_file_whose_name_has_a_space_is_one_word(tmp_path: Path) -> None:
    script = tmp_path / "my job.sh"
    script.write_text("#!/bin/sh\n")
    assert entrypoint_problem(shlex.join([str(script)])) is None
    assert entrypoint_problem(shlex.join(["python"])) is None


# -- whitespace the shell does not split at ------------------------------------------------------

ODD_SPACES = ["\u00a0", "\u2009", "\u202f", "\u3000", "\x0b", "\x85"]


@pytest.mark.parametrize("space", ODD_SPACES)
def test_a_space_the_shell_keeps_in_a_word_ends_the_search(space: str) -> None:
    # shlex gives such a word back whole: splitting it again and again was a RecursionError.
    assert secret_words(["python", "t.py", f"--name{space}x"]) == []
    assert secret_words(["bash", "-c", f"python{space}t.py --name x"]) == []
    assert masked_command(f"python t.py --name{space}x") == f"python t.py --name{space}x"
    # The words around it are still judged.
    assert [i for i, _, _ in secret_words(["bash", "-c", f"python{space}t.py --token {PW}"])] \
        == [2]


def test_a_command_nested_in_words_is_judged_to_a_bounded_depth() -> None:
    command = f"python t.py --token {PW}"
    for _ in range(5):
        command = shlex.join(["sh", "-c", command])
    assert [i for i, _, _ in secret_words(shlex.split(command))] == [2]
    for _ in range(4):  # past the depth judged: no error, whatever it holds
        command = shlex.join(["sh", "-c", command])
    secret_words(shlex.split(command))


@pytest.mark.parametrize("space", ODD_SPACES)
@pytest.mark.parametrize("where", ["python{}t.py --steps 5", "python t.py --name 'a{}b'"])
def test_an_entrypoint_with_such_a_space_is_refused_naming_it(space: str, where: str) -> None:
    problem = entrypoint_problem(where.format(space), one_line=True)
    assert problem is not None
    assert f"contains {character_name(space)} (character " in problem
    assert "Replace it with an ordinary space" in problem


def test_the_form_names_the_no_break_space_and_the_fix() -> None:
    with pytest.raises(RequestError) as exc:
        validate_request(FORM | {"entrypoint": "python\u00a0hello_ray.py"})
    assert exc.value.fields == ["entrypoint"]
    assert "contains U+00A0 NO-BREAK SPACE (character 7)" in str(exc.value)


def test_a_secret_beside_such_a_space_is_refused_as_a_secret_first() -> None:
    problem = entrypoint_problem(f"bash -c 'python\u00a0t.py --token {PW}'")
    assert problem is not None
    assert problem.startswith("word 2 ")
    _no_secret(problem)


def test_a_spark_argument_with_such_a_space_is_judged_without_end() -> None:
    from ephemeral.jobs.spark_jobs import check_submit_input

    check_submit_input("spark-submit", None, args=["--title", "Caf\u00e9\u00a0Paris", "a b\u00a0c"])
