"""The CLI's one error boundary and its input rules: every error ends as `_fail` prints it (one
JSON document under --json; exit 2 for refused input, 1 otherwise), never a traceback; every
seconds option is a finite number above 0, refused before anything is created."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ephemeral.backends.base import OwnerSelector
from ephemeral.backends.fake import InMemoryBackend
from ephemeral.cli import main as cli_main
from ephemeral.errors import BackendUnavailable


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli_main.app, list(args), env=env)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), result.exception  # no traceback
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> InMemoryBackend:
    backend = InMemoryBackend(ready_after_probes=1)
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)
    return backend


# -- seconds options ------------------------------------------------------------------------

BAD_SECONDS = ["nan", "inf", "-inf", "0", "-1"]


@pytest.mark.parametrize("value", BAD_SECONDS)
@pytest.mark.parametrize(("command", "option"), [
    (["up", "ray/adhoc-cpu", "-p", "ci-cpu"], "--timeout"),
    (["submit", "c", "--json", "--", "true"], "--timeout"),
    (["spark-submit", "c", "app.py"], "--timeout"),
])
def test_a_seconds_option_is_finite_and_above_zero(fake: InMemoryBackend, command: list[str],
                                                   option: str, value: str) -> None:
    code, stdout, _ = invoke(command[0], option, value, "--json", *command[1:])
    assert code == 2, stdout
    doc = json.loads(stdout)
    assert doc["error"] == "RequestError"
    assert f"{option}: " in doc["message"]
    assert "finite number of seconds above 0" in doc["message"]
    assert fake.created_total == 0  # refused before anything was made


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_grace_is_finite_and_not_negative(fake: InMemoryBackend, value: str) -> None:
    code, stdout, _ = invoke("reap", "--grace", value, "--json", "--dry-run")
    assert code == 2, stdout
    assert "--grace: " in json.loads(stdout)["message"]


def test_a_grace_of_zero_reaps_an_ended_runs_clusters_at_once(fake: InMemoryBackend) -> None:
    code, stdout, stderr = invoke("reap", "--grace", "0", "--json", "--dry-run")
    assert code == 0, stdout
    # no Airflow to ask: the grace would judge nothing, and the pass says so (it still reaps
    # expired and idle clusters: a reaper that refused would not)
    assert "--grace has no effect without --airflow-url" in stderr
    _, _, stderr = invoke("reap", "--json", "--dry-run")
    assert "--grace" not in stderr  # only when given


def test_up_timeout_past_the_clusters_lifetime_is_refused(fake: InMemoryBackend) -> None:
    """1e308 waited forever: past the spec's ttl the cluster is deleted anyway."""
    code, stdout, _ = invoke("up", "ray/adhoc-cpu", "-p", "ci-cpu", "--timeout", "1e308",
                             "--json")
    assert code == 2, stdout
    assert "lifetime.ttl" in json.loads(stdout)["message"]
    assert fake.created_total == 0


def test_a_good_timeout_still_waits(fake: InMemoryBackend) -> None:
    fake.ready_after_probes = 10**9  # never ready: up waits until its timeout
    code, stdout, _ = invoke("up", "ray/adhoc-cpu", "-p", "ci-cpu", "--timeout", "0.2",
                             "--json")
    assert code == 1, stdout
    assert json.loads(stdout)["error"] != "RequestError"
    assert fake.created_total == 1
    assert fake.list_owned(OwnerSelector(all_instances=True)) == []  # deleted after the timeout


# -- the error boundary ---------------------------------------------------------------------

class Unreachable(InMemoryBackend):
    def list_owned(self, selector=None):  # type: ignore[no-untyped-def]
        raise BackendUnavailable("kube API unreachable: connection refused")


@pytest.mark.parametrize("command", [["ls"], ["down", "--all"], ["reap"]])
def test_a_backend_error_is_one_json_document(monkeypatch: pytest.MonkeyPatch,
                                              command: list[str]) -> None:
    monkeypatch.setattr(cli_main, "_backend", lambda _name: Unreachable())
    code, stdout, _ = invoke(*command, "--json")
    assert code == 1
    doc = json.loads(stdout)
    assert doc["error"] == "BackendUnavailable"
    assert doc["retryable"] is True
    code, _, stderr = invoke(*command)
    assert code == 1
    assert "kube API unreachable" in stderr


@pytest.mark.parametrize(("variable", "value"), [("EPHEMERAL_INSTANCE", "Bad"),
                                                 ("EPHEMERAL_HOME", "relative/home")])
def test_a_bad_setting_is_refused_input_named_as_a_setting(variable: str, value: str) -> None:
    code, stdout, _ = invoke("ls", "--json", env={variable: value})
    assert code == 2, stdout
    doc = json.loads(stdout)
    assert doc["error"] == "SettingError"
    assert doc["message"].startswith(f"{variable}: invalid setting")
    assert "cluster spec" not in doc["message"]


def test_a_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "x.json"
    code, _, stderr = invoke("specs", "schema", "-o", str(target))
    assert code == 1
    assert "Traceback" not in stderr
    assert f"No such file or directory {target}" in stderr


@pytest.mark.parametrize("command", [["submit", "c", "--env", "NOEQ", "--json", "--", "true"],
                                     ["spark-submit", "c", "app.py", "--conf", "NOEQ", "--json"]])
def test_a_bad_key_value_is_json_under_json(fake: InMemoryBackend, command: list[str]) -> None:
    code, stdout, _ = invoke(*command)
    assert code == 2
    assert "is not KEY=VALUE" in json.loads(stdout)["message"]


def test_json_after_the_separator_belongs_to_the_job(fake: InMemoryBackend) -> None:
    code, stdout, stderr = invoke("submit", "c", "--env", "NOEQ", "--", "tool", "--json")
    assert code == 2
    assert stdout == ""
    assert "is not KEY=VALUE" in stderr


# -- up/render: --name is checked by name, not by catching any ValueError ----------------------

@pytest.mark.parametrize("command", [["up", "ray/adhoc-cpu", "-p", "ci-cpu"],
                                     ["render", "ray/adhoc-cpu", "-p", "ci-cpu"]])
def test_a_bad_name_is_refused_before_anything(fake: InMemoryBackend, command: list[str]) -> None:
    code, stdout, _ = invoke(*command, "--name", "Bad_Name", "--json")
    assert code == 2
    doc = json.loads(stdout)
    assert doc["error"] == "SpecError"
    assert "--name" in doc["message"]
    assert fake.created_total == 0


def test_a_bug_after_create_is_not_reported_as_a_bad_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ValueError of a probe, after the cluster was made (and deleted), was reported as
    '--name: invalid cluster spec', exit 2, 'nothing created'."""
    class Buggy(InMemoryBackend):
        def probe(self, handle):  # type: ignore[no-untyped-def]
            raise ValueError("some internal bug in a probe")

    backend = Buggy()
    monkeypatch.setattr(cli_main, "_backend", lambda _name: backend)
    result = CliRunner().invoke(cli_main.app, ["up", "ray/adhoc-cpu", "-p", "ci-cpu", "--json"])
    assert result.exit_code != 2
    assert "--name" not in result.output
    assert isinstance(result.exception, ValueError)  # a bug shows as one
    assert backend.created_total == 1
    assert backend.list_owned(OwnerSelector(all_instances=True)) == []  # deleted


# -- saying where it looked -----------------------------------------------------------------


def test_specs_validate_with_no_spec_files_names_the_folder(tmp_path: Path) -> None:
    """A wrong EPHEMERAL_SPECS_DIR printed nothing and exited 1."""
    empty = tmp_path / "specs"
    empty.mkdir()
    code, stdout, _ = invoke("specs", "validate", "--json",
                             env={"EPHEMERAL_SPECS_DIR": str(empty)})
    assert code == 2, stdout
    doc = json.loads(stdout)
    assert doc["error"] == "SettingError"
    assert "EPHEMERAL_SPECS_DIR" in doc["message"]
    assert str(empty) in doc["message"]


def test_down_of_a_name_not_found_says_where_it_looked(fake: InMemoryBackend) -> None:
    """Meant for Kubernetes, run against the local default: 'not found' alone reads as done."""
    code, stdout, _ = invoke("down", "eph-train-gpu-0123456789", "--json")
    assert code == 0, stdout
    doc = json.loads(stdout)
    [gone] = doc["not_found"]  # no deletion: not under "deleted"
    assert doc["deleted"] == []
    assert gone["looked_in"].startswith(f"{fake.name} backend")
    assert "instance " in gone["looked_in"]
    code, _, stderr = invoke("down", "eph-train-gpu-0123456789")
    assert f"not found in the {fake.name} backend" in stderr


@pytest.mark.parametrize("as_json", [False, True])
def test_down_of_a_name_with_no_record_says_what_of_it_it_ended(
        ephemeral_home: Path, as_json: bool) -> None:
    """A cluster whose state file is gone, its processes still running: `down` ends them by
    their markers, and said "not found ... (nothing to delete)"."""
    from ephemeral.backends.local.procs import DIR_ENV

    name = "eph-adhoc-cpu-0123456789"
    marked = os.environ | {DIR_ENV: str((ephemeral_home / "clusters" / name).resolve())}
    proc = subprocess.Popen(["sleep", "600"], env=marked)  # one of its processes
    try:
        code, stdout, stderr = invoke("down", name, "--backend", "local",
                                      *(["--json"] if as_json else []))
        assert code == 0, stdout + stderr
        assert proc.wait(timeout=10) is not None  # ended
        if as_json:
            [gone] = json.loads(stdout)["not_found"]
            assert (gone["existed"], gone["ended"]) == (False, [f"pid {proc.pid} (sleep)"])
        else:
            said = " ".join(stderr.split())
            assert f"ended what of it still ran: pid {proc.pid} (sleep)" in said
            assert "nothing to delete" not in said
    finally:
        proc.kill()
        proc.wait()


def test_a_failed_up_says_whether_its_cluster_was_deleted(fake: InMemoryBackend,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The note on the error (deleted, or the deletion failing too) is what an operator acts
    on: it was dropped, so a cluster left running read like any other failure."""
    fake.ready_after_probes = 10**9
    code, stdout, _ = invoke("up", "ray/adhoc-cpu", "-p", "ci-cpu", "--timeout", "0.2", "--json")
    assert code == 1
    assert "was deleted after the failure: nothing of it is left" in \
        json.loads(stdout)["message"]

    def refuse(*_a: object, **_k: object) -> None:
        raise BackendUnavailable("API server down")

    monkeypatch.setattr(fake, "delete", refuse)
    code, _, stderr = invoke("up", "ray/adhoc-cpu", "-p", "ci-cpu", "--timeout", "0.2")
    assert code == 1
    assert "after the failure also failed: BackendUnavailable: API server down" in stderr


@pytest.mark.parametrize(("option", "value"), [("--namespace", "Team_A"),
                                               ("--cluster-domain", "cluster local"),
                                               ("--cluster-domain", "cluster.local.")])
def test_render_refuses_a_namespace_or_domain_no_service_name_can_hold(option: str,
                                                                       value: str) -> None:
    out = CliRunner().invoke(cli_main.app, ["render", "ray/adhoc-cpu", option, value, "--json"])
    assert out.exit_code == 2, out.output
    assert option in json.loads(out.output)["message"]


def test_render_takes_a_custom_cluster_domain() -> None:
    out = CliRunner().invoke(cli_main.app, ["render", "ray/adhoc-cpu", "-n", "team-a",
                                            "--cluster-domain", "corp.example", "--json"])
    assert out.exit_code == 0, out.output
    assert ".team-a.svc.corp.example" in json.loads(out.output)["endpoints"]["dashboard"]


def test_render_shows_what_up_would_make_with_the_deployments_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Namespace, cluster domain, admitted clients and the Spark service account come from the
    EPHEMERAL_K8S_* settings, as `up` reads them; -n and --cluster-domain still win."""
    for key, value in {"NAMESPACE": "ml-prod", "CLUSTER_DOMAIN": "corp.example",
                       "CLIENT_SELECTOR": "release=airflow-prod", "CLIENT_CIDRS": "10.8.0.0/16",
                       "SPARK_MODE": "operator", "SPARK_SERVICE_ACCOUNT": "spark-driver"}.items():
        monkeypatch.setenv(f"EPHEMERAL_K8S_{key}", value)
    out = CliRunner().invoke(cli_main.app, ["render", "ray/adhoc-cpu", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert ".ml-prod.svc.corp.example" in doc["endpoints"]["dashboard"]
    assert {o["metadata"]["namespace"] for o in doc["objects"]} == {"ml-prod"}
    policy = next(o for o in doc["objects"] if o["kind"] == "NetworkPolicy")
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from", [])]
    assert {"podSelector": {"matchLabels": {"release": "airflow-prod"}}} in peers
    assert {"ipBlock": {"cidr": "10.8.0.0/16"}} in peers
    spark = CliRunner().invoke(cli_main.app, ["render", "spark/etl", "-p", "ci-cpu", "--json"])
    assert spark.exit_code == 0, spark.output
    connect = next(o for o in json.loads(spark.output)["objects"] if o["kind"] == "SparkConnect")
    assert "spark-driver" in json.dumps(connect["spec"]["server"])
    given = CliRunner().invoke(cli_main.app, ["render", "ray/adhoc-cpu", "-n", "team-a",
                                              "--cluster-domain", "cluster.local", "--json"])
    assert ".team-a.svc.cluster.local" in json.loads(given.output)["endpoints"]["dashboard"]


def test_output_the_terminal_cannot_encode_is_escaped_not_a_traceback(tmp_path: Path) -> None:
    specs = tmp_path / "spëcs" / "ray"
    specs.mkdir(parents=True)
    shutil.copy(Path(__file__).parents[2] / "cluster_specs/ray/adhoc-cpu.yaml", specs)
    proc = subprocess.run([sys.executable, "-m", "ephemeral.cli.main", "specs", "validate"],
                          capture_output=True, text=True, errors="replace", timeout=120,
                          env={**os.environ, "PYTHONIOENCODING": "ascii",
                               "EPHEMERAL_SPECS_DIR": str(specs.parent)})
    assert proc.returncode == 0, proc.stderr
    assert "sp\\xebcs" in proc.stdout
    assert "Traceback" not in proc.stderr


# -- one table of exit codes: refused input is 2, one JSON document under --json -------------

def test_a_name_another_spec_holds_is_refused_input(fake: InMemoryBackend,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """IdentityConflict (the name is another spec's, or another owner's, cluster): nothing was
    created, and the same `up` fails the same: exit 2, as every other refusal (it was 1)."""
    from ephemeral.errors import IdentityConflict

    def conflict(*_a: object, **_k: object) -> None:
        raise IdentityConflict("cluster 'mine' already exists from ray/other@1")

    monkeypatch.setattr(fake, "create", conflict)
    code, stdout, _ = invoke("up", "ray/adhoc-cpu", "-p", "ci-cpu", "--name", "mine", "--json")
    assert code == 2, stdout
    assert json.loads(stdout)["error"] == "IdentityConflict"


@pytest.mark.parametrize("args", [["up", "--json"], ["up", "ray/adhoc-cpu", "--json", "--bogus"],
                                  ["specs", "show", "--json"],
                                  ["down", "--json"]])
def test_a_usage_error_under_json_is_one_json_document(fake: InMemoryBackend,
                                                       args: list[str]) -> None:
    code, stdout, _ = invoke(*args)
    assert code == 2, stdout
    doc = json.loads(stdout)
    assert doc["message"]
    assert doc["retryable"] is False


def test_a_usage_error_without_json_is_still_typers(fake: InMemoryBackend) -> None:
    code, stdout, stderr = invoke("up", "ray/adhoc-cpu", "--bogus")
    assert code == 2
    assert "No such option" in stderr
    assert stdout == ""


@pytest.mark.parametrize(("args", "head"), [
    (["reap", "--grace", "nan"], "ephemeral reap: refused"),
    (["render", "ray/adhoc-cpu", "--namespace", "Bad_Ns"], "ephemeral render: refused"),
    (["submit", "c", "--env", "novalue", "--", "true"], "ephemeral submit: refused"),
    (["up", "ray/adhoc-cpu", "--timeout", "0"], "ephemeral up: refused"),
])
def test_a_refusal_is_headed_by_its_command(fake: InMemoryBackend, args: list[str],
                                            head: str) -> None:
    """It read "request: refused" or "ephemeral: refused" by which helper refused."""
    code, stdout, _ = invoke(args[0], "--json", *args[1:])
    assert code == 2, stdout
    assert json.loads(stdout)["message"].splitlines()[0] == head
