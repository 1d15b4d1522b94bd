"""ephemeral.adhoc beyond refusals (those are in the bad input corpus): what it accepts, how a
deployment raises its caps, and the timeout-within-TTL check the operator and CLI share; and
each archive ending pip reads as a local file, too many for the corpus."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ephemeral.adhoc import (
    RequestError,
    check_pip,
    check_timeout_within_ttl,
    pip_allow_list,
    validate_request,
)
from ephemeral.backends.base import Endpoints, make_handle
from ephemeral.errors import SpecError
from ephemeral.settings import get_settings
from ephemeral.specs import ClusterIdentity, resolve

FORM = {"cluster_spec": "ray/adhoc-cpu", "profile": None, "workers": 2, "gpus_per_worker": None,
        "entrypoint": "python hello_ray.py", "pip": None, "timeout_minutes": 60}


def test_a_plain_request_resolves_to_what_the_tasks_need() -> None:
    req = validate_request(FORM | {"pip": ["pandas[pyarrow]>=2,<3", "Torch==2.13.0"],
                                   "entrypoint": "python train_ddp.py --data-uri 'a b'"})
    assert req["spec"] == "ray/adhoc-cpu@1"
    assert req["overrides"] == {"workers": {"replicas": 2}}
    assert req["runtime_env"] == {"pip": ["pandas[pyarrow]>=2,<3", "Torch==2.13.0"]}
    assert req["entrypoint"] == "python train_ddp.py --data-uri 'a b'"
    assert req["working_dir"] == str(get_settings().jobs_dir)
    assert (req["timeout_s"], req["profile"]) == (3600, None)
    assert req["spec_hash"] == resolve("ray/adhoc-cpu", None, req["overrides"]).hash


@pytest.mark.parametrize("profile", [None, "None", "none", ""])
def test_a_null_profile_in_any_spelling_is_no_profile(profile: Any) -> None:
    assert validate_request(FORM | {"profile": profile})["profile"] is None


def test_ci_cpu_with_zero_or_no_gpus_is_fine() -> None:
    for gpus in (0, None):
        req = validate_request(FORM | {"cluster_spec": "ray/train-gpu", "profile": "ci-cpu",
                                       "gpus_per_worker": gpus})
        assert req["profile"] == "ci-cpu"


def test_the_deployment_raises_the_worker_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RequestError, match="ask for at most 4"):
        validate_request(FORM | {"workers": 6})
    monkeypatch.setenv("EPHEMERAL_ADHOC_MAX_WORKERS", "6")
    req = validate_request(FORM | {"workers": 6})
    # The opt-in travels with the overrides, so the setup's own resolve accepts it too.
    assert req["overrides"] == {"workers": {"replicas": 6}, "raise_max_replicas": True}
    spec = resolve(req["spec"], None, req["overrides"]).spec
    assert spec.worker_groups[0].max_replicas == 6  # type: ignore[union-attr]
    # Within the spec's own maximum, no opt-in is asked for.
    assert "raise_max_replicas" not in validate_request(FORM | {"workers": 4})["overrides"]


def test_the_deployment_raises_the_gpu_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_ADHOC_MAX_GPUS", "2")
    req = validate_request(FORM | {"cluster_spec": "ray/train-gpu", "gpus_per_worker": 2})
    assert req["overrides"]["workers"]["gpus"] == 2
    with pytest.raises(RequestError, match="ask for at most 2"):
        validate_request(FORM | {"cluster_spec": "ray/train-gpu", "gpus_per_worker": 3})


def test_a_bad_cap_setting_is_refused_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_ADHOC_MAX_WORKERS", "lots")
    assert get_settings().home  # what a teardown or the reaper needs still loads
    with pytest.raises(SpecError, match="EPHEMERAL_ADHOC_MAX_WORKERS"):
        validate_request(FORM)  # the form that uses it fails, naming it


def test_the_pip_allow_list_from_a_setting_or_a_file(tmp_path: Path) -> None:
    assert pip_allow_list(None) is None
    assert pip_allow_list("NumPy, pandas ,scikit_learn") == {"numpy", "pandas", "scikit-learn"}
    listed = tmp_path / "allowed.txt"
    listed.write_text("# data stack\nnumpy\npandas  # frames\n\nScikit.Learn\n")
    allow = pip_allow_list(str(listed))
    assert allow == {"numpy", "pandas", "scikit-learn"}
    assert check_pip(["scikit_learn>=1.5", "numpy"], allow) == ["scikit_learn>=1.5", "numpy"]
    with pytest.raises(RequestError, match="cannot read the allow-list file"):
        pip_allow_list(str(tmp_path / "missing.txt"))


def test_the_allow_list_setting_reaches_the_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPHEMERAL_PIP_ALLOW", "numpy")
    assert validate_request(FORM | {"pip": ["numpy>=2"]})["runtime_env"] == {"pip": ["numpy>=2"]}
    with pytest.raises(RequestError) as err:
        validate_request(FORM | {"pip": ["numpy", "pandas"]})
    assert err.value.fields == ["pip[1]"]


def test_every_refused_pip_entry_is_named_at_once() -> None:
    with pytest.raises(RequestError) as err:
        check_pip(["numpy", "-e .", "pandas", "x @ https://e.example/x.whl"])
    assert err.value.fields == ["pip[1]", "pip[3]"]


@pytest.mark.parametrize(("entry", "ext"), [
    ("evil.whl[x]", ".whl"),            # pip drops the extras, then reads the rest as a path
    ("evil-1.0-py3-none-any.whl[a,b]", ".whl"),
    ("foo.tar", ".tar"), ("foo.tbz", ".tbz"), ("foo.txz", ".txz"), ("foo.tlz", ".tlz"),
    ("pkg.tar.gz[dev]", ".tar.gz"), ("pkg.zip[x]", ".zip"), ("PKG.TAR.LZMA", ".tar.lzma"),
    ("pkg.whl; os_name == 'posix'", ".whl"),  # and the marker
    ("evil.whl>=1", ".whl"), ("foo.whl [x]", ".whl"),  # no project is named like a file
])
def test_an_entry_pip_would_install_from_a_local_file_is_refused(entry: str, ext: str) -> None:
    with pytest.raises(RequestError) as err:
        check_pip(["numpy", entry])
    assert err.value.fields == ["pip[1]"]
    assert (f"pip[1]: {entry!r} is a path or an archive: pip reads a name ending in {ext} as a "
            "local file to install, not a package of the index; write a plain requirement") \
        in str(err.value)


@pytest.mark.parametrize("entry", ["backports.tarfile", "zipp>=3", "jaraco.zipfile",
                                   "wheel", "tarsafe[x]==0.0.5", "zc.lockfile"])
def test_a_package_whose_name_only_contains_an_archive_word_passes(entry: str) -> None:
    assert check_pip([entry]) == [entry]


def handle(created: datetime) -> Any:
    """A handle of ray/adhoc-cpu (lifetime.ttl 2h) created at ``created``."""
    spec = resolve("ray/adhoc-cpu")
    return make_handle(spec, ClusterIdentity.manual(spec.spec.name, "eph-ttl-test"),
                       backend="fake", endpoints=Endpoints(), created=created)


def test_a_timeout_within_the_remaining_ttl_is_fine() -> None:
    created = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    h = handle(created)
    now = created + timedelta(minutes=30)
    assert check_timeout_within_ttl(h, 90 * 60, now=now) == 90 * 60
    assert check_timeout_within_ttl(h.model_dump(mode="json"), None, now=now) == 90 * 60


def test_a_timeout_beyond_the_remaining_ttl_names_both_numbers() -> None:
    created = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    h = handle(created)
    with pytest.raises(RequestError) as err:
        check_timeout_within_ttl(h, 91 * 60, now=created + timedelta(minutes=30),
                                 field="job_timeout")
    assert err.value.fields == ["job_timeout"]
    text = str(err.value)
    assert "the job timeout 5460 s (1h31m) is longer than the 5400 s (1h30m) left" in text
    assert "lifetime.ttl 7200 s (2h00m), expires 2026-01-01T14:00:00Z" in text


@pytest.mark.parametrize("timeout_s", [None, 30, 3600])
def test_a_cluster_at_or_near_its_expiry_takes_no_job_whatever_its_timeout(
        timeout_s: float | None) -> None:
    """The reaper deletes it at its expiry whatever runs on it: no timeout does not mean the
    job may run past it, and with nothing left, shortening the timeout cannot help."""
    from ephemeral.adhoc import EXPIRY_MARGIN

    created = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    h = handle(created)
    for left, shown in ((-300, "0 s"), (0, "0 s"), (EXPIRY_MARGIN, "60 s (1 min)")):
        with pytest.raises(RequestError) as err:
            check_timeout_within_ttl(h, timeout_s, now=created + timedelta(
                hours=2, seconds=-left), late="Make a new one.")
        assert err.value.fields == ["cluster"]
        text = str(err.value)
        assert f"{shown} left of cluster eph-ttl-test's lifetime" in text
        assert "Make a new one." in text
        assert "shorten the timeout" not in text
    assert check_timeout_within_ttl(h, None, now=created + timedelta(
        hours=2, seconds=-EXPIRY_MARGIN - 1)) == EXPIRY_MARGIN + 1
