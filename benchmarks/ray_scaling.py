"""Benchmark the Ray Serve worker: requests/s and p50/p95 latency with 1 replica vs N replicas, in one run. JSON.

Starts a local Ray instance (loopback only), deploys :mod:`gar_tools.servers.ray_app` with each replica count in
turn, and sends the same closed-loop load (``--concurrency`` clients, ``--requests`` requests in all) to Ray Serve's
HTTP ingress, as any worker client would. Without a GPU each replica gets ``--num-cpus`` CPUs (default 1, so Ray
pins each replica's torch threads and two replicas use two cores); with GPUs each replica gets one GPU and the
counts compared are 1 and the number of GPUs. The ``tiny`` model (random weights) measures the serving path, not
GAR; use ``--model HaochenWang/GAR-1B`` on GPUs for model numbers.

    python benchmarks/ray_scaling.py [--replicas 1 2] [--requests 32] [--concurrency 8] [--max-new-tokens 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import ray
import torch
from ray import serve

from gar_tools.servers.ray_app import REPLICA_HEADER, RayServeSettings, build_app
from gar_tools.servers.settings import WorkerSettings

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"
APP = "gar-bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _request(index: int, max_new_tokens: int) -> dict[str, Any]:
    """Distinct boxes, so no two requests are the same work."""
    x, y = 8 * (index % 40), 6 * (index % 30)
    return {
        "image": str(ASSETS / "demo_image_1.png"),
        "region": {"box": [x, y, x + 200, y + 150]},
        "max_new_tokens": max_new_tokens,
    }


async def _load(url: str, requests: int, concurrency: int, max_new_tokens: int) -> dict[str, Any]:
    latencies: list[float] = []
    replicas: Counter[str] = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            started = time.perf_counter()
            response = await http.post("/v1/describe_region", json=_request(index, max_new_tokens))
            response.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            replicas[response.headers.get(REPLICA_HEADER, "?")] += 1

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests_per_s": round(requests / elapsed, 3),
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(_percentile(latencies, 0.95), 1),
        "wall_s": round(elapsed, 2),
        "requests_per_replica": sorted(replicas.values(), reverse=True),
    }


def main() -> None:
    gpus = torch.cuda.device_count()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_counts = sorted({1, gpus}) if gpus else [1, 2]  # with GPUs: one replica per GPU
    parser.add_argument("--replicas", type=int, nargs="+", default=default_counts)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    args = parser.parse_args()

    engine_kwargs = {} if gpus else {"device": "cpu", "dtype": "fp32"}
    port = _free_port()
    # Ray's single-node mode (its default on macOS and Windows): its own services listen on 127.0.0.1 only, not on
    # this host's other addresses (the same setting the Ray tests use).
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    ray.init(num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    runs = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for count in args.replicas:
            settings = RayServeSettings(
                worker=WorkerSettings(model=args.model, engine_kwargs=engine_kwargs),
                replicas=count,
                num_gpus=1.0 if gpus else 0.0,
                num_cpus=args.num_cpus,
                name=APP,
            )
            started = time.perf_counter()
            serve.run(build_app(settings), name=APP, route_prefix="/")  # returns once every replica has loaded
            ready_s = time.perf_counter() - started
            url = f"http://127.0.0.1:{port}"
            asyncio.run(_load(url, 2 * count, 2 * count, 1))  # warm-up: first requests pay one-time costs
            result = asyncio.run(_load(url, args.requests, args.concurrency, args.max_new_tokens))
            runs.append({"replicas": count, "deploy_s": round(ready_s, 1), **result})
            serve.delete(APP)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    base = runs[0]["requests_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "ray_scaling",
                "model": args.model,
                "tiny_model": args.model == "tiny",
                "device": torch.cuda.get_device_name(0) if gpus else f"cpu ({os.cpu_count()} cores)",
                "gpus": gpus,
                "cpus_per_replica": 0 if gpus else args.num_cpus,
                "requests": args.requests,
                "concurrency": args.concurrency,
                "max_new_tokens": args.max_new_tokens,
                "ray": ray.__version__,
                "python": platform.python_version(),
                "runs": runs,
                "speedup_vs_first": {str(r["replicas"]): round(r["requests_per_s"] / base, 2) for r in runs},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
