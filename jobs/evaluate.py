"""Evaluate a trained model on a validation dataset and write its metrics.

    python evaluate.py --model-uri <run>/model/model.pt [--data-uri URI] [--output URI]

The model directory holds model.pt (a state dict) and config.json (its shape), as train_ddp.py
writes them. Without --data-uri a held-out set is generated (another seed than training's).
Metrics (accuracy, and the binary F1 with its precision and recall for label 1) go to --output
(default: <run>/eval/metrics.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SEED, emit_result, join, read_bytes, text, to_uri, whole, write_json
from train_ddp import build_model, load_dataset

# The engine this job runs on, read (not imported) by ephemeral.adhoc: the Ray form refuses
# a Spark application before creating a cluster it would fail on.
__engine__ = "ray"


def quality(predicted: list[int], actual: list[int]) -> dict[str, float]:
    """Accuracy from the counts and the binary F1, unrounded: the gate compares these, and a
    rounded 0.79996 would pass a min_accuracy of 0.8."""
    correct = sum(1 for p, a in zip(predicted, actual, strict=True) if p == a)
    precision, recall, f1 = binary_f1(predicted, actual)
    return {"accuracy": correct / len(actual) if actual else 0.0, "f1": f1,
            "precision": precision, "recall": recall}


def binary_f1(predicted: list[int], actual: list[int], positive: int = 1
              ) -> tuple[float, float, float]:
    """(precision, recall, F1) of the positive class; 0.0 where a ratio has nothing to count
    (no positive predicted, or none to find), as scikit-learn's zero_division=0."""
    tp = sum(1 for p, a in zip(predicted, actual, strict=True) if p == a == positive)
    fp = sum(1 for p, a in zip(predicted, actual, strict=True) if p == positive != a)
    fn = sum(1 for p, a in zip(predicted, actual, strict=True) if a == positive != p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The job's arguments, refused by argparse (exit 2, naming the flag) when evaluating would
    fail on them later: the ad-hoc form runs this before it creates a cluster
    (ephemeral.adhoc.check_arguments)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-uri", required=True, type=text("the model.pt written by train_ddp.py"))
    p.add_argument("--data-uri", default=None)
    p.add_argument("--output", default=None)
    # No rows: a nan loss and an accuracy of 0, of no row, which the gate would judge.
    p.add_argument("--rows", type=whole(1), default=4096,
                   help="rows to generate without --data-uri")
    p.add_argument("--seed", type=SEED, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)

    model_uri = to_uri(args.model_uri)
    model_dir = model_uri.rsplit("/", 1)[0]
    config = json.loads(read_bytes(join(model_dir, "config.json")))
    model = build_model(config["dim"], config["hidden"])
    model.load_state_dict(torch.load(io.BytesIO(read_bytes(model_uri)), map_location="cpu"))
    model.eval()
    x_np, y_np = load_dataset(args.data_uri, args.rows, args.seed)
    if x_np.shape[1] != config["dim"]:
        print(f"ERROR: the dataset has {x_np.shape[1]} features, the model {config['dim']}",
              file=sys.stderr)
        sys.exit(2)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    with torch.no_grad():
        logits = model(x)
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        predicted = logits.argmax(dim=1)
    scores = quality(predicted.tolist(), y.tolist())
    output = to_uri(args.output) if args.output else join(model_dir.rsplit("/", 1)[0], "eval",
                                                          "metrics.json")
    metrics = {**scores, "loss": loss, "rows": len(y),
               "model_uri": model_uri, "data_uri": args.data_uri or "generated"}
    write_json(output, metrics)
    emit_result({"metrics_uri": output, "accuracy": metrics["accuracy"], "f1": metrics["f1"],
                 "loss": metrics["loss"], "rows": len(y)})


if __name__ == "__main__":
    main()
