"""The cluster's default Ray runtime environment (its spec's runtimeEnv.pip) merged into every
job's: the job's own entries win."""

from __future__ import annotations

import pytest

from ephemeral.backends.base import Endpoints, make_handle
from ephemeral.errors import JobSubmissionFailed
from ephemeral.jobs.runtime_env import job_runtime_env, merge_pip, merge_runtime_env
from ephemeral.specs import ClusterIdentity, resolve


def test_pip_lists_concatenate_and_the_jobs_version_wins() -> None:
    base = ["numpy==2.0.0", "Torch_Metrics>=1.0", "six"]
    job = ["torch-metrics==1.4", "rich"]
    assert merge_pip(base, job) == ["numpy==2.0.0", "six", "torch-metrics==1.4", "rich"]


def test_extras_markers_and_urls() -> None:
    base = ["pandas[parquet]>=2; python_version>='3.10'", "git+https://example.org/x.git"]
    assert merge_pip(base, ["pandas==2.2.0"]) == ["git+https://example.org/x.git",
                                                   "pandas==2.2.0"]
    # An entry without a project name only replaces itself.
    assert merge_pip(base, ["git+https://example.org/x.git"]) == base


def test_env_vars_merge_with_the_jobs_winning_and_working_dir_is_the_jobs() -> None:
    base = {"pip": ["six"], "env_vars": {"A": "1", "B": "1"}, "working_dir": "/cluster"}
    job = {"env_vars": {"B": "2"}, "working_dir": "/job", "pip": None}
    assert merge_runtime_env(base, job) == {"pip": ["six"], "env_vars": {"A": "1", "B": "2"},
                                           "working_dir": "/job"}
    assert base["env_vars"] == {"A": "1", "B": "1"}  # not modified


def test_rays_dict_form_of_pip() -> None:
    out = merge_runtime_env({"pip": ["six", "rich==13"]},
                            {"pip": {"packages": ["rich==14"], "pip_check": False}})
    assert out["pip"] == {"packages": ["six", "rich==14"], "pip_check": False}


def test_a_requirements_file_cannot_merge_silently() -> None:
    with pytest.raises(JobSubmissionFailed, match=r"runtime_env\.pip must be a list"):
        merge_runtime_env({"pip": ["six"]}, {"pip": "requirements.txt"})
    assert merge_runtime_env({}, {"pip": "requirements.txt"}) == {"pip": "requirements.txt"}


def test_conda_and_a_default_pip_are_an_error_naming_both() -> None:
    with pytest.raises(JobSubmissionFailed, match=r"conda.*\['six'\]"):
        merge_runtime_env({"pip": ["six"]}, {"conda": {"dependencies": ["python=3.11"]}})


def test_a_clusters_handle_gives_every_job_its_pip(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", "file:///tmp/artifacts")
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    body = spec.spec.model_copy(update={"runtime_env": spec.spec.runtime_env.model_copy(
        update={"pip": ["six", "rich>=13"]})})
    spec = spec.__class__(**{**spec.__dict__, "spec": body})
    handle = make_handle(spec, ClusterIdentity.manual("adhoc-cpu", "pip"), backend="fake",
                         endpoints=Endpoints())
    assert handle.job_pip == ["six", "rich>=13"]
    env = job_runtime_env(handle, {"pip": ["rich==14.0.0"],
                                   "env_vars": {"EPHEMERAL_ARTIFACT_ROOT": "file:///mine"}})
    assert env == {"pip": ["six", "rich==14.0.0"],
                   "env_vars": {"EPHEMERAL_ARTIFACT_ROOT": "file:///mine"}}
    assert job_runtime_env(handle, None) == {
        "pip": ["six", "rich>=13"], "env_vars": {"EPHEMERAL_ARTIFACT_ROOT": "file:///tmp/artifacts"}}


def test_a_spark_handle_has_no_job_pip() -> None:
    spec = resolve("spark/etl", "ci-cpu")
    handle = make_handle(spec, ClusterIdentity.manual("etl", "x"), backend="fake",
                         endpoints=Endpoints())
    assert handle.job_pip == []
    assert handle.idle_timeout_s == 1200


def _spec_file(tmp_path, pip: str, lifetime: str = "{ttl: 1h}"):  # type: ignore[no-untyped-def]
    path = tmp_path / "s.yaml"
    path.write_text(f"kind: RayCluster\nname: s\nversion: 1\nimage: x\nrayVersion: '2.60.0'\n"
                    f"workerGroups: [{{name: w, replicas: 1}}]\nruntimeEnv: {{pip: {pip}}}\n"
                    f"lifetime: {lifetime}\n")
    return path


@pytest.mark.parametrize(("pip", "problem"), [
    ('["pandas>=2", "Pandas==2.2"]', "packages listed twice: pandas"),
    ('["--index-url https://x"]', "is not a PEP 508 requirement"),
    ('["numpy>=", "six"]', "is not a PEP 508 requirement"),
])
def test_a_specs_pip_entries_are_checked_when_it_loads(tmp_path, pip: str,  # type: ignore[no-untyped-def]
                                                       problem: str) -> None:
    from ephemeral.errors import SpecError
    from ephemeral.specs import load_file

    with pytest.raises(SpecError) as info:
        load_file(_spec_file(tmp_path, pip))
    assert "runtimeEnv.pip" in str(info.value)
    assert problem in str(info.value)
    assert load_file(_spec_file(tmp_path, '["six", "rich @ https://h/rich.whl"]'))


def test_an_idle_timeout_not_shorter_than_the_ttl_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ephemeral.errors import SpecError
    from ephemeral.specs import load_file

    with pytest.raises(SpecError, match=r"idleTimeout \(1h\) is not shorter than ttl \(1h\)"):
        load_file(_spec_file(tmp_path, "[]", "{ttl: 1h, idleTimeout: 1h}"))


@pytest.mark.parametrize(("pip", "index"), [
    ('["six", "internal-lib @ https://deploy:glpat-SECRET123@git.example.com/g/lib.git"]', 1),
    ('["lib @ git+https://glpat-SECRET123@git.example.com/g/lib.git@v1"]', 0),
    ('["lib @ https://u:p@ss-SECRET123@h/lib.whl"]', 0),  # an unescaped '@' in the password
])
def test_a_specs_pip_entry_with_credentials_is_refused_without_echoing_them(
        tmp_path, pip: str, index: int) -> None:  # type: ignore[no-untyped-def]
    from ephemeral.errors import SpecError
    from ephemeral.specs import load_file

    with pytest.raises(SpecError) as info:
        load_file(_spec_file(tmp_path, pip))
    text = str(info.value)
    assert f"runtimeEnv.pip[{index}]" in text
    assert "credentials in its URL" in text
    assert "package index" in text
    assert "SECRET123" not in text
    assert "***@" in text
    # An '@' after the host (a VCS ref) is no user-info.
    assert load_file(_spec_file(tmp_path, '["lib @ git+https://git.example.com/g/lib.git@v1"]'))


def test_a_jobs_uv_installs_the_clusters_pip_packages_instead_of_pip() -> None:
    # Ray refuses pip and uv together: the cluster's packages move into the job's uv.
    out = merge_runtime_env({"pip": ["six", "rich==13"], "env_vars": {"A": "1"}},
                            {"uv": ["rich==14", "polars"]})
    assert out == {"uv": ["six", "rich==14", "polars"], "env_vars": {"A": "1"}}
    out = merge_runtime_env({"pip": ["six"]}, {"uv": {"packages": ["rich"], "uv_check": True}})
    assert out == {"uv": {"packages": ["six", "rich"], "uv_check": True}}
    assert merge_runtime_env({}, {"uv": ["rich"]}) == {"uv": ["rich"]}
    with pytest.raises(JobSubmissionFailed, match=r"runtime_env sets pip and uv"):
        merge_runtime_env({"pip": ["six"]}, {"uv": ["rich"], "pip": ["polars"]})


def test_what_ray_would_refuse_after_the_upload_is_refused_by_name_before_it() -> None:
    from ray.runtime_env import RuntimeEnv

    job = {"image_uri": "registry.example/train:1", "env_vars": {"A": "1"}}
    with pytest.raises(ValueError, match="image_uri"):  # Ray's own refusal, for the record
        RuntimeEnv(**{**job, "pip": ["six"]})
    with pytest.raises(JobSubmissionFailed, match=r"runtime_env\.image_uri.*not with pip "
                                                  r"\(the cluster adds pip packages.*\['six'\]"):
        merge_runtime_env({"pip": ["six"]}, job)
    with pytest.raises(JobSubmissionFailed, match=r"runtime_env\.container.*not with pip"):
        merge_runtime_env({"pip": ["six"]}, {"container": {"image": "x"}})
    # Without the cluster's pip, an image job is what Ray accepts.
    env = merge_runtime_env({"env_vars": {"B": "2"}}, job)
    assert env == {"image_uri": "registry.example/train:1", "env_vars": {"B": "2", "A": "1"}}
    RuntimeEnv(**env)


def test_a_jobs_pip_or_uv_entry_with_credentials_is_refused_by_its_index() -> None:
    secret = "lib @ https://deploy:glpat-SECRET123@git.example.com/lib.whl"
    for field, value in [("pip", ["six", secret]), ("uv", {"packages": ["six", secret]})]:
        with pytest.raises(JobSubmissionFailed) as info:
            merge_runtime_env({"pip": ["rich"]}, {field: value})
        text = str(info.value)
        assert f"runtime_env.{field}[1]" in text
        assert "credentials in its URL" in text
        assert "SECRET123" not in text


def test_a_runtime_env_ray_refuses_is_not_called_a_transport_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ephemeral.jobs.ray_jobs import RayJobs

    # No dashboard listens there: the refusal must come first, by Ray's own check, named so.
    jobs = RayJobs("http://127.0.0.1:9", cluster="c")
    with pytest.raises(JobSubmissionFailed, match="Ray refuses the job's runtime_env") as info:
        jobs.submit("python x.py", working_dir=str(tmp_path),
                    runtime_env={"pip": ["six"], "uv": ["rich"]})
    assert "cannot reach" not in str(info.value)
    assert "'uv' field" in str(info.value)


def test_a_job_entry_naming_no_package_is_refused_beside_the_clusters_packages() -> None:
    """A job's torch from a URL next to the cluster's torch==2.3: pip would meet both only on
    the cluster. Named (``name @ URL``, ``#egg=``) it replaces the cluster's; alone, it is kept."""
    base = ["torch==2.3", "numpy"]
    url = "git+https://github.com/pytorch/pytorch@v2.4.0"
    for unnamed in (url, "-r requirements.txt", "./wheels/torch-2.4-cp311.whl"):
        with pytest.raises(JobSubmissionFailed, match=r"the job: runtime_env pip entries .* name "
                                                      r"no package.*'torch @ git\+https://"):
            merge_pip(base, [unnamed])
    assert merge_pip(base, [f"torch @ {url}"]) == ["numpy", f"torch @ {url}"]
    assert merge_pip(base, [f"{url}#egg=torch"]) == ["numpy", f"{url}#egg=torch"]
    assert merge_pip([], [url]) == [url]
    with pytest.raises(JobSubmissionFailed, match="task t: runtime_env pip"):
        merge_runtime_env({"pip": base}, {"pip": [url]}, where="task t")


def test_options_comments_hashes_and_package_files_still_merge() -> None:
    base = ["torch==2.3", "numpy"]
    fine = ["--extra-index-url https://download.pytorch.org/whl/cpu",
            "--index-url https://pypi.org/simple", "torch==2.4 --hash=sha256:abc",
            "torch==2.4  # pinned", "https://host/p/torch-2.4.0-cp311-none-linux_x86_64.whl",
            "-e git+https://github.com/org/lib.git#egg=lib"]
    for entry in fine:
        merged = merge_pip(base, [entry])
        assert merged[-1] == entry
    # A named entry replaces the cluster's package of that name, however it is written.
    assert merge_pip(base, ["torch==2.4 --hash=sha256:abc"]) == ["numpy",
                                                                 "torch==2.4 --hash=sha256:abc"]
    assert merge_pip(base, [fine[4]]) == ["numpy", fine[4]]
    for refused in ("-c constraints.txt", "--requirement req.txt",
                    "-e git+https://github.com/org/lib.git"):
        with pytest.raises(JobSubmissionFailed, match="name no package"):
            merge_pip(base, [refused])
