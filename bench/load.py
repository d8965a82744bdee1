"""A closed-loop load generator for the warmfleet.v1 Predictions service.

C workers share one grpc.aio channel; each sends ``CreatePrediction`` (echo input, ``wait_s``) back to
back. After a warm-up, it records every request that starts and ends inside the measured window and
reports throughput, latency percentiles and errors. A response that is not SUCCEEDED is an error.

Run it in its own process, never in a server's (``bench.echo`` does):

    python -m bench.load --target 127.0.0.1:50051 --token-file ~/.warmfleet/admin_token \\
        --concurrency 16 --duration 5 --warmup 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from warmfleet.v1 import predictions_pb2, predictions_pb2_grpc, types_pb2

MODEL = "warmfleet/echo"
WAIT_S = 10.0


@dataclass(frozen=True)
class LoadSpec:
    """One load point: where, how many workers, for how long."""

    target: str
    concurrency: int
    duration_s: float = 5.0
    warmup_s: float = 1.0
    max_requests: int = 200_000
    token: str = ""
    text: str = "hello"


@dataclass
class LoadResult:
    """What one load point measured. Latencies in milliseconds."""

    target: str
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    error_samples: list[str] = field(default_factory=list)


@dataclass
class _Window:
    """The measured window and what fell in it, shared by the workers of one point."""

    start: float
    end: float
    max_requests: int
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def full(self) -> bool:
        return len(self.latencies_s) + len(self.errors) >= self.max_requests

    def record(self, started: float, ended: float, error: str | None) -> None:
        if started < self.start or ended > self.end:
            return  # warm-up, or straddling the end of the window
        if error is None:
            self.latencies_s.append(ended - started)
        else:
            self.errors.append(error)


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def echo_request(text: str) -> predictions_pb2.CreatePredictionRequest:
    return predictions_pb2.CreatePredictionRequest(
        model=MODEL, input=types_pb2.PredictionInput(echo=types_pb2.EchoInput(text=text)), wait_s=WAIT_S)


async def _call(stub: predictions_pb2_grpc.PredictionsStub, request, metadata) -> str | None:
    """One request; None when it succeeded, else a short description of the error."""
    try:
        reply = await stub.CreatePrediction(request, metadata=metadata, timeout=WAIT_S + 5)
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}: {err.details()}"
    if reply.status != types_pb2.STATUS_SUCCEEDED:
        return f"status {types_pb2.Status.Name(reply.status)}: {reply.error}"
    return None


async def _worker(stub, request, metadata, window: _Window) -> None:
    while not window.full():
        started = time.perf_counter()
        if started >= window.end:
            return
        error = await _call(stub, request, metadata)
        window.record(started, time.perf_counter(), error)


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run one closed-loop load point and summarise it."""
    metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else ()
    request = echo_request(spec.text)
    async with grpc.aio.insecure_channel(spec.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10.0)
        stub = predictions_pb2_grpc.PredictionsStub(channel)
        now = time.perf_counter()
        window = _Window(now + spec.warmup_s, now + spec.warmup_s + spec.duration_s, spec.max_requests)
        await asyncio.gather(*(_worker(stub, request, metadata, window) for _ in range(spec.concurrency)))
        # Shorter than the window only when max_requests cut it short.
        measured_s = min(time.perf_counter(), window.end) - window.start
    return summarise(spec, window, measured_s)


def summarise(spec: LoadSpec, window: _Window, measured_s: float) -> LoadResult:
    lat_ms = sorted(s * 1000.0 for s in window.latencies_s)
    done = len(lat_ms) + len(window.errors)
    return LoadResult(
        target=spec.target, concurrency=spec.concurrency, duration_s=measured_s, requests=done,
        errors=len(window.errors), throughput_rps=len(lat_ms) / measured_s if measured_s > 0 else 0.0,
        p50_ms=percentile(lat_ms, 50), p90_ms=percentile(lat_ms, 90), p99_ms=percentile(lat_ms, 99),
        mean_ms=sum(lat_ms) / len(lat_ms) if lat_ms else math.nan,
        error_samples=sorted(set(window.errors))[:5],
    )


def add_load_arguments(parser: argparse.ArgumentParser, duration_s: float) -> None:
    """The options every closed-loop load process takes: where, with which token, how hard, how long."""
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--token-file", type=Path, help="file holding a bearer token (the cluster's)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=duration_s, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many measured")


def main() -> None:
    parser = argparse.ArgumentParser(description="Closed-loop echo load on a Predictions server; "
                                                 "prints one JSON result line.")
    add_load_arguments(parser, duration_s=5.0)
    args = parser.parse_args()
    token = args.token_file.read_text().strip() if args.token_file else ""
    spec = LoadSpec(args.target, args.concurrency, args.duration, args.warmup, args.max_requests, token)
    print(json.dumps(asdict(asyncio.run(run_load(spec)))), flush=True)


if __name__ == "__main__":
    main()
