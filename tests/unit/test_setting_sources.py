"""An error about a setting names where its value came from (``lookup``'s source): the
variable, Airflow's ``[ephemeral]`` option, or the Airflow home an instance was derived from.
Naming another place sent operators to fix a setting nobody had set."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner


def _foreign(monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The teardown's check of a cluster the setup made as instance 'setup-side'."""
    from ephemeral.airflow.operators import foreign_instance
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.specs import ClusterIdentity
    from tests.conftest import small

    spec = small("ray/adhoc-cpu", replicas=1)
    handle = InMemoryBackend().create(spec, identity=ClusterIdentity(
        spec_name=spec.spec.name, dag_id="d", run_id="r", task_id="create",
        instance="setup-side"))
    return foreign_instance(handle, None)


def test_a_derived_instance_names_the_airflow_home_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    said = _foreign(monkeypatch)
    assert said is not None
    assert f"derived from AIRFLOW_HOME={tmp_path / 'airflow'}" in said
    assert "set EPHEMERAL_INSTANCE (or [ephemeral] instance) to one name on every" in said
    assert "EPHEMERAL_INSTANCE differs" not in said
    monkeypatch.delenv("AIRFLOW_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert f"the Airflow home {tmp_path / 'airflow'}, AIRFLOW_HOME being unset" in str(
        _foreign(monkeypatch))


@pytest.mark.parametrize(("var", "source"), [
    ("EPHEMERAL_INSTANCE", "EPHEMERAL_INSTANCE"),
    ("AIRFLOW__EPHEMERAL__INSTANCE", "[ephemeral] instance")])
def test_a_set_instance_names_its_setting(var: str, source: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPHEMERAL_INSTANCE", raising=False)
    monkeypatch.setenv(var, "teardown-side")
    said = _foreign(monkeypatch)
    assert said == ("deployment instance 'teardown-side' (from " + source + ") but the cluster "
                    "belongs to 'setup-side' (" + source + " differs between the setup and this "
                    "task)")


def test_a_backend_from_airflow_config_is_named_there(monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.cli import main

    monkeypatch.setenv("AIRFLOW__EPHEMERAL__BACKEND", "Kubernetes")  # as airflow.cfg's
    said = " ".join(CliRunner().invoke(main.app, ["ls"]).output.replace("│", " ").split())
    assert "Invalid value for [ephemeral] backend: unknown backend 'Kubernetes'" in said
    assert "EPHEMERAL_BACKEND" not in said
    monkeypatch.setenv("EPHEMERAL_BACKEND", "ray")
    said = " ".join(CliRunner().invoke(main.app, ["ls"]).output.replace("│", " ").split())
    assert "Invalid value for EPHEMERAL_BACKEND: unknown backend 'ray'" in said
    said = " ".join(CliRunner().invoke(main.app, ["ls", "--backend", "x"]).output
                    .replace("│", " ").split())
    assert "Invalid value for '--backend': unknown backend 'x'" in said
    # `specs show` acts on no backend, yet prints its notes: a misspelt one is refused too
    shown = CliRunner().invoke(main.app, ["specs", "show", "ray/train-gpu", "--backend", "x"])
    assert shown.exit_code == 2
    assert "unknown backend 'x'" in " ".join(shown.output.replace("│", " ").split())


@pytest.mark.parametrize(("env", "said"), [
    ({"AIRFLOW__EPHEMERAL__K8S_NAMESPACE": "ML"}, "namespace ([ephemeral] k8s_namespace): "),
    ({"EPHEMERAL_K8S_NAMESPACE": "ML"}, "namespace (EPHEMERAL_K8S_NAMESPACE): "),
    ({"AIRFLOW__EPHEMERAL__K8S_VERIFY_SSL": "maybe"},
     "verify_ssl ([ephemeral] k8s_verify_ssl): "),
    ({"EPHEMERAL_K8S_ENDPOINT_MODE": "ingress"}, "endpoint_mode (EPHEMERAL_K8S_ENDPOINT_MODE): "
                                                 "Value error, endpoint_mode 'ingress' needs"),
])
def test_a_kubernetes_setting_is_named_where_it_was_set(env: dict[str, str], said: str) -> None:
    from ephemeral.backends.kubernetes.config import KubeConfig
    from ephemeral.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable) as err:
        KubeConfig.from_env(env)
    assert said in str(err.value)
    assert "environment (EPHEMERAL_K8S_*)" not in str(err.value)


@pytest.mark.parametrize("where", ["airflow.cfg", "AIRFLOW__EPHEMERAL__AIRFLOW_PASSWORD_CMD"])
def test_a_secret_only_airflow_can_resolve_is_refused_outside_it(tmp_path: Path,
                                                                 where: str) -> None:
    """`airflow_password_secret` (or `_cmd`) is resolved by Airflow's own processes only: the
    reaper CLI, outside one, refuses it naming the variable to use, instead of logging in
    without a password."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "airflow.cfg").write_text(
        "[ephemeral]\nairflow_password_secret = reaper-password\n" if where == "airflow.cfg"
        else "[ephemeral]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "EPHEMERAL_"))}
    env |= {"AIRFLOW_HOME": str(tmp_path), "EPHEMERAL_HOME": str(tmp_path / "home"),
            "EPHEMERAL_INSTANCE": "ops", "EPHEMERAL_AIRFLOW_URL": "http://127.0.0.1:9",
            "EPHEMERAL_AIRFLOW_USER": "reaper"}
    if where != "airflow.cfg":
        env[where] = "cat /run/secrets/reaper"
    exe = Path(sys.executable).parent / "ephemeral"
    done = subprocess.run([str(exe), "reap", "--dry-run", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    message = json.loads(done.stdout)["message"]
    named = "[ephemeral] airflow_password_secret" if where == "airflow.cfg" else where
    assert message.startswith(named)
    assert "give it EPHEMERAL_AIRFLOW_PASSWORD instead" in message
    # Where the password would not be used, it is not asked for: a token instead of a user.
    del env["EPHEMERAL_AIRFLOW_USER"]
    env["AIRFLOW_API_TOKEN"] = "tok"
    done = subprocess.run([str(exe), "reap", "--dry-run", "--json", "--backend", "local"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 2, done.stdout + done.stderr
    assert "_secret" not in done.stdout + done.stderr
    assert "_CMD" not in done.stdout + done.stderr


def test_a_kubeconfig_only_airflow_can_resolve_is_refused_unless_another_is_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.backends.kubernetes import KubeConfig
    from ephemeral.errors import BackendUnavailable

    (tmp_path / "airflow.cfg").write_text("[ephemeral]\nkubeconfig_content_secret = kc\n")
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "airflow.cfg"))
    monkeypatch.setattr("ephemeral.settings._airflow_conf", lambda: None)  # as the CLI
    for var in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "EPHEMERAL_KUBECONFIG",
                "EPHEMERAL_K8S_IN_CLUSTER"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(BackendUnavailable, match=r"\[ephemeral\] kubeconfig_content_secret is "
                                                 "set, but only Airflow's own processes"):
        KubeConfig.from_env()
    (tmp_path / "kc.yaml").write_text("apiVersion: v1\n")
    monkeypatch.setenv("EPHEMERAL_KUBECONFIG", str(tmp_path / "kc.yaml"))
    assert KubeConfig.from_env().kubeconfig_path == str(tmp_path / "kc.yaml")


def test_the_cli_says_it_does_not_read_the_deployments_kubernetes_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAGs reach Kubernetes through [ephemeral] kubernetes_conn_id; the CLI, without
    Airflow, cannot: an `ls` that says "no clusters" says where it looked instead."""
    from ephemeral.cli import main

    monkeypatch.setenv("AIRFLOW__EPHEMERAL__KUBERNETES_CONN_ID", "k8s_prod")
    main._connection_not_read.cache_clear()
    done = CliRunner().invoke(main.app, ["render", "ray/adhoc-cpu", "--json"])
    assert done.exit_code == 0, done.output
    said = " ".join(done.stderr.split())
    assert "warning: [ephemeral] kubernetes_conn_id (k8s_prod) is an Airflow connection" in said
    assert "EPHEMERAL_K8S_* settings" in said
    assert said.count("warning:") == 1
    main._connection_not_read.cache_clear()
    # the tasks go to Kubernetes through it whatever EPHEMERAL_BACKEND says: the CLI would not
    said = " ".join(CliRunner().invoke(main.app, ["ls"]).stderr.split())
    assert "it acts on the local backend (--backend, EPHEMERAL_BACKEND)" in said
    monkeypatch.delenv("AIRFLOW__EPHEMERAL__KUBERNETES_CONN_ID")
    main._connection_not_read.cache_clear()
    done = CliRunner().invoke(main.app, ["render", "ray/adhoc-cpu", "--json"])
    assert "kubernetes_conn_id" not in done.stderr


def test_a_tasks_misspelt_backend_is_refused_naming_the_setting_not_retried(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A task's backend comes from the same setting as the CLI's: a typo there is refused
    input (no retry can help), named where it was set."""
    from ephemeral.airflow.backends import resolve
    from ephemeral.errors import SettingError

    monkeypatch.setenv("AIRFLOW__EPHEMERAL__BACKEND", "Kubernetes")
    with pytest.raises(SettingError) as err:
        resolve()
    assert not err.value.retryable
    assert err.value.refused
    assert str(err.value).startswith("[ephemeral] backend: invalid setting")
    assert "unknown backend 'Kubernetes'; use local or kubernetes" in str(err.value)


@pytest.mark.parametrize(("name", "value"), [("EPHEMERAL_K8S_VERIFY_SSL", "maybe"),
                                             ("EPHEMERAL_K8S_ENDPOINT_MODE", "tunnel"),
                                             ("EPHEMERAL_KUBECONFIG", "kube/config")])
def test_invalid_kubernetes_settings_are_refused_input_not_retried(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """An EPHEMERAL_K8S_* value that cannot work fails the same on every try: a task fails at
    once naming the variable (it was retried as an unreachable backend), the CLI exits 2."""
    from airflow.sdk.exceptions import AirflowFailException

    from ephemeral.airflow.backends import resolve
    from ephemeral.airflow.operators import CreateClusterOperator, cluster_backend
    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.cli import main
    from ephemeral.errors import BackendMisconfigured
    from ephemeral.specs import ClusterIdentity
    from ephemeral.specs import resolve as resolve_spec

    monkeypatch.setenv("EPHEMERAL_BACKEND", "kubernetes")
    monkeypatch.setenv("EPHEMERAL_KUBECONFIG", "/etc/kube/config")
    monkeypatch.setenv("EPHEMERAL_INSTANCE", "ci")
    monkeypatch.setenv(name, value)
    with pytest.raises(BackendMisconfigured, match=name) as err:
        resolve()
    assert not err.value.retryable
    assert err.value.refused
    spec = resolve_spec("ray/adhoc-cpu", "ci-cpu")
    handle = InMemoryBackend().create(spec, identity=ClusterIdentity.manual(
        spec.spec.name, "job-target")).model_copy(update={"backend": "kubernetes"})
    job = SimpleNamespace(task_id="job", backend=None, conn_id=None, kubernetes_conn_id=None)
    with pytest.raises(AirflowFailException, match=name):  # a job task's backend
        cluster_backend(handle, job)
    create = CreateClusterOperator(task_id="create", spec="ray/adhoc-cpu", backend="kubernetes",
                                   deferrable=False)
    with pytest.raises(AirflowFailException, match=name):
        create.execute({})  # before any context is read: nothing was made
    done = CliRunner().invoke(main.app, ["ls"])
    assert done.exit_code == 2, done.output
    assert name in done.stderr
