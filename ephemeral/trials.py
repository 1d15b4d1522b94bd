"""Trial sweeps from versioned parameter files, and the pool that caps trials running at once.

A sweep is a folder of JSON files, one trial each (``params/<sweep>/<trial>.json``), kept in the
repository next to ``cluster_specs/`` and ``jobs/`` and reviewed like them: adding a trial is
adding a file, and a run's trials are recorded in the DAG version it ran (the DAG maps over the
files when it is parsed, so no list of trials passes through XCom, whatever its length).
``$EPHEMERAL_PARAMS_DIR`` points elsewhere when the DAGs are deployed apart from the checkout.

Each file is an object of training options (``jobs/train_ddp.py`` flags, in snake_case)::

    {"lr": 0.02, "hidden": 64}

A file that is not such an object, or names an option the job does not take, fails the DAG's
import naming the file and the key: a typo must not run a sweep of defaults.

Trials run in the Airflow pool ``$EPHEMERAL_GPU_POOL`` (default ``ephemeral_gpu_trials``), one
slot each, so the pool's size caps the GPU trials running at once across all runs and DAGs. A
pool is not created by parsing a DAG (Airflow 3 DAG processors have no database); create it once
per deployment: ``airflow pools set ephemeral_gpu_trials 2 "GPU trials at once"``. Until it
exists the scheduler does not schedule the trials (it logs "Tasks using non-existent pool").
``dag.test()`` ignores pools.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ephemeral.settings import default_dir, folder, setting

PARAMS_VAR = "EPHEMERAL_PARAMS_DIR"
DEFAULT_POOL = "ephemeral_gpu_trials"
# What jobs/train_ddp.py takes per trial (the scaling flags come from the cluster, the run and
# the data from the DAG).
TRAIN_OPTIONS = {"lr": float, "hidden": int, "batch_size": int, "steps": int, "seed": int,
                 "checkpoint_every": int}
_TRIAL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,60}[a-z0-9])?$")


class TrialFileError(ValueError):
    """A parameter file is unusable: names the file, the key and the fix."""


def params_dir() -> Path:
    return folder("params_dir") or default_dir("params")


def gpu_pool() -> str:
    return setting("gpu_pool") or DEFAULT_POOL


def load_trials(sweep: str, folder: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(trial name, options) of every ``<folder>/<sweep>/*.json``, sorted by name."""
    where = (folder or params_dir()) / sweep
    files = sorted(where.glob("*.json"))
    if not files:
        raise TrialFileError(f"no trial files in {where} (expected <trial>.json files there); "
                             f"set {PARAMS_VAR} to the folder that holds the sweeps")
    return [(path.stem, _read(path)) for path in files]


def _read(path: Path) -> dict[str, Any]:
    if not _TRIAL_NAME.match(path.stem):
        raise TrialFileError(f"{path}: the trial name {path.stem!r} must be lower-case letters, "
                             "digits, '-', '_' and '.' (it becomes part of artifact paths)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TrialFileError(f"{path}: not readable JSON: {err}") from err
    if not isinstance(data, dict):
        raise TrialFileError(f"{path}: expected an object such as {{\"lr\": 0.02}}, got "
                             f"{type(data).__name__}")
    for key, value in data.items():
        kind = TRAIN_OPTIONS.get(key)
        if kind is None:
            raise TrialFileError(f"{path}: unknown option {key!r}; known: "
                                 f"{', '.join(sorted(TRAIN_OPTIONS))}")
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                kind is int and not isinstance(value, int)):
            raise TrialFileError(f"{path}: {key} must be a{'n integer' if kind is int else ' number'}"
                                 f", got {value!r}")
    return data


def trial_flags(options: dict[str, Any]) -> str:
    """``--lr 0.02 --hidden 64`` for a trial's options."""
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in sorted(options.items()))


def trial_argv(options: dict[str, Any]) -> list[str]:
    """``["--lr", "0.02", "--hidden", "64"]``: a trial's options as words of an argv
    entrypoint."""
    return [w for key, value in sorted(options.items())
            for w in (f"--{key.replace('_', '-')}", str(value))]


def best_trial(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the lowest final loss, from the trial tasks' results (``JobResult``
    dicts): the one rule that picks the model the run evaluates, serves and registers.

    A trial without a finite loss ranks last (``train_ddp.py`` reports none when a rerun resumed
    from a final checkpoint that holds none; a diverged run reports NaN); if no trial has one,
    that is an error naming them, not a model picked at random."""
    results = list(results)
    ranked = [(loss, r) for r in results if (loss := _loss(r)) is not None]
    if not ranked:
        jobs = ", ".join(f"{r.get('job_id')} (loss {_raw_loss(r)!r})" for r in results) or "none"
        raise ValueError(f"no trial reported a finite loss, so none can be picked: {jobs}. Rerun "
                         "the trials after deleting their checkpoints (<run>/checkpoints) or "
                         "with another run name, so that they train and report a loss")
    best = min(ranked, key=lambda pair: pair[0])[1]
    return {"job_id": best["job_id"], "model_uri": best["result"]["artifact_uri"],
            "loss": best["result"]["loss"]}


def _raw_loss(result: dict[str, Any]) -> Any:
    out = result.get("result")
    return out.get("loss") if isinstance(out, dict) else None


def _loss(result: dict[str, Any]) -> float | None:
    """A trial's loss as a number to rank by; None when it has none (or not a finite one)."""
    raw = _raw_loss(result)
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        loss = float(raw)
    except ValueError:
        return None
    return loss if math.isfinite(loss) else None
