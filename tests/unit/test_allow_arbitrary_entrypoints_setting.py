"""``allow_arbitrary_entrypoints`` is a declared setting like the others: ``$EPHEMERAL_ALLOW_
ARBITRARY_ENTRYPOINTS``, else Airflow's ``[ephemeral] allow_arbitrary_entrypoints`` (airflow.cfg
or ``AIRFLOW__EPHEMERAL__...``), else false. The ad-hoc DAG read only the environment variable,
so the airflow.cfg option was silently ignored."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ephemeral.config_section import BY_KEY, provider_config
from ephemeral.errors import SpecError
from ephemeral.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
VARS = ("EPHEMERAL_ALLOW_ARBITRARY_ENTRYPOINTS", "AIRFLOW__EPHEMERAL__ALLOW_ARBITRARY_ENTRYPOINTS")


@pytest.fixture
def airflow_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    # The file is read only where no loaded Airflow answers (another test may have loaded it).
    for name in ("airflow.configuration", "airflow.sdk.configuration"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    path = tmp_path / "airflow.cfg"
    path.write_text("[core]\nload_examples = False\n")
    monkeypatch.setenv("AIRFLOW_CONFIG", str(path))
    return path


def test_it_is_declared_and_documented() -> None:
    option = BY_KEY["allow_arbitrary_entrypoints"]
    assert (option.type, option.default, option.env_var) == ("boolean", "false", VARS[0])
    assert "allow_arbitrary_entrypoints" in provider_config()["ephemeral"]["options"]
    assert "`allow_arbitrary_entrypoints`" in (ROOT / "docs" / "configuration.md").read_text()


def test_unset_it_is_false(airflow_cfg: Path) -> None:
    assert get_settings().allow_arbitrary_entrypoints is False


def test_airflow_cfg_turns_it_on(airflow_cfg: Path) -> None:
    airflow_cfg.write_text("[ephemeral]\nallow_arbitrary_entrypoints = True\n")
    assert get_settings().allow_arbitrary_entrypoints is True


def test_the_environment_variables_still_work_and_win(
        airflow_cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    airflow_cfg.write_text("[ephemeral]\nallow_arbitrary_entrypoints = true\n")
    monkeypatch.setenv(VARS[0], "false")
    assert get_settings().allow_arbitrary_entrypoints is False
    monkeypatch.delenv(VARS[0])
    airflow_cfg.write_text("[core]\n")
    monkeypatch.setenv(VARS[1], "true")
    assert get_settings().allow_arbitrary_entrypoints is True
    monkeypatch.setenv(VARS[0], "true")
    assert get_settings().allow_arbitrary_entrypoints is True


def test_a_value_that_is_neither_fails_naming_its_source(
        airflow_cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARS[0], "ture")
    settings = get_settings()  # what a teardown or the reaper needs still loads
    assert settings.home
    with pytest.raises(SpecError, match=r"EPHEMERAL_ALLOW_ARBITRARY_ENTRYPOINTS.*'ture' is not "
                                        r"true or false"):
        _ = settings.allow_arbitrary_entrypoints


def test_the_adhoc_dag_reads_the_setting_not_the_environment() -> None:
    source = (ROOT / "dags" / "ray_job_adhoc.py").read_text()
    assert "get_settings().allow_arbitrary_entrypoints" in source
    assert "os.environ" not in source
