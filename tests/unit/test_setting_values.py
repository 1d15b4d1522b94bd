"""Settings that name folders or numbers mean one thing in every process of a deployment: a
relative folder would be another one in each working directory (the worker, the run-end
listener and a reaper started by cron each looking elsewhere for clusters), and ``inf`` is no
number of seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from ephemeral.errors import SpecError
from ephemeral.settings import folder, number


@pytest.mark.parametrize("value", ["eph", "./eph", "   ", "~nosuchuser-xyz/eph"])
def test_a_folder_that_is_not_absolute_is_refused_naming_its_variable(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.settings import get_settings

    monkeypatch.setenv("EPHEMERAL_HOME", value)
    with pytest.raises(SpecError, match=r"EPHEMERAL_HOME.*is not an absolute path"):
        get_settings()


def test_the_runtime_folder_is_one_for_every_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.backends.local.slots import runtime_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EPHEMERAL_RUNTIME_DIR", "run")
    with pytest.raises(SpecError, match="EPHEMERAL_RUNTIME_DIR"):
        runtime_dir()
    assert not (tmp_path / "run").exists()


def test_home_is_expanded_and_stripped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert folder("home", {"EPHEMERAL_HOME": " ~/eph "}) == tmp_path / "eph"
    assert folder("home", {}) is None


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "1_000", "\u0665", "0x10",
                                   "5 s", "."])
def test_a_number_is_finite_and_plain(value: str) -> None:
    with pytest.raises(SpecError, match=r"EPHEMERAL_RUN_END_LINGER.*is not a number"):
        number("run_end_linger", {"EPHEMERAL_RUN_END_LINGER": value})


@pytest.mark.parametrize(("value", "read"), [("5", 5.0), (" 2.5 ", 2.5), (".5", 0.5),
                                             ("1e2", 100.0), ("-3", -3.0), ("7.", 7.0)])
def test_a_plain_number_is_read(value: str, read: float) -> None:
    assert number("run_end_linger", {"EPHEMERAL_RUN_END_LINGER": value}) == read


@pytest.mark.parametrize(("value", "seconds"), [("inf", 30.0), ("nan", 30.0), ("1e12", 30.0),
                                                ("-5", 30.0), ("x", 30.0), ("5", 5.0),
                                                ("3600", 3600.0), ("0", 0.0), ("", 30.0)])
def test_the_run_end_listener_never_lingers_for_good(
        value: str, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler calls it: a refused value is the default, said in the scheduler's log."""
    from ephemeral.airflow import listener

    said: list[str] = []  # (Airflow's import replaces the handlers caplog would read)
    monkeypatch.setattr(listener.log, "warning", lambda msg, *args: said.append(msg % args))
    monkeypatch.setenv("EPHEMERAL_RUN_END_LINGER", value)
    assert listener._linger() == seconds
    refused = [m for m in said if "EPHEMERAL_RUN_END_LINGER" in m]
    assert len(refused) == (value not in ("5", "3600", "0", ""))


@pytest.mark.parametrize("value", ["1e12", "-5", "30s", "nan"])
def test_the_setup_refuses_a_bad_linger_before_making_anything(
        value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found only after a run failed, a typo would have cost the cleanup it tunes."""
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.operators import CreateClusterOperator
    from ephemeral.backends.local.backend import LocalBackend

    monkeypatch.setenv("EPHEMERAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EPHEMERAL_RUN_END_LINGER", value)
    with pytest.raises(AirflowFailException, match=r"EPHEMERAL_RUN_END_LINGER.*"
                       r"(between 0 and 3600 seconds|not a number)"):
        CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu@1").execute({})
    assert LocalBackend().list_owned() == []
    assert list(tmp_path.rglob("state.json")) == []


def test_a_runtime_folder_too_long_for_rays_sockets_fails_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's sockets live under the runtime folder: a long one (a service's own $TMPDIR, macOS's
    /var/folders/...) failed only inside a node's log, after the cluster was created."""
    from ephemeral.backends.local import LocalBackend, slots
    from ephemeral.errors import BackendUnavailable
    from ephemeral.specs import ClusterIdentity, resolve

    assert slots.socket_room_problem(Path("/tmp/ephemeral-65534")) is None
    long = tmp_path / ("x" * 40)
    monkeypatch.setenv("EPHEMERAL_RUNTIME_DIR", str(long))
    monkeypatch.setenv("EPHEMERAL_HOME", str(tmp_path / "home"))
    spec = resolve("ray/adhoc-cpu", "ci-cpu")
    with pytest.raises(BackendUnavailable, match="set EPHEMERAL_RUNTIME_DIR to a shorter folder"):
        LocalBackend().create(spec, identity=ClusterIdentity.manual(spec.spec.name, "sock"))
    assert not list((tmp_path / "home" / "clusters").glob("*/state.json"))


# The trigger form's and the specs' settings, bad: what locates and deletes clusters goes on.
FORM_SETTINGS = {"EPHEMERAL_JOBS_DIR": "jobs", "EPHEMERAL_SPECS_DIR": "~nosuchuser-xyz/specs",
                 "EPHEMERAL_PIP_ALLOW": "/nonexistent/allow.txt",
                 "EPHEMERAL_ARTIFACT_ROOT": "artifacts"}


@pytest.mark.parametrize(("var", "value"), FORM_SETTINGS.items())
def test_a_bad_form_setting_stops_no_teardown_and_fails_where_it_is_used(
        var: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from ephemeral.adhoc import validate_request
    from ephemeral.backends.base import OwnerSelector
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.cli import main as cli_main
    from ephemeral.errors import EphemeralError
    from ephemeral.jobs.artifacts import job_root
    from ephemeral.specs import ClusterIdentity, resolve

    backend = InMemoryBackend()
    spec = resolve("ray/adhoc-cpu")
    handle = backend.create(spec, identity=ClusterIdentity(
        spec_name=spec.spec.name, dag_id="d", run_id="r", task_id="create"))
    monkeypatch.setenv(var, value)
    assert [h.name for h in backend.list_owned(OwnerSelector.of_run("d", "r"))] == [handle.name]
    backend.delete(handle)
    assert backend.list_owned(OwnerSelector()) == []
    for args in (["ls"], ["reap", "--dry-run"]):
        run = CliRunner().invoke(cli_main.app, args)
        assert run.exit_code == 0, run.output
    # The form (the setup, for the artifact root) that uses it fails, naming it.
    form = {"cluster_spec": "ray/adhoc-cpu", "entrypoint": "python hello_ray.py", "workers": 1,
            "timeout_minutes": 10, "pip": ["numpy"]}
    with pytest.raises(EphemeralError, match=var):
        job_root() if var == "EPHEMERAL_ARTIFACT_ROOT" else validate_request(form)


@pytest.mark.parametrize(("value", "uri"), [
    (" /srv/art", "file:///srv/art"), ("/srv/art\n", "file:///srv/art"),
    ("s3://bucket/x\n", "s3://bucket/x"), (" gs://bucket/x/ ", "gs://bucket/x"),
    ("file:///srv/art/", "file:///srv/art")])
def test_the_artifact_root_is_stripped(value: str, uri: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.settings import get_settings

    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", value)
    assert get_settings().artifact_root == uri


def test_the_artifact_root_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ephemeral.settings import get_settings

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", "~/art")
    assert get_settings().artifact_root == (tmp_path / "art").resolve().as_uri()


@pytest.mark.parametrize(("value", "said"), [
    ("art", "is not an absolute path"), ("./art", "is not an absolute path"),
    ("~nosuchuser-xyz/art", "is not an absolute path"), ("file:art", "is not an absolute path"),
    ("s3://bucket/my art", "whitespace or a control character"),
    ("s3://bucket/x\ny", "whitespace or a control character"),
    ("s3://bucket/\x1b[2Jx", "whitespace or a control character")])
def test_an_artifact_root_each_process_would_read_elsewhere_is_refused(
        value: str, said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative root was resolved against each process's working directory (the worker's,
    the reaper's: reports written in one place, read in another), whitespace kept in it."""
    from ephemeral.settings import get_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EPHEMERAL_ARTIFACT_ROOT", value)
    settings = get_settings()  # what deletes clusters still loads
    with pytest.raises(SpecError, match=f"EPHEMERAL_ARTIFACT_ROOT: .*{said}"):
        _ = settings.artifact_root


@pytest.mark.parametrize("value", ["²", "١٢", "1.5", "-1", "lots", "\U0001d7e0"])
@pytest.mark.parametrize("var", ["EPHEMERAL_XCOM_MAX_BYTES", "EPHEMERAL_ADHOC_MAX_WORKERS"])
def test_a_count_that_is_no_ascii_whole_number_is_refused_naming_it(
        var: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``str.isdigit`` took '²', and int() then raised a ValueError traceback."""
    from ephemeral.settings import get_settings, xcom_max_bytes

    monkeypatch.setenv(var, value)
    with pytest.raises(SpecError, match=f"{var}: .* is not a whole number"):
        _ = xcom_max_bytes() if var == "EPHEMERAL_XCOM_MAX_BYTES" \
            else get_settings().adhoc_max_workers


def test_an_xcom_limit_of_0_is_refused_not_taken_for_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.settings import xcom_max_bytes

    monkeypatch.setenv("EPHEMERAL_XCOM_MAX_BYTES", "0")
    with pytest.raises(SpecError, match="EPHEMERAL_XCOM_MAX_BYTES: '0' is not a whole number "
                                        "of 1 or more"):
        xcom_max_bytes()
    monkeypatch.setenv("EPHEMERAL_XCOM_MAX_BYTES", " 9000 ")
    assert xcom_max_bytes() == 9000
    monkeypatch.delenv("EPHEMERAL_XCOM_MAX_BYTES")
    assert xcom_max_bytes() == 4096


def _gates() -> Path:
    from ephemeral.gate import gates_dir

    return gates_dir()


def _params() -> Path:
    from ephemeral.trials import params_dir

    return params_dir()


@pytest.mark.parametrize(("var", "read"), [("EPHEMERAL_GATES_DIR", _gates),
                                           ("EPHEMERAL_PARAMS_DIR", _params)])
def test_the_gates_and_params_folders_follow_the_folder_rule(
        var: str, read: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read raw: ``~`` kept, padding kept, and a relative folder meant another one at parse
    (the DAG processor's working directory) than at execute (the worker's)."""
    assert callable(read)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(var, " ~/g ")
    assert read() == tmp_path / "g"
    monkeypatch.setenv(var, "gates")
    with pytest.raises(SpecError, match=f"{var}: 'gates' is not an absolute path"):
        read()


def test_the_cost_file_follows_the_folder_rule(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.report.costs import CostConfigError, load_prices

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "prices.yaml").write_text("currency: EUR\ndefault: {gpuHour: 2}\n")
    prices = load_prices({"EPHEMERAL_COST_FILE": " ~/prices.yaml\n"})
    assert prices is not None
    assert (prices.currency, prices.default.gpu_hour) == ("EUR", 2)
    monkeypatch.chdir(tmp_path)  # a relative one would be found here, and nowhere else
    with pytest.raises(CostConfigError, match=r"EPHEMERAL_COST_FILE: 'prices\.yaml' is not an "
                                              "absolute path: give the file from the root"):
        load_prices({"EPHEMERAL_COST_FILE": "prices.yaml"})


def test_the_pip_allow_file_follows_the_folder_rule(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.adhoc import pip_allow_list
    from ephemeral.settings import Found

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "allow.txt").write_text("numpy\n")
    assert pip_allow_list(Found(" ~/conf/allow.txt ", "[ephemeral] pip_allow")) == {"numpy"}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match=r"\[ephemeral\] pip_allow: 'conf/allow.txt' is not an "
                                        "absolute path"):
        pip_allow_list(Found("conf/allow.txt", "[ephemeral] pip_allow"))
    assert pip_allow_list("numpy, pandas") == {"numpy", "pandas"}


def test_a_currency_without_prices_is_said_to_do_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Accepted and silently ignored is what a setting must not be: a currency with no price,
    or beside a cost file (whose own currency counts), is warned of where it was set."""
    from ephemeral.report.costs import CostConfigError, load_prices

    assert load_prices({"AIRFLOW__EPHEMERAL__COST_CURRENCY": "EUR"}) is None
    assert "[ephemeral] cost_currency is set but does nothing: no price is set" in caplog.text
    caplog.clear()
    (tmp_path / "prices.yaml").write_text("currency: CHF\ndefault: {gpuHour: 2}\n")
    prices = load_prices({"EPHEMERAL_COST_FILE": str(tmp_path / "prices.yaml"),
                          "EPHEMERAL_COST_CURRENCY": "EUR", "EPHEMERAL_COST_GPU_HOUR": "9.99"})
    assert prices is not None
    assert (prices.currency, prices.default.gpu_hour) == ("CHF", 2)
    for var in ("EPHEMERAL_COST_CURRENCY", "EPHEMERAL_COST_GPU_HOUR"):
        assert (f"{var} is set but does nothing: EPHEMERAL_COST_FILE is set, and the cost "
                "file's own prices and currency (USD when it gives none) are used"
                ) in caplog.text
    caplog.clear()
    assert load_prices({"EPHEMERAL_COST_GPU_HOUR": "2"}) is not None
    assert "does nothing" not in caplog.text
    # a bad value is named where it was set, not by a variable nobody set
    with pytest.raises(CostConfigError, match=r"^\[ephemeral\] cost_currency='E'"):
        load_prices({"EPHEMERAL_COST_GPU_HOUR": "2", "AIRFLOW__EPHEMERAL__COST_CURRENCY": "e"})
