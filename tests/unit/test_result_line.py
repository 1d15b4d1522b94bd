"""How a job's result is read from its output and from its result file (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ephemeral.jobs.results import (
    RESULT_FILE_ENV,
    ResultUnreadable,
    parse_result_line,
    read_result_file,
)

JOBS = Path(__file__).resolve().parents[2] / "jobs"
LOG = "25/11/29 10:12:13 INFO ContextCleaner: Cleaned accumulator 7"


def test_a_result_with_a_log_line_appended_to_it_is_read() -> None:
    logs = f'{LOG}\n{{"artifact_uri": "file:///a", "rows": 3}}{LOG}\n\n{LOG}\n'
    assert parse_result_line(logs) == {"artifact_uri": "file:///a", "rows": 3}


def test_a_cut_result_line_raises_instead_of_passing_an_earlier_one_off() -> None:
    logs = f'{{"artifact_uri": "file:///old"}}\n{{"artifact_uri": "fi{LOG}\nle:///a"}}\n'
    with pytest.raises(ResultUnreadable, match="job app-1 succeeded but its result cannot be read"):
        parse_result_line(logs, "app-1")


def test_no_result_line_is_no_result_and_python_reprs_are_no_result_lines() -> None:
    assert parse_result_line(f"{LOG}\n{{'loss': 0.1}}\n[1, 2]\n") == {}


def test_the_result_file_wins_and_a_broken_one_raises(tmp_path: Path) -> None:
    file = tmp_path / "result.json"
    assert read_result_file(file, "app-1") is None
    file.write_text('{"rows": 3}')
    assert read_result_file(file, "app-1") == {"rows": 3}
    for broken in ('{"rows": ', "[1]"):
        file.write_text(broken)
        with pytest.raises(ResultUnreadable, match="app-1"):
            read_result_file(file, "app-1")


def test_emit_result_writes_the_file_and_one_whole_line(tmp_path: Path) -> None:
    file = tmp_path / "result.json"
    code = f"import sys; sys.path.insert(0, {str(JOBS)!r}); import _common; " \
           "print('before', flush=True); _common.emit_result({'b': 2, 'a': 1})"
    out = subprocess.run([sys.executable, "-u", "-c", code], capture_output=True, text=True,
                         check=True, env={RESULT_FILE_ENV: str(file)}).stdout
    assert out == 'before\n{"a": 1, "b": 2}\n'
    assert json.loads(file.read_text()) == {"a": 1, "b": 2}
    assert not list(tmp_path.glob("*.tmp"))
