"""A Spark application's result survives spark-submit's merged output, and a result that was
declared but cannot be read fails the job instead of becoming ``{}`` (issue 10: the reference
DAG's ETL succeeded with an empty result, and its trials failed to render).

The driver runs on ``local[1]``: what is tested is the channel between the driver and
``spark_submit``, which is the same against a cluster's master (client mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ephemeral.jobs.results import ResultUnreadable
from ephemeral.jobs.spark_jobs import spark_submit

pytestmark = [pytest.mark.local, pytest.mark.slow]
APP = Path(__file__).resolve().parent / "scripts" / "spark_result.py"
RESULT = {"artifact_uri": "file:///tmp/features/train", "rows": 4}


def submit(mode: str, lines: list[str]) -> dict[str, object]:
    return spark_submit("local[1]", str(APP), [mode], sink=lines.append, timeout=300).result


def test_the_result_channel_is_read_whatever_the_output_holds() -> None:
    lines: list[str] = []
    assert submit("channel", lines) == RESULT
    # The log line did land inside the printed line: the output alone could not be trusted.
    assert any(line.startswith('{"artifact_uri"') and "spark_result" in line for line in lines)


def test_a_result_line_with_a_log_line_appended_is_still_read() -> None:
    lines: list[str] = []
    assert submit("appended", lines) == RESULT
    assert any(line.startswith('{"artifact_uri"') and "spark_result" in line for line in lines)


def test_a_cut_result_line_fails_the_job_instead_of_an_empty_result() -> None:
    with pytest.raises(ResultUnreadable, match="result cannot be read"):
        submit("cut", [])
