"""A kubeconfig user's exec credential plugin that never answers (a login prompt nobody sees,
an identity provider out of reach) holds no task: the Kubernetes client waits for it without a
timeout, at load and whenever its token expires; here both waits end at ``request_timeout``,
as a BackendUnavailable that names the kubeconfig user."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import yaml

from ephemeral.backends.kubernetes.client import build_api_client
from ephemeral.backends.kubernetes.config import KubeConfig
from ephemeral.errors import BackendUnavailable
from tests.unit.test_cluster_boundary import in_thread

# Answers once with a token that expires within the client's five minutes of skew (so the
# next request refreshes it), then never again: it sleeps past any test.
PLUGIN = """
import json, sys, time
from pathlib import Path
marker = Path(sys.argv[1])
if marker.exists() or sys.argv[2] == "hang":
    time.sleep(15)
marker.write_text("answered")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1",
                  "kind": "ExecCredential",
                  "status": {"token": "t0k3n", "expirationTimestamp": sys.argv[3]}}))
"""


def kubeconfig(tmp_path: Path, mode: str) -> Path:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    soon = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
            ).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "eks-admin", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "interactiveMode": "Never",
            "command": sys.executable,
            "args": [str(plugin), str(tmp_path / "answered"), mode, soon]}}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "eks-admin",
                                               "namespace": "ml"}}]}))
    return path


def test_a_plugin_that_never_answers_ends_at_the_request_timeout(tmp_path: Path) -> None:
    config = KubeConfig(kubeconfig_path=str(kubeconfig(tmp_path, "hang")), request_timeout=1)
    err = in_thread(lambda: build_api_client(config), 6)
    assert isinstance(err, BackendUnavailable), err
    assert "kubeconfig user 'eks-admin'" in str(err)
    assert "took over 1s (request_timeout)" in str(err)


def test_a_refresh_that_never_answers_ends_at_the_request_timeout(tmp_path: Path) -> None:
    config = KubeConfig(kubeconfig_path=str(kubeconfig(tmp_path, "once")), request_timeout=1)
    api = build_api_client(config)  # the plugin answered once
    try:
        err = in_thread(lambda: api.configuration.get_api_key_with_prefix("BearerToken"), 6)
        assert isinstance(err, BackendUnavailable), err
        assert "'eks-admin'" in str(err)
    finally:
        api.close()


def test_a_plugin_that_answers_gives_its_token(tmp_path: Path) -> None:
    config = KubeConfig(kubeconfig_path=str(kubeconfig(tmp_path, "once")), request_timeout=5)
    api = build_api_client(config)
    try:
        assert api.configuration.api_key["BearerToken"] == "Bearer t0k3n"
    finally:
        api.close()
