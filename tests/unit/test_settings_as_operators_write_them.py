"""Settings as operators write them by mistake: a blank Helm value, a Secret file's trailing
newline, a relative path, a token as a URL's user name. Each is refused naming the setting,
or read as meant; none turns a safety off or reaches an output."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ephemeral.backends.kubernetes import KubeConfig
from ephemeral.errors import BackendUnavailable
from ephemeral.reaper import AirflowApiLookup

BASE = {"EPHEMERAL_KUBECONFIG": "/x"}


@pytest.mark.parametrize("name", ["VERIFY_SSL", "IN_CLUSTER", "HTTP_CHECK"])
@pytest.mark.parametrize("blank", [" ", "\t", "  \n"])
def test_a_blank_kubernetes_flag_is_refused_not_false(name: str, blank: str) -> None:
    """" " was read as false: with VERIFY_SSL the API token and the clusters' Ray tokens went
    over unverified TLS, and nothing said so."""
    with pytest.raises(BackendUnavailable, match=f"EPHEMERAL_K8S_{name}") as exc:
        KubeConfig.from_env(BASE | {f"EPHEMERAL_K8S_{name}": blank})
    assert "true or false" in str(exc.value)


@pytest.mark.parametrize(("value", "expected"), [("false", False), (" 0 ", False), ("No", False),
                                                 ("true", True), ("1", True), ("ON", True)])
def test_kubernetes_flags_read_as_the_other_flags(value: str, expected: bool) -> None:
    config = KubeConfig.from_env(BASE | {"EPHEMERAL_K8S_VERIFY_SSL": value})
    assert config.verify_ssl is expected


def test_verify_ssl_is_on_unless_turned_off() -> None:
    assert KubeConfig.from_env(BASE).verify_ssl is True


@pytest.mark.parametrize("path", ["kube/config", "./config", " config"])
def test_a_relative_kubeconfig_is_refused(path: str) -> None:
    """Each process (worker, triggerer, run-end listener, reaper) would read its own."""
    with pytest.raises(BackendUnavailable, match="EPHEMERAL_KUBECONFIG"):
        KubeConfig.from_env({"EPHEMERAL_KUBECONFIG": path})


def test_an_absolute_kubeconfig_is_kept_and_home_expanded(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("HOME", "/home/ops")
    assert KubeConfig.from_env({"EPHEMERAL_KUBECONFIG": " /etc/kube/config"}
                               ).kubeconfig_path == "/etc/kube/config"
    assert KubeConfig.from_env({"EPHEMERAL_KUBECONFIG": "~/.kube/config"}
                               ).kubeconfig_path == "/home/ops/.kube/config"


def test_a_tokens_trailing_newline_is_dropped() -> None:
    """A token mounted from a Secret file ends in a newline: the header refused it, with the
    token quoted in the error the reaper printed."""
    lookup = AirflowApiLookup("http://127.0.0.1:9", token="eyJ.jwt-token\n")
    assert lookup.token() == "eyJ.jwt-token"


def test_a_blank_token_leaves_the_user_and_password_to_log_in() -> None:
    lookup = AirflowApiLookup("http://127.0.0.1:9", token="", username="reaper", password="pw")
    assert lookup._token is None
    assert lookup._credentials == ("reaper", "pw")


@pytest.mark.parametrize("token", ["eyJ.jwt\neyJ.second", "eyJ jwt", "eyJ.jwt\x7f"])
def test_a_token_no_header_can_carry_is_refused_without_showing_it(token: str) -> None:
    from ephemeral.cli import main as cli_main

    result = CliRunner().invoke(cli_main.app, ["reap", "--airflow-url", "http://127.0.0.1:9",
                                               "--json"], env={"AIRFLOW_API_TOKEN": token})
    assert result.exit_code == 2, result.output
    assert "AIRFLOW_API_TOKEN" in result.output
    assert "jwt" not in result.output


def test_a_token_as_the_trackings_user_name_is_masked_in_mlflow_errors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ghp_T0KEN@mlflow.example.com")
    masked = registry._mask("API request to https://ghp_T0KEN@mlflow.example.com/api/2.0/x "
                            "failed")
    assert "ghp_T0KEN" not in masked
    assert "https://***@mlflow.example.com/api/2.0/x" in masked
