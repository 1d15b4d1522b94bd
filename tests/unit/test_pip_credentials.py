"""One rule for credentials in pip entries: spec, job runtime_env and the ad-hoc form refuse an
entry whose URL holds user-info, naming the entry's index, without echoing the secret."""

from __future__ import annotations

import pytest

from ephemeral.adhoc import RequestError, check_pip
from ephemeral.specs.pip_credentials import credentials_problem, masked

SECRET = "internal-lib @ https://deploy:glpat-SECRET123@git.example.com/g/lib.whl"


@pytest.mark.parametrize("entry", [
    SECRET,
    "lib @ git+https://glpat-SECRET123@git.example.com/g/lib.git@v1",
    "lib @ https://u:p@ss-SECRET123@h/lib.whl",
    "git+ssh://deploy:SECRET123@git.example.com/g/lib.git",
    "lib @ s3://AKIAKEY:SECRET123/with/slash@bucket/lib.whl",
])
def test_user_info_in_a_url_is_refused_and_masked(entry: str) -> None:
    problem = credentials_problem(entry)
    assert problem is not None
    assert "SECRET123" not in problem
    assert "***@" in problem
    assert "package index" in problem


@pytest.mark.parametrize("entry", [
    "pandas>=2", "lib @ https://h/lib.whl", "lib @ git+https://git.example.com/g/lib.git@v1.0",
    "lib @ https://h/path/with@sign.whl", "lib @ https://h:8080/p/@scope/lib.whl",
])
def test_no_user_info_is_no_problem(entry: str) -> None:
    assert credentials_problem(entry) is None
    assert masked(entry) == entry


@pytest.mark.parametrize("entry", [
    "mypkg @ git+ssh://git@github.com/org/mypkg.git@v1", "lib @ ssh://deploy@git.example.com/lib"])
def test_an_ssh_urls_bare_user_name_is_no_secret(entry: str) -> None:
    """Valid PEP 508, and its key is not in the URL: refusing it broke specs that worked."""
    assert credentials_problem(entry) is None


def test_the_adhoc_form_names_the_entry_and_does_not_echo_the_secret() -> None:
    with pytest.raises(RequestError) as err:
        check_pip(["six", SECRET])
    assert err.value.fields == ["pip[1]"]
    assert "SECRET123" not in str(err.value)
    assert "credentials in its URL" in str(err.value)


@pytest.mark.parametrize("entry", [
    "lib @ https://h/lib.whl?X-Amz-Signature=SECRET123&X-Amz-Date=1",
    "https://blob.example.com/x.parquet?sv=1&sig=SECRET123",
    "--data-uri=https://h/x?token=SECRET123",
])
def test_a_signed_urls_secret_parameter_is_refused_and_masked(entry: str) -> None:
    """A signed URL's token is a credential as user-info is (one rule for both)."""
    problem = credentials_problem(entry)
    assert problem is not None
    assert "signed URL" in problem
    assert "SECRET123" not in problem


@pytest.mark.parametrize("entry", [
    "lib @ https://h/lib.whl#sha256=abc", "https://h/x?region=eu&page=2",
    "a;token=x",  # no URL: a parameter is judged only in one
    "https://h/x?token=",  # no value
])
def test_parameters_that_hold_no_secret_are_no_problem(entry: str) -> None:
    assert credentials_problem(entry) is None
