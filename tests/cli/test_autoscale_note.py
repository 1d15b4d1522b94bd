"""A spec whose worker group has minReplicas != maxReplicas says, on a backend that does not
autoscale, that it starts ``replicas`` nodes and keeps them: never a silent no-op."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli import cli

IMAGE = "image "  # the local backend's note that it runs the installed engine (always)
NOTE = ("worker group 'cpu': minReplicas 1 != maxReplicas 4, but the {backend} backend does not "
        "autoscale: it starts replicas (2) nodes and keeps them")


def test_specs_show_says_it_on_stderr_and_in_json() -> None:
    proc = cli("specs", "show", "ray/adhoc-cpu")
    assert "note: " + NOTE.format(backend="local") in proc.stderr.replace("\n", " ")
    doc = json.loads(cli("specs", "show", "ray/adhoc-cpu", "--json").stdout)
    assert [n.split(" (on Kubernetes")[0] for n in doc["notes"]
            if not n.startswith(IMAGE)] == [NOTE.format(backend="local")]


def test_fixed_size_groups_say_nothing() -> None:
    doc = json.loads(cli("specs", "show", "ray/adhoc-cpu", "-p", "ci-cpu", "--json").stdout)
    assert [n for n in doc["notes"] if not n.startswith(IMAGE)] == []
    assert [n for n in json.loads(cli("specs", "show", "spark/etl", "--json").stdout)["notes"]
            if not n.startswith(IMAGE)] == []


def test_up_says_it_for_its_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # In this process, on the in-memory test double (the CLI refuses it by name).
    from typer.testing import CliRunner

    from ephemeral.backends.fake import InMemoryBackend
    from ephemeral.cli import main

    monkeypatch.setattr(main, "_backend", lambda _name: InMemoryBackend(ready_after_probes=1))
    run = CliRunner().invoke(main.app, ["up", "ray/adhoc-cpu", "--json"])
    doc = json.loads(run.stdout)
    assert [n.split(" (on Kubernetes")[0] for n in doc["notes"]
            if not n.startswith(IMAGE)] == [NOTE.format(backend="fake")]
    run = CliRunner().invoke(main.app, ["up", "ray/adhoc-cpu"])
    assert "note: " + NOTE.format(backend="fake") in run.stderr.replace("\n", " ")
