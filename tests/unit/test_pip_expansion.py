"""A pip entry may not refer to an environment variable, and the form refuses ``===``.

Ray writes a job's pip list to a requirements file on each node and pip expands ``${NAME}`` in it
from the node's environment, which holds the cluster's secrets: ``pandas===${TOKEN}`` would put
the token into pip's output, Ray's logs and the job's info (``ephemeral.specs.pip_credentials``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ephemeral.adhoc import RequestError, check_pip
from ephemeral.specs.pip_credentials import (
    credentials_problem,
    env_reference_problem,
    pip_entry_problem,
)

REFERENCES = [
    "pandas===${RAY_AUTH_TOKEN}",
    "pandas==${PIP_EXTRA_INDEX_URL}",
    "six>=1,<${X}",
    "pkg @ https://files.example/${TOKEN}/pkg-1.0-py3-none-any.whl",
    "pandas[${EXTRA}]",
    "pandas===$TOKEN",  # not expanded by pip, but by a shell: no requirement needs a '$'
    "pandas===${lower_case}",  # pip leaves it, uv and others may not
]


def test_pip_expands_braced_variables_in_a_requirements_file(tmp_path: Path) -> None:
    """What the rule is for, checked against pip itself (offline: --no-index, nothing found):
    ``${NAME}`` is replaced by the value from the environment, ``$NAME`` is not."""
    (tmp_path / "req.txt").write_text("six===${EPHEMERAL_TEST_SECRET}\n")
    (tmp_path / "bare.txt").write_text("six===$EPHEMERAL_TEST_SECRET\n")
    env = {**os.environ, "EPHEMERAL_TEST_SECRET": "s3cr3t-t0ken", "PIP_CONFIG_FILE": os.devnull,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    out = {}
    for name in ("req.txt", "bare.txt"):
        run = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links",
             str(tmp_path), "-r", str(tmp_path / name)],
            capture_output=True, text=True, env=env, timeout=120, check=False)
        if "No module named pip" in run.stderr:
            pytest.skip("pip is not installed in this environment")
        out[name] = run.stdout + run.stderr
    assert "six===s3cr3t-t0ken" in out["req.txt"], out["req.txt"]
    assert "six===$EPHEMERAL_TEST_SECRET" in out["bare.txt"], out["bare.txt"]


@pytest.mark.parametrize("entry", REFERENCES)
def test_the_shared_pip_rule_refuses_an_environment_variable_reference(entry: str) -> None:
    problem = pip_entry_problem(entry)
    assert problem is not None
    assert "refers to an environment variable" in problem
    assert "write the requirement literally" in problem
    assert env_reference_problem(entry) == problem


@pytest.mark.parametrize("entry", REFERENCES)
def test_the_form_refuses_an_environment_variable_reference_by_entry(entry: str) -> None:
    with pytest.raises(RequestError) as err:
        check_pip(["numpy", entry])
    assert err.value.fields == ["pip[1]"]
    assert "refers to an environment variable" in str(err.value)


def test_credentials_in_a_url_are_still_masked_first() -> None:
    entry = "pkg @ https://user:hunter2@host/${X}/pkg.whl"
    problem = pip_entry_problem(entry)
    assert problem == credentials_problem(entry)
    assert "hunter2" not in str(problem)


def test_the_env_rule_is_for_pip_entries_only() -> None:
    # credentials_problem also judges spec env values and Spark conf, where ${...} may be meant.
    assert credentials_problem("${SPARK_HOME}/conf/log4j2.properties") is None


@pytest.mark.parametrize("entry", ["pandas>=2,<3", "torch==2.13.0", "scikit-learn[alldeps]~=1.5",
                                   "pkg @ https://files.example/pkg-1.0-py3-none-any.whl"])
def test_plain_entries_have_no_env_problem(entry: str) -> None:
    assert pip_entry_problem(entry) is None


@pytest.mark.parametrize("entry", ["pandas===2.2.3", "pandas === 2.2.3", "six===anything-at-all"])
def test_the_form_refuses_arbitrary_equality(entry: str) -> None:
    with pytest.raises(RequestError) as err:
        check_pip([entry])
    assert err.value.fields == ["pip[0]"]
    assert "uses '===' (arbitrary equality" in str(err.value)
    assert "use '==' with a version" in str(err.value)
    assert check_pip(["pandas==2.2.3"]) == ["pandas==2.2.3"]


# The spec's runtimeEnv.pip and a job's runtime_env pip/uv follow the same rule.
def test_a_spec_pip_entry_with_a_reference_is_refused() -> None:
    from ephemeral.specs.models import _requirement

    with pytest.raises(ValueError, match="refers to an environment variable"):
        _requirement("pandas===${RAY_AUTH_TOKEN}")


def test_a_jobs_runtime_env_pip_entry_with_a_reference_is_refused() -> None:
    from ephemeral.errors import JobSubmissionFailed
    from ephemeral.jobs.runtime_env import merge_runtime_env

    with pytest.raises(JobSubmissionFailed, match="refers to an environment variable"):
        merge_runtime_env({}, {"uv": ["pandas===${RAY_AUTH_TOKEN}"]})
