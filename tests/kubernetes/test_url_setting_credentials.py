"""No credentials in the Kubernetes backend's URL settings (``ingress_url_template``,
``proxy_link_base``; from the environment or a kubernetes connection's ``ephemeral_*`` extras):
the URLs built from them are the handle's endpoints and the extra links, so a password or a
signed URL's token in them would reach XCom, task logs and every browser that opens a link. They
are refused, and no refusal (nor another error about the template) shows the secret."""

from __future__ import annotations

import pytest

from ephemeral.airflow.backends import ConnectionInvalid, _config
from ephemeral.backends.kubernetes import KubeConfig
from ephemeral.errors import BackendUnavailable

SECRET = "S3CRET-PW"
WITH_CREDENTIALS = [
    f"https://ops:{SECRET}@ray.example.com/{{namespace}}/{{cluster}}/{{port}}",
    f"https://{SECRET}@ray.example.com/{{cluster}}/{{port}}",
    f"https://ray.example.com/{{cluster}}/{{port}}?token={SECRET}",
    f"https://ray.example.com/{{cluster}}/{{port}}?a=1&X-Amz-Signature={SECRET}",
]


@pytest.mark.parametrize("template", WITH_CREDENTIALS)
def test_an_ingress_template_with_credentials_is_refused_masked(template: str) -> None:
    with pytest.raises(ValueError, match="credentials") as exc:
        KubeConfig(kubeconfig_path="/x", endpoint_mode="ingress", ingress_url_template=template)
    assert "ingress_url_template" in str(exc.value)
    assert SECRET not in str(exc.value)


@pytest.mark.parametrize("base", [f"http://admin:{SECRET}@127.0.0.1:8001",
                                  f"https://k8s.example.com/?access_token={SECRET}"])
def test_a_proxy_link_base_with_credentials_is_refused_masked(base: str) -> None:
    with pytest.raises(ValueError, match="credentials") as exc:
        KubeConfig(kubeconfig_path="/x", endpoint_mode="proxy", proxy_link_base=base)
    assert "proxy_link_base" in str(exc.value)
    assert SECRET not in str(exc.value)


def test_a_template_bad_in_more_ways_than_one_does_not_echo_its_password() -> None:
    """Plain http and an unknown placeholder too: its error used to quote the template."""
    with pytest.raises(ValueError, match="ingress_url_template") as exc:
        KubeConfig(kubeconfig_path="/x", endpoint_mode="ingress",
                   ingress_url_template=f"http://ops:{SECRET}@ray.example.com/{{cluster}}/{{bad}}")
    assert "ingress_url_template" in str(exc.value)
    assert SECRET not in str(exc.value)


def test_the_environments_template_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"EPHEMERAL_K8S_ENDPOINT_MODE": "ingress", "EPHEMERAL_K8S_KUBECONFIG": "/x",
           "EPHEMERAL_K8S_INGRESS_URL_TEMPLATE": WITH_CREDENTIALS[0]}
    with pytest.raises(BackendUnavailable, match="ingress_url_template") as exc:
        KubeConfig.from_env(env)
    assert SECRET not in str(exc.value)


@pytest.mark.parametrize("extra", [{"ingress_url_template": WITH_CREDENTIALS[2],
                                    "endpoint_mode": "ingress"},
                                   {"proxy_link_base": f"https://u:{SECRET}@k8s.example.com"}])
def test_a_connections_extra_is_refused_naming_it(extra: dict[str, str]) -> None:
    with pytest.raises(ConnectionInvalid, match="credentials") as exc:
        _config("k8s", {"namespace": "ns", **extra})
    assert "'k8s'" in str(exc.value)
    assert SECRET not in str(exc.value)


@pytest.mark.parametrize("template", [
    "https://{cluster}-{port}.ray.example.com",
    "https://ray.example.com/{cluster}/{port}?region=eu",  # a parameter that is no secret
    "http://127.0.0.1:8001/{namespace}/{cluster}/{port}",
])
def test_templates_without_credentials_pass(template: str) -> None:
    config = KubeConfig(kubeconfig_path="/x", endpoint_mode="ingress",
                        ingress_url_template=template)
    assert config.ingress_url(cluster="c", service="s", port="dashboard").startswith("http")


@pytest.mark.parametrize(("env", "said"), [
    ({"EPHEMERAL_K8S_ENDPOINT_MODE": "dns",
      "EPHEMERAL_K8S_INGRESS_URL_TEMPLATE": "https://{cluster}-{port}.ray.example.com"},
     "ingress_url_template is used only with endpoint_mode 'ingress', and endpoint_mode is "
     "'dns'"),
    ({"EPHEMERAL_K8S_INGRESS_URL_TEMPLATE": "https://{cluster}-{port}.ray.example.com"},
     "endpoint_mode is 'auto'"),  # auto never resolves to ingress
    ({"EPHEMERAL_K8S_ENDPOINT_MODE": "dns",
      "EPHEMERAL_K8S_PROXY_LINK_BASE": "http://127.0.0.1:8001"},
     "proxy_link_base is used only with endpoint_mode 'proxy'")])
def test_a_url_setting_of_another_endpoint_mode_is_refused(env: dict[str, str],
                                                          said: str) -> None:
    """Accepted, it would never be used: the clusters are not reached, nor linked, through it."""
    with pytest.raises(BackendUnavailable) as err:
        KubeConfig.from_env({"EPHEMERAL_K8S_KUBECONFIG": "/x", **env})
    assert said in str(err.value)
    assert "unset" in str(err.value)  # and the fix
    assert "(EPHEMERAL_K8S_" in str(err.value)  # where they were set
