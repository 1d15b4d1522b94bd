"""The bad input corpus (tests/corpus/): one test per row. Each input is refused with a message
naming its field, and nothing is created: no cluster state, no process (issue 9, section 5)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from ephemeral.errors import SpecError
from tests.conftest import dag_file_module

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
BASES: dict[str, Any] = yaml.safe_load((CORPUS / "bases.yaml").read_text())
DELETE = "~delete"


def load_rows(name: str) -> list[dict[str, Any]]:
    path = CORPUS / name
    rows = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(
        path.read_text())
    assert isinstance(rows, list)
    return rows


def params(name: str) -> list[Any]:
    return [pytest.param(row, id=row["id"]) for row in load_rows(name)]


FILES = ["specs.yaml", "profiles.yaml", "overrides.yaml", "cli.yaml", "trigger_form.json"]


def test_the_corpus_is_large_and_every_row_is_well_formed() -> None:
    rows = {name: load_rows(name) for name in FILES}
    assert sum(map(len, rows.values())) >= 60
    for name, found in rows.items():
        ids = [r["id"] for r in found]
        assert len(ids) == len(set(ids)), f"{name}: repeated ids"
        assert all(isinstance(r.get("field"), str) and r["field"] for r in found), name


# --- nothing is created -----------------------------------------------------------------------


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _claims_of(home: Path) -> list[Path]:
    """Machine-wide slot claims that name a state folder under ``home`` (a cluster started)."""
    from ephemeral.backends.local.slots import runtime_dir

    return [c for c in (runtime_dir() / "slots").glob("*")
            if Path(c.read_text().strip()).is_relative_to(home)]


@pytest.fixture
def nothing_created(ephemeral_home: Path) -> Iterator[None]:
    before = _descendants()
    yield
    clusters = ephemeral_home / "clusters"
    assert not (clusters.is_dir() and any(clusters.iterdir())), "a cluster state folder appeared"
    assert _claims_of(ephemeral_home) == [], "a cluster claimed a slot"
    started = _descendants() - before
    assert not started, f"processes started: {sorted(started)}"


def assert_names(err: SpecError, row: dict[str, Any]) -> None:
    field = "" if row["field"] == "<root>" else row["field"]
    assert field in err.fields, f"fields named: {err.fields}\n{err}"
    assert (row["field"] if field else "<root>") in str(err)
    if "message" in row:
        assert row["message"] in str(err)


# --- specs, profiles, overrides ---------------------------------------------------------------


def edited(base: str, changes: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of a base spec with ``changes`` (path/with/slashes -> value) applied."""
    data: dict[str, Any] = copy.deepcopy(BASES[base])
    for path, value in (changes or {}).items():
        *parents, last = path.split("/")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            i = int(last)
            if value == DELETE:
                del node[i]
            elif i == len(node):
                node.append(value)
            else:
                node[i] = value
        elif value == DELETE:
            del node[last]
        else:
            node[last] = value
    return data


def spec_file(row: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    text = row["yaml"] if "yaml" in row else yaml.safe_dump(edited(row["base"], row.get("set")))
    path.write_text(text)
    return path


@pytest.mark.usefixtures("nothing_created")
@pytest.mark.parametrize("row", params("specs.yaml"))
def test_bad_spec_is_refused(row: dict[str, Any], tmp_path: Path) -> None:
    from ephemeral.specs import load_file

    with pytest.raises(SpecError) as err:
        load_file(spec_file(row, tmp_path))
    assert_names(err.value, row)


@pytest.mark.usefixtures("nothing_created")
@pytest.mark.parametrize("row", params("profiles.yaml"))
def test_bad_profile_is_refused(row: dict[str, Any], tmp_path: Path) -> None:
    from ephemeral.specs import load_file, resolve

    path = spec_file(row, tmp_path)
    load_file(path)  # the file itself is valid: only applying the profile fails
    with pytest.raises(SpecError) as err:
        resolve(str(path), row["profile"], specs_dir=tmp_path)
    assert_names(err.value, row)


@pytest.mark.usefixtures("nothing_created")
@pytest.mark.parametrize("row", params("overrides.yaml"))
def test_bad_override_is_refused(row: dict[str, Any]) -> None:
    from ephemeral.specs import resolve

    with pytest.raises(SpecError) as err:
        resolve(row["ref"], row.get("profile"), row["overrides"], specs_dir=ROOT / "cluster_specs")
    assert_names(err.value, row)


# --- the command line -------------------------------------------------------------------------


@pytest.mark.usefixtures("nothing_created")
@pytest.mark.parametrize("row", params("cli.yaml"))
def test_bad_command_line_is_refused(row: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from ephemeral.cli.main import app

    result = CliRunner().invoke(app, row["argv"])
    text = result.stdout + result.stderr
    assert result.exit_code == 2, f"exit {result.exit_code}: {text}"
    assert row["field"] in text, text
    if "message" in row:
        assert row["message"] in text, text


# --- the trigger form -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adhoc_dag() -> Any:
    """The ray_job_adhoc DAG object, imported from its file (parsing it creates nothing)."""
    return dag_file_module("ray_job_adhoc", "corpus_ray_job_adhoc").dag


def form_refusals(dag: Any, conf: dict[str, Any]) -> dict[str, str]:
    """What the form refuses, by field: the DAG's params as one JSON schema (what the UI and
    the REST API validate), and Airflow's own params validation with its message."""
    import jsonschema
    from airflow.sdk.exceptions import ParamValidationError

    fields = dict(dag.params.items())
    schema = {"type": "object", "properties": {k: p.schema for k, p in fields.items()}}
    merged = {k: p.value for k, p in fields.items()} | conf
    by_schema = {str(e.path[0]): e.message
                 for e in jsonschema.Draft202012Validator(schema).iter_errors(merged)}
    airflow = copy.deepcopy(dag.params)
    try:
        for key, value in conf.items():
            airflow[key] = value
        airflow.validate()
    except ParamValidationError as err:
        by_schema["airflow"] = str(err)
    return by_schema


@pytest.mark.usefixtures("nothing_created")
@pytest.mark.parametrize("row", params("trigger_form.json"))
def test_bad_trigger_conf_is_refused(row: dict[str, Any], adhoc_dag: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeral.adhoc import RequestError

    for key, value in row.get("env", {}).items():
        monkeypatch.setenv(key, value)
    refused = form_refusals(adhoc_dag, row["conf"])
    if row["refused_by"] == "form":
        assert row["field"] in refused, refused
        # Airflow's message (the REST API's 400, the UI's error) names the param too.
        assert f"Invalid input for param {row['field']}" in refused["airflow"]
    else:
        assert refused == {}, f"the form already refuses it: {refused}"
    # The DAG's validation task refuses every row, also those the form refuses: a conf that
    # reaches it some other way (dag.test, a changed form) is still checked.
    check = adhoc_dag.get_task("validate_request").python_callable
    merged = {k: p.value for k, p in adhoc_dag.params.items()} | row["conf"]
    with pytest.raises(RequestError) as err:
        check(params=merged)
    # The task may name an entry of the field the form names as a whole (pip[0] for pip).
    named = [f for f in err.value.fields if f == row["field"] or f.startswith(row["field"] + "[")]
    assert named, f"fields named: {err.value.fields}\n{err.value}"
    assert f"{named[0]}: " in str(err.value)
    if "message" in row:
        assert row["message"] in str(err.value)
