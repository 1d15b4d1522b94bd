"""The reference jobs' parse_args refuse what the job would fail on later (an empty model URI,
no rows, a nan timeout), with argparse's usage error naming the flag: the ad-hoc form runs it
before it creates a cluster (``adhoc.check_arguments``). train_ddp.py's own: test_train_ddp."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
import etl_features
import evaluate
import serve_latency

MODEL = ["--model-uri", "s3://b/run/model/model.pt"]


def _said(job: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        job.parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(("job", "argv", "said"), [
    (evaluate, [], "the following arguments are required: --model-uri"),
    (evaluate, ["--model-uri", " "], "argument --model-uri: ' ' is empty: give the model.pt"),
    (evaluate, [*MODEL, "--rows", "0"], "argument --rows: '0' is not a whole number of 1 or more"),
    (evaluate, [*MODEL, "--seed", "-3"], "argument --seed: '-3' is not a whole number from 0"),
    (serve_latency, [*MODEL, "--timeout", "nan"],
     "argument --timeout: 'nan' is not a finite number above 0"),
    (serve_latency, [*MODEL, "--timeout", "0"], "argument --timeout: '0' is not a finite number"),
    (serve_latency, [*MODEL, "--timeout", "inf"], "argument --timeout: 'inf' is not a finite"),
    (serve_latency, [*MODEL, "--concurrency", "0"],
     "argument --concurrency: '0' is not a whole number of 1 or more"),
    (serve_latency, [*MODEL, "--requests", "0"], "argument --requests: '0' is not a whole number"),
    (serve_latency, [*MODEL, "--warmup", "-1"],
     "argument --warmup: '-1' is not a whole number of 0 or more"),
    (serve_latency, [*MODEL, "--rows", "0"], "argument --rows: '0' is not a whole number"),
    (serve_latency, ["--model-uri", ""], "argument --model-uri: '' is empty"),
    (etl_features, ["--run", "r", "--drift", "nan"], "argument --drift: 'nan' is not a finite"),
    (etl_features, ["--run", "r", "--partitions", "0"], "argument --partitions: '0' is not a"),
    (etl_features, ["--run", "r", "--rows", "0"], "argument --rows: '0' is not a whole number"),
])
def test_what_the_job_would_fail_on_is_refused_while_parsing(
        job: ModuleType, argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert said in _said(job, argv, capsys)


def test_what_the_jobs_take_passes() -> None:
    args = evaluate.parse_args([*MODEL, "--data-uri", "s3://b/val", "--output", "s3://b/m.json"])
    assert (args.rows, args.seed, args.output) == (4096, 1, "s3://b/m.json")
    args = serve_latency.parse_args([*MODEL, "--timeout", "0.5", "--warmup", "0"])
    assert (args.timeout, args.warmup, args.requests) == (0.5, 0, 400)
    assert etl_features.parse_args(["--run", "r", "--drift", "-1.5"]).drift == -1.5
