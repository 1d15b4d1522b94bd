"""The [ephemeral] config section: one declaration behind the provider info, the docs and the
readers, and one precedence rule (EPHEMERAL_X, then Airflow's [ephemeral] x, then the default)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeral.config_section import BY_KEY, NOT_SETTINGS, OPTIONS, SECTION, markdown
from ephemeral.errors import SpecError
from ephemeral.settings import count, get_settings, lookup, setting

ROOT = Path(__file__).resolve().parents[2]
# EPHEMERAL_X names, not the tail of AIRFLOW__EPHEMERAL__X nor a prefix such as EPHEMERAL_K8S_*.
ACCESSOR = re.compile(r"\b(?:setting|lookup|count|number|flag|folder|file_path)\(\s*\"([a-z0-9_]+)\"")
NAME = re.compile(r"(?<![A-Z0-9_])EPHEMERAL_[A-Z0-9]+(?:_[A-Z0-9]+)*(?![A-Z0-9_*])")


def test_the_doc_is_generated_from_the_declaration() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == markdown(), \
        "regenerate it: python -m ephemeral.config_section"


def test_every_ephemeral_setting_the_package_reads_is_declared() -> None:
    used = {m for path in (ROOT / "ephemeral").rglob("*.py")
            for m in NAME.findall(path.read_text())}
    declared = {o.env_var for o in OPTIONS}
    assert used - declared - set(NOT_SETTINGS) == set(), \
        "declare it in ephemeral/config_section.py OPTIONS (or NOT_SETTINGS if no setting)"
    assert "EPHEMERAL_ARTIFACT_ROOT" in used
    # and every key read through the accessors (a literal one; f"k8s_{key}" is checked by
    # the KeyError a read of an undeclared key raises)
    keys = {m for path in (ROOT / "ephemeral").rglob("*.py")
            for m in ACCESSOR.findall(path.read_text())}
    assert {"k8s_namespace", "xcom_max_bytes", "notifier", "cost_file"} <= keys
    assert keys - set(BY_KEY) == set()


def test_the_provider_info_declares_the_section_in_airflows_format() -> None:
    import jsonschema
    from airflow import settings as airflow_settings  # noqa: F401  (Airflow's package root)

    from ephemeral.airflow.provider import get_provider_info

    schema = json.loads((Path(sys.modules["airflow"].__file__).parent  # type: ignore[arg-type]
                         / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    options = info["config"][SECTION]["options"]
    assert list(options) == [o.key for o in OPTIONS]
    for o in OPTIONS:
        entry = options[o.key]
        assert set(entry) >= {"description", "version_added", "type", "example", "default"}
        assert entry["default"] == o.default
        assert entry["type"] == o.type
        assert o.env_var in entry["description"]
        # the doc says the same
        assert f"### `{o.key}`" in markdown()
        assert f"`{o.env_var}`" in markdown()
    assert options["kubeconfig_content"]["sensitive"] is True
    assert options["airflow_password"]["sensitive"] is True


@pytest.fixture
def conf_option() -> Iterator[None]:
    """[ephemeral] options set in this process's Airflow configuration, removed afterwards."""
    from airflow.configuration import conf

    set_here: list[str] = []

    def put(key: str, value: str) -> None:
        if not conf.has_section(SECTION):
            conf.add_section(SECTION)
        conf.set(SECTION, key, value)
        set_here.append(key)

    yield put  # type: ignore[misc]
    for key in set_here:
        conf.remove_option(SECTION, key)


def test_env_var_then_airflow_config_then_default(conf_option: object,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPHEMERAL_XCOM_MAX_BYTES", raising=False)
    monkeypatch.delenv("AIRFLOW__EPHEMERAL__XCOM_MAX_BYTES", raising=False)
    from ephemeral.airflow.xcom import max_bytes

    assert lookup("xcom_max_bytes") == ("4096", "default")
    conf_option("xcom_max_bytes", "123")  # type: ignore[operator]
    assert lookup("xcom_max_bytes") == ("123", "[ephemeral] xcom_max_bytes")
    assert max_bytes() == 123
    monkeypatch.setenv("AIRFLOW__EPHEMERAL__XCOM_MAX_BYTES", "77")
    assert max_bytes() == 77
    monkeypatch.setenv("EPHEMERAL_XCOM_MAX_BYTES", "9")
    assert lookup("xcom_max_bytes") == ("9", "EPHEMERAL_XCOM_MAX_BYTES")
    assert max_bytes() == 9


def test_settings_read_through_airflow_config(conf_option: object, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("EPHEMERAL_ARTIFACT_ROOT", "EPHEMERAL_JOB_ENV_ALLOW", "EPHEMERAL_INSTANCE",
                "EPHEMERAL_COST_GPU_HOUR", "EPHEMERAL_COST_FILE"):
        monkeypatch.delenv(var, raising=False)
    conf_option("artifact_root", "s3://bucket/root")  # type: ignore[operator]
    conf_option("instance", "staging")  # type: ignore[operator]
    conf_option("job_env_allow", "AWS_REGION")  # type: ignore[operator]
    conf_option("cost_gpu_hour", "2.5")  # type: ignore[operator]
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    s = get_settings()
    assert s.artifact_root == "s3://bucket/root"
    assert (s.instance, s.instance_explicit) == ("staging", True)
    from ephemeral.report.costs import load_prices
    from ephemeral.settings import job_environ

    assert job_environ()["AWS_REGION"] == "eu-west-1"
    prices = load_prices()
    assert prices is not None
    assert prices.default.gpu_hour == 2.5
    # A bad value names where it came from, where it is used: the form's setting does not
    # stop what only needs the others (a teardown, the reaper).
    conf_option("adhoc_max_workers", "lots")  # type: ignore[operator]
    settings = get_settings()
    with pytest.raises(SpecError, match=r"\[ephemeral\] adhoc_max_workers"):
        _ = settings.adhoc_max_workers


def test_an_explicit_environment_ignores_this_process_config(conf_option: object) -> None:
    conf_option("k8s_namespace", "from-conf")  # type: ignore[operator]
    assert setting("k8s_namespace", {}) == "default"
    assert setting("k8s_namespace", {"AIRFLOW__EPHEMERAL__K8S_NAMESPACE": "ml"}) == "ml"
    assert count("adhoc_max_workers", {"EPHEMERAL_ADHOC_MAX_WORKERS": "60"}) == 60
    with pytest.raises(KeyError):
        setting("not_declared")


def test_the_cli_reads_airflow_cfg_without_importing_airflow(tmp_path: Path) -> None:
    home = tmp_path / "airflow"
    home.mkdir()
    (home / "airflow.cfg").write_text(
        "[core]\ndags_folder = {AIRFLOW_HOME}/dags\n\n"
        f"[{SECTION}]\nbackend = kubernetes\nk8s_namespace = ml\ninstance = prod-eu\n")
    code = ("import json, sys, time\n"
            "t = time.monotonic()\n"
            "from ephemeral.settings import get_settings, setting\n"
            "from ephemeral.backends.kubernetes.config import KubeConfig\n"
            "s = get_settings()\n"
            "print(json.dumps({'backend': s.backend, 'instance': s.instance,\n"
            "  'ns': KubeConfig.from_env().namespace, 'linger': setting('run_end_linger'),\n"
            "  'airflow': [m for m in sys.modules if m.split('.')[0] == 'airflow']}))\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EPHEMERAL_", "AIRFLOW"))} | {"AIRFLOW_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"backend": "kubernetes", "instance": "prod-eu", "ns": "ml", "linger": "30",
                   "airflow": []}
    # the environment still wins over the file
    env |= {"EPHEMERAL_BACKEND": "local", "AIRFLOW__EPHEMERAL__K8S_NAMESPACE": "other"}
    got = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                    text=True, check=True).stdout.strip().splitlines()[-1])
    assert (got["backend"], got["ns"]) == ("local", "other")


def test_airflow_config_list_shows_the_section(airflow_db: str) -> None:
    airflow = Path(sys.executable).parent / "airflow"
    env = dict(os.environ) | {"AIRFLOW__EPHEMERAL__K8S_NAMESPACE": "ml",
                              "AIRFLOW__EPHEMERAL__AIRFLOW_PASSWORD": "s3cret"}
    out = subprocess.run([str(airflow), "config", "list", "--section", SECTION, "--show-values",
                          "--hide-sensitive"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"[{SECTION}]")
    # unset options are shown commented out
    shown = dict(line.removeprefix("# ").split(" = ", 1) for line in out.splitlines()
                 if " = " in line)
    assert set(shown) == set(BY_KEY)
    assert shown["xcom_max_bytes"] == "4096"  # the declared default
    assert shown["k8s_namespace"] == "ml"
    assert "s3cret" not in out  # declared sensitive
