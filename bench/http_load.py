"""Closed-loop load on one Cog model, for ``bench.cog``: C workers send predictions back to back, either
straight to coglet's own HTTP server (``--protocol http``: ``POST /predictions``, which answers with the
finished prediction; with ``--webhook`` it also asks for the output and log webhooks a warmfleet node
agent asks for, received by a small server in this process) or through a warmfleet gateway (``--protocol grpc``: ``CreatePrediction`` with the
generic JSON input form and ``wait_s``). The window, the counting and the summary are ``bench.load``'s, so
the two targets are measured the same way; a reply that is not "succeeded" is an error.

Run it in its own process, never in a server's:

    python -m bench.http_load --protocol http --target 127.0.0.1:5000 --concurrency 8 [--webhook]
    python -m bench.http_load --protocol grpc --target 127.0.0.1:50051 --token-file ~/.warmfleet/admin_token \\
        --model bench/noop --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from bench.load import WAIT_S, LoadResult, _call, _Window, add_load_arguments, summarise
from warmfleet.client import input_to_pb
from warmfleet.v1 import predictions_pb2, predictions_pb2_grpc

Call = Callable[[], Awaitable["str | None"]]


@dataclass(frozen=True)
class CogLoadSpec:
    """One load point on a Cog model. ``target`` is host:port; ``model`` is needed for gRPC only."""

    target: str
    concurrency: int
    protocol: str = "http"
    model: str = ""
    input: dict[str, Any] = field(default_factory=lambda: {"text": "hi"})
    duration_s: float = 3.0
    warmup_s: float = 1.0
    max_requests: int = 200_000
    token: str = ""
    webhook: bool = False  # HTTP only: ask coglet for output and log webhooks, as the node agent does


async def _closed_loop(call: Call, window: _Window) -> None:
    while not window.full():
        started = time.perf_counter()
        if started >= window.end:
            return
        error = await call()
        window.record(started, time.perf_counter(), error)


async def _drive(spec: CogLoadSpec, call: Call) -> LoadResult:
    now = time.perf_counter()
    window = _Window(now + spec.warmup_s, now + spec.warmup_s + spec.duration_s, spec.max_requests)
    await asyncio.gather(*(_closed_loop(call, window) for _ in range(spec.concurrency)))
    measured_s = min(time.perf_counter(), window.end) - window.start
    return summarise(spec, window, measured_s)


async def _webhook_sink() -> tuple[web.AppRunner, str]:
    """A server that takes coglet's webhooks and drops them; its URL."""
    async def receive(request: web.Request) -> web.Response:
        await request.read()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook/{prediction_id}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook"


def _bodies(spec: CogLoadSpec, hook_url: str) -> Callable[[], bytes]:
    """The request body for each call: the same bytes, or (with webhooks) one with its own id and hook."""
    if not hook_url:
        body = json.dumps({"input": spec.input}).encode()
        return lambda: body
    ids = itertools.count()

    def body_with_hook() -> bytes:
        prediction_id = f"bench{next(ids)}"
        return json.dumps({"id": prediction_id, "input": spec.input, "webhook": f"{hook_url}/{prediction_id}",
                           "webhook_events_filter": ["output", "logs"]}).encode()

    return body_with_hook


async def run_http(spec: CogLoadSpec) -> LoadResult:
    """coglet's sync ``POST /predictions``, one keep-alive connection per worker."""
    sink, hook_url = await _webhook_sink() if spec.webhook else (None, "")
    url = f"http://{spec.target}/predictions"
    next_body = _bodies(spec, hook_url)
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=WAIT_S + 5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call() -> str | None:
            try:
                async with session.post(url, data=next_body(), headers=headers) as reply:
                    doc = await reply.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, ValueError) as err:
                return f"{type(err).__name__}: {err}"
            if reply.status != 200 or doc.get("status") != "succeeded":
                return f"HTTP {reply.status}, status {doc.get('status')}: {doc.get('error')}"
            return None

        try:
            return await _drive(spec, call)
        finally:
            if sink is not None:
                await sink.cleanup()


async def run_grpc(spec: CogLoadSpec) -> LoadResult:
    """The gateway's ``CreatePrediction`` (JSON input, ``wait_s``) on one ``grpc.aio`` channel."""
    metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else ()
    request = predictions_pb2.CreatePredictionRequest(model=spec.model, input=input_to_pb(spec.input),
                                                      wait_s=WAIT_S)
    async with grpc.aio.insecure_channel(spec.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10.0)
        stub = predictions_pb2_grpc.PredictionsStub(channel)
        return await _drive(spec, lambda: _call(stub, request, metadata))


RUNNERS = {"http": run_http, "grpc": run_grpc}


def main() -> None:
    parser = argparse.ArgumentParser(description="Closed-loop load on a Cog model, direct (coglet's HTTP) or "
                                                 "through warmfleet (gRPC); prints one JSON result line.")
    add_load_arguments(parser, duration_s=3.0)
    parser.add_argument("--protocol", choices=sorted(RUNNERS), default="http")
    parser.add_argument("--model", default="", help="owner/name (gRPC only)")
    parser.add_argument("--input", type=json.loads, default={"text": "hi"}, help="the input, as JSON")
    parser.add_argument("--webhook", action="store_true", help="HTTP only: ask for output and log webhooks (what the node agent asked before it streamed logs from coglet's output)")
    args = parser.parse_args()
    token = args.token_file.read_text().strip() if args.token_file else ""
    spec = CogLoadSpec(args.target, args.concurrency, args.protocol, args.model, args.input, args.duration,
                       args.warmup, args.max_requests, token, args.webhook)
    print(json.dumps(asdict(asyncio.run(RUNNERS[args.protocol](spec)))), flush=True)


if __name__ == "__main__":
    main()
