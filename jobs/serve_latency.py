"""Serve a candidate model with Ray Serve on this cluster and measure its latency under a bounded
load, then shut Serve down.

    python serve_latency.py --model-uri <run>/model/model.pt [--data-uri URI]
                            [--requests 400] [--concurrency 4] [--warmup 20]

The model is served where it would run: one replica (1 CPU, torch on one thread) behind Serve's
HTTP proxy, bound to 127.0.0.1 on a free port of the head node, where this driver runs. The load
goes through that proxy over loopback HTTP rather than a DeploymentHandle: a client of the
model pays for the proxy hop, the JSON and the router, so that is the latency to gate on. It is
a closed loop: --concurrency threads, each with one keep-alive connection, send --requests
single-row requests in all (after --warmup unmeasured ones), rows taken in turn from the
validation set (--data-uri) or a generated one.

Every response is checked against the model's own prediction for its row: a wrong or failed
answer counts as an error (a broken server must not pass on speed). Serve is shut down whatever
happens, and the job checks that no Serve actor is left and the port is closed. The last line is
the JSON result: P50/P95/P99 latency in ms, throughput in requests/s, errors, and how long
starting Serve, the load and the shutdown took.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SEED, emit_result, fail, join, number, read_bytes, text, to_uri, whole
from train_ddp import build_model, load_dataset

# The engine this job runs on, read (not imported) by ephemeral.adhoc: the Ray form refuses
# a Spark application before creating a cluster it would fail on.
__engine__ = "ray"

APP = "gate-candidate"
ROUTE = "/predict"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The job's arguments, refused by argparse (exit 2, naming the flag) when the load would
    fail on them later (no request, a nan timeout, which the socket refuses mid-run): the ad-hoc
    form runs this before it creates a cluster (ephemeral.adhoc.check_arguments)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-uri", required=True, type=text("the model.pt written by train_ddp.py"))
    p.add_argument("--data-uri", default=None)
    p.add_argument("--rows", type=whole(1), default=1024,
                   help="rows to generate without --data-uri")
    p.add_argument("--seed", type=SEED, default=2)
    p.add_argument("--requests", type=whole(1), default=400, help="measured requests (fixed count)")
    p.add_argument("--concurrency", type=whole(1), default=4, help="requests in flight at once")
    p.add_argument("--warmup", type=whole(0), default=20, help="unmeasured requests first")
    p.add_argument("--timeout", type=number(0, above=True), default=30.0,
                   help="seconds per request")
    return p.parse_args(argv)


def load_model(model_uri: str) -> Any:
    import torch

    model_dir = model_uri.rsplit("/", 1)[0]
    config = json.loads(read_bytes(join(model_dir, "config.json")))
    model = build_model(config["dim"], config["hidden"])
    model.load_state_dict(torch.load(io.BytesIO(read_bytes(model_uri)), map_location="cpu"))
    return model.eval()


def deployment() -> Any:
    """The Serve deployment: the model object is passed in (pickled with the app), so the replica
    needs neither this folder nor the artifact store."""
    from ray import serve

    @serve.deployment(name="model", num_replicas=1, ray_actor_options={"num_cpus": 1})
    class Model:
        def __init__(self, model: Any) -> None:
            import torch

            torch.set_num_threads(1)  # one request at a time on its one CPU
            self.model = model.eval()

        async def __call__(self, request: Any) -> dict[str, Any]:
            import torch

            body = await request.json()
            with torch.no_grad():
                logits = self.model(torch.tensor([body["features"]], dtype=torch.float32))
                probs = torch.softmax(logits, dim=1)[0]
            label = int(probs.argmax())
            return {"label": label, "p": round(float(probs[label]), 5)}

    return Model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def drive(port: int, rows: list[list[float]], expected: list[int], count: int,
          concurrency: int, timeout: float) -> tuple[list[float], int, float, str | None]:
    """Send ``count`` requests, ``concurrency`` at a time: (latencies in s, errors, wall s,
    first error)."""
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    errors = [0]
    first_error: list[str | None] = [None]

    def take() -> int | None:
        with lock:
            i = next_index[0]
            if i >= count:
                return None
            next_index[0] = i + 1
            return i

    def failed(reason: str) -> None:
        with lock:
            errors[0] += 1
            first_error[0] = first_error[0] or reason

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            while (i := take()) is not None:
                row = i % len(rows)
                body = json.dumps({"features": rows[row]})
                t0 = time.perf_counter()
                try:
                    conn.request("POST", ROUTE, body, {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    data = response.read()
                    elapsed = time.perf_counter() - t0
                except (OSError, http.client.HTTPException) as err:
                    failed(f"request {i}: {type(err).__name__}: {err}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                    continue
                if response.status != 200:
                    failed(f"request {i}: HTTP {response.status}: {data[:200]!r}")
                    continue
                label = json.loads(data).get("label")
                if label != expected[row]:
                    failed(f"request {i}: served label {label}, the model says {expected[row]}")
                    continue
                with lock:
                    latencies.append(elapsed)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - t0, first_error[0]


def serve_actors_left() -> list[str]:
    """Serve's named actors (controller, proxies, replicas) still alive on the cluster."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" or a["name"].startswith("SERVE_"))


def shut_down(port: int, deadline_s: float = 60.0) -> list[str]:
    """Shut Serve down and wait until its actors are gone and the port is closed: what is left
    after ``deadline_s``."""
    from ray import serve

    serve.shutdown()
    end = time.monotonic() + deadline_s
    while True:
        left = serve_actors_left() + ([f"port {port} still open"] if port_open(port) else [])
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.5)


def error_rate(errors: int, requests: int) -> float:
    """Unrounded: the gate compares it, and 1 error in 20001 requests rounds (4 places) to
    0.0, passing a max_error_rate of 0."""
    return errors / requests


def percentile_ms(values: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.array(values), q)) * 1000, 2)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import ray
    import torch
    from ray import serve

    model_uri = to_uri(args.model_uri)
    model = load_model(model_uri)
    x_np, _ = load_dataset(args.data_uri, args.rows, args.seed)
    with torch.no_grad():
        expected = [int(v) for v in model(torch.from_numpy(x_np)).argmax(dim=1)]
    rows = [[float(v) for v in r] for r in x_np]

    # Ray stops a job (timeout, task killed) with SIGTERM, whose default action skips finally:
    # exit through SystemExit instead, so Serve is shut down whatever ends the job.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ray.init(log_to_driver=False)
    if serve_actors_left():  # a retry after a crash of this job: start from nothing
        print("Serve was already running on this cluster: shutting it down first", flush=True)
        shut_down(0)
    port = free_port()
    t0 = time.perf_counter()
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment().bind(model), name=APP, route_prefix=ROUTE)
        serve_start_s = time.perf_counter() - t0
        print(f"serving {model_uri} at http://127.0.0.1:{port}{ROUTE} after "
              f"{serve_start_s:.1f}s", flush=True)
        if args.warmup:
            _, warm_errors, _, warm_error = drive(port, rows, expected, args.warmup,
                                                  args.concurrency, args.timeout)
            if warm_errors == args.warmup:
                raise RuntimeError(f"every warm-up request failed: {warm_error}")
        latencies, errors, load_s, first_error = drive(port, rows, expected, args.requests,
                                                       args.concurrency, args.timeout)
    finally:
        t1 = time.perf_counter()
        left = shut_down(port)
        shutdown_s = time.perf_counter() - t1
    if left:
        fail(f"Serve did not shut down: left {left}")
    if first_error:
        print(f"first failed request: {first_error}", file=sys.stderr, flush=True)
    if not latencies:
        fail(f"no request succeeded out of {args.requests}: {first_error}")
    result = {
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "p99_ms": percentile_ms(latencies, 99),
        "mean_ms": round(sum(latencies) / len(latencies) * 1000, 2),
        # Successful answers per second of the measured phase's wall time.
        "throughput_rps": round(len(latencies) / load_s, 1),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "errors": errors,
        "error_rate": error_rate(errors, args.requests),
        "serve_start_s": round(serve_start_s, 2),
        "load_s": round(load_s, 2),
        "shutdown_s": round(shutdown_s, 2),
        "port": port,
        "model_uri": model_uri,
    }
    print("latency " + " ".join(f"{k}={result[k]}" for k in
                                ("p50_ms", "p95_ms", "p99_ms", "throughput_rps", "errors")),
          flush=True)
    emit_result(result)


if __name__ == "__main__":
    main()
