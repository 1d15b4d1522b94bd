"""Multi-node data-parallel training with Ray Train's TorchTrainer.

    python train_ddp.py --run RUN [--data-uri URI] [--num-workers 2] [--gpus-per-worker 0]

Ray Train starts one worker per slot of the ScalingConfig and picks the process-group backend
(NCCL with GPUs, gloo without). A worker trains on one device, so with GPUs run one worker per GPU
(``--gpus-per-worker 1``, ``--num-workers`` = the cluster's GPUs: what ``ddp_args`` renders);
more than one GPU per worker is refused, as all but one would sit idle. The model is a small MLP
classifier on tabular features read from a Parquet dataset (the ETL job's output), or generated
deterministically without one.

Checkpoints go to <artifact root>/<run>/checkpoints/ every --checkpoint-every steps. Started again
with the same --run, training resumes from the latest of them (a retry after a preemption); a
checkpoint carries the loss so far, so a rerun that resumes from the final one reports it. At
the end the model and metrics.json are written under <artifact root>/<run>/ and a one-line JSON
result with their URIs is printed.

``--launcher torchrun`` runs the same loop under torchrun (no Ray), for the throughput baseline.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    SEED,
    default_root,
    emit_result,
    join,
    number,
    run_dir,
    to_uri,
    whole,
    write_bytes,
    write_json,
)

# The engine this job runs on, read (not imported) by ephemeral.adhoc: the Ray form refuses
# a Spark application before creating a cluster it would fail on.
__engine__ = "ray"

FEATURE_PREFIX = "x"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The job's arguments; what training would fail on later (no worker, a NaN rate, a
    checkpoint every 0 steps) is refused here, by argparse (exit 2, naming the flag), which the
    ad-hoc form runs before it creates a cluster (ephemeral.adhoc.check_arguments)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", help="run name (required with Ray): artifacts go to <root>/<run>/")
    p.add_argument("--artifact-root", default=None, help="file://, s3:// or gs:// URI")
    p.add_argument("--data-uri", default=None, help="Parquet dataset with x* columns and label")
    p.add_argument("--num-workers", type=whole(1), default=2)
    p.add_argument("--gpus-per-worker", type=gpus_per_worker, default=0)
    p.add_argument("--cpus-per-worker", type=number(0), default=1)
    p.add_argument("--steps", type=whole(1), default=300)
    p.add_argument("--batch-size", type=whole(1), default=64)
    p.add_argument("--lr", type=number(0), default=0.05)
    p.add_argument("--hidden", type=whole(1), default=64)
    p.add_argument("--checkpoint-every", type=whole(1), default=100,
                   help="steps between checkpoints")
    p.add_argument("--rows", type=whole(1), default=8192,
                   help="rows to generate without --data-uri")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--launcher", choices=["ray", "torchrun"], default="ray")
    args = p.parse_args(argv)
    if args.launcher == "ray" and not args.data_uri and args.rows < args.num_workers:
        p.error(f"--rows {args.rows} is fewer than the {args.num_workers} workers "
                "(--num-workers): each trains on its own share of the generated rows, and one "
                f"with none fails at its first step; generate at least {args.num_workers} rows")
    return args


def gpus_per_worker(text: str) -> float:
    """``--gpus-per-worker``: 0 to 1. A fraction shares a GPU (Ray schedules fractions); more
    than one would leave all but one idle, as a worker trains on one device."""
    value = number(0)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is more than 1: a worker trains on one device, so all but one of its GPUs "
            "would sit idle; run one worker per GPU (--num-workers <GPUs in the cluster> "
            "--gpus-per-worker 1)")
    return value


# --- data and model (the same under Ray Train and torchrun) ---------------------------------

def generate(rows: int, dim: int = 8, seed: int = 0) -> tuple[Any, Any]:
    """A deterministic, learnable binary classification problem."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dim)).astype("float32")
    w = np.linspace(-1.0, 1.0, dim, dtype="float32")
    y = ((x @ w + 0.5 * np.sin(3 * x[:, 0])) > 0).astype("int64")
    return x, y


def load_dataset(uri: str | None, rows: int, seed: int) -> tuple[Any, Any]:
    if not uri:
        return generate(rows, seed=seed)
    import numpy as np
    import pyarrow.dataset as ds
    from _common import filesystem

    filesys, path = filesystem(to_uri(uri))
    table = ds.dataset(path, filesystem=filesys, format="parquet").to_table()
    cols = sorted(c for c in table.column_names if c.startswith(FEATURE_PREFIX))
    x = np.stack([table.column(c).to_numpy() for c in cols], axis=1).astype("float32")
    y = table.column("label").to_numpy().astype("int64")
    return x, y


def build_model(dim: int, hidden: int) -> Any:
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(dim, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 2),
    )


def train_loop(config: dict[str, Any]) -> None:
    """One training worker. Runs under Ray Train (config['launcher'] == 'ray') or torchrun."""
    import torch
    import torch.distributed as dist

    ray_mode = config["launcher"] == "ray"
    if ray_mode:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        device = ray.train.torch.get_device()
    else:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device("cpu")
    torch.manual_seed(config["seed"])

    x_all, y_all = load_dataset(config["data_uri"], config["rows"], config["seed"])
    x = torch.from_numpy(x_all[rank::world]).to(device)  # this worker's shard
    y = torch.from_numpy(y_all[rank::world]).to(device)
    model = build_model(x.shape[1], config["hidden"])
    if ray_mode:
        model = ray.train.torch.prepare_model(model)
    else:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    start_step, resumed_from, prior = 0, None, {}
    checkpoint = ray.train.get_checkpoint() if ray_mode else None
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device)
        _unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_step = resumed_from = int(state["step"])
        prior = {k: state.get(k) for k in ("loss", "first_loss")}  # None in older checkpoints
        if rank == 0:
            print(f"resumed from checkpoint at step {start_step}", flush=True)

    bs, n = config["batch_size"], x.shape[0]
    gen = torch.Generator().manual_seed(config["seed"] + rank)
    losses: list[float] = []
    samples, t0 = 0, time.perf_counter()
    for step in range(start_step, config["steps"]):
        idx = torch.randint(0, n, (bs,), generator=gen).to(device)
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        samples += bs * world
        losses.append(loss.item())
        done = step + 1
        if ray_mode and done % config["checkpoint_every"] == 0 and done < config["steps"]:
            _report(model, opt, done, {"step": done, "loss": float(loss)}, rank,
                    _loss_summary(losses, prior))
            if rank == 0:
                print(f"checkpoint at step {done} loss {float(loss):.4f}", flush=True)
    elapsed = time.perf_counter() - t0

    # A single worker has no process group: nothing to gather from.
    grouped = dist.is_available() and dist.is_initialized()
    with torch.no_grad():
        correct = (model(x).argmax(dim=1) == y).sum()
        totals = torch.tensor([float(correct), float(n)])
        if grouped:
            dist.all_reduce(totals)
    ips: list[Any] = [None] * world
    if grouped:
        dist.all_gather_object(ips, _node_ip(ray_mode))
    else:
        ips = [_node_ip(ray_mode)]
    summary = _loss_summary(losses, prior)
    metrics = {
        "step": config["steps"],
        **summary,
        "accuracy": float(totals[0] / totals[1]),
        "throughput_samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
        "world_size": world,
        "features": int(x.shape[1]),
        "node_ips": sorted({str(ip) for ip in ips}),
        "backend": dist.get_backend() if grouped else "none (one worker)",
        "resumed_from_step": resumed_from,
    }
    if ray_mode:
        _report(model, opt, config["steps"], metrics, rank, summary)
    elif rank == 0:
        print("METRICS " + json.dumps(metrics), flush=True)
    if not ray_mode:
        dist.destroy_process_group()


def _loss_summary(losses: list[float], prior: dict[str, Any]) -> dict[str, float | None]:
    """The run's loss (mean of its last 20 steps) and first loss (of its first 20): from the
    steps of this attempt, else, or for the first loss, from the checkpoint it resumed. A rerun
    that resumes from the final checkpoint trains no step, and still has a loss to report."""
    def mean(xs: list[float]) -> float:
        return float(sum(xs) / len(xs))

    return {"loss": mean(losses[-20:]) if losses else prior.get("loss"),
            "first_loss": prior.get("first_loss") if prior.get("first_loss") is not None
            else (mean(losses[:20]) if losses else None)}


def _unwrap(model: Any) -> Any:
    """The model inside DDP (a single worker's model is not wrapped)."""
    return getattr(model, "module", model)


def _node_ip(ray_mode: bool) -> str:
    if ray_mode:
        import ray

        return str(ray.util.get_node_ip_address())
    return socket.gethostbyname(socket.gethostname())


def _report(model: Any, opt: Any, step: int, metrics: dict[str, Any], rank: int,
            summary: dict[str, float | None]) -> None:
    """Every worker reports; rank 0 attaches the checkpoint (model, optimizer, step, and the
    loss ``summary`` so far, which a run resuming from it reports if it trains no step)."""
    import ray.train
    import torch

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                    "step": step, **summary}, os.path.join(d, "state.pt"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


# --- drivers ------------------------------------------------------------------------------------

def run_ray(args: argparse.Namespace) -> None:
    root = to_uri(args.artifact_root) if args.artifact_root else default_root()
    run_uri = run_dir(root, args.run)  # refuses a run that would leave the root, first
    import torch
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = {k: getattr(args, k) for k in ("data_uri", "rows", "seed", "hidden", "lr", "steps",
                                            "batch_size", "checkpoint_every", "launcher")}
    resources = {"CPU": args.cpus_per_worker}
    if args.gpus_per_worker:
        resources["GPU"] = args.gpus_per_worker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=args.num_workers,
                                     use_gpu=args.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        # Same name + storage path on a rerun: Ray Train restores the latest checkpoint.
        run_config=RunConfig(name="checkpoints", storage_path=run_uri,
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    metrics = dict(result.metrics)
    assert result.checkpoint is not None, "training reported no final checkpoint"
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state.pt"), map_location="cpu")
    buf = io.BytesIO()
    torch.save(state["model"], buf)
    model_uri = join(run_uri, "model", "model.pt")
    write_bytes(model_uri, buf.getvalue())
    write_json(join(run_uri, "model", "config.json"),
               {"dim": metrics["features"], "hidden": args.hidden, "classes": 2})
    metrics_uri = join(run_uri, "metrics.json")
    write_json(metrics_uri, {**metrics, "run": args.run, "checkpoint_uri": result.checkpoint.path})
    emit_result({
        "artifact_uri": model_uri,
        "metrics_uri": metrics_uri,
        # None only when a rerun resumed from a final checkpoint that holds no loss (older).
        "loss": _round(metrics["loss"], 5),
        "first_loss": _round(metrics["first_loss"], 5),
        "accuracy": round(metrics["accuracy"], 4),
        "throughput_samples_per_s": round(metrics["throughput_samples_per_s"], 1),
        "world_size": metrics["world_size"],
        "resumed_from_step": metrics["resumed_from_step"],
    })


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Not the parser's rule: the form checks arguments (adhoc.check_arguments) also where it
    # passes no --run (outside a DAG run).
    if args.launcher == "ray" and not args.run:
        sys.exit("train_ddp.py: --run is required (it names the run's artifact folder)")
    if args.launcher == "torchrun":
        train_loop({**vars(args), "data_uri": args.data_uri})
    else:
        run_ray(args)


if __name__ == "__main__":
    main()

