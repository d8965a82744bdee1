"""The ``echo`` runner: returns its input text, optionally after a delay and in streamed chunks.

It stands in for a model in tests and lets benchmarks measure the cluster itself.

Options: ``max_concurrency`` (default 64); ``setup_waits_for`` (a file path): setup ends only once that
file exists (at most ``SETUP_WAIT_S``), so a test can see an instance while it sets up, and let it go.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from runners.base import AsyncPredictGenerator, PredictContext, Runner, RunnerPolicy
from warmfleet.domain import LogLine, RouteSpec, Output, OutputChunk

SETUP_WAIT_S = 120.0
SETUP_POLL_S = 0.05


class EchoRunner(Runner):
    family = "echo"

    @classmethod
    def input_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["text"],
            "properties": {
                "text": {"type": "string", "maxLength": 1_000_000, "description": "Text to return."},
                "delay_ms": {
                    "type": "integer", "minimum": 0, "maximum": 60_000, "default": 0,
                    "description": "Wait this many milliseconds before answering (spread over the chunks).",
                },
                "chunks": {
                    "type": "integer", "minimum": 1, "maximum": 1000, "default": 1,
                    "description": "Stream the text as this many output chunks.",
                },
            },
        }

    @classmethod
    def output_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return {"type": "string"}

    @classmethod
    def policy(cls, spec: RouteSpec) -> RunnerPolicy:
        return RunnerPolicy(max_concurrency=int(spec.options.get("max_concurrency", 64)))

    def load(self) -> None:
        gate = self.spec.options.get("setup_waits_for")
        if not gate:
            return
        give_up_at = time.monotonic() + SETUP_WAIT_S
        while not Path(gate).exists():
            if time.monotonic() > give_up_at:
                raise TimeoutError(f"options.setup_waits_for: {gate} did not appear in {SETUP_WAIT_S:.0f} s")
            time.sleep(SETUP_POLL_S)

    async def predict(self, input: dict[str, Any], ctx: PredictContext) -> AsyncPredictGenerator:
        # Async: echo never blocks, so it runs on the agent's loop and costs no thread hop.
        text: str = input["text"]
        chunks: int = input.get("chunks", 1)
        delay_s = input.get("delay_ms", 0) / 1000.0
        if chunks > 1:
            yield LogLine(f"echoing {len(text)} characters in {chunks} chunks")
        for piece in split_evenly(text, chunks) if chunks > 1 else ():
            if delay_s:
                await asyncio.sleep(delay_s / chunks)
            yield OutputChunk(value=piece)
        if chunks == 1 and delay_s:
            await asyncio.sleep(delay_s)
        yield Output(value=text)


def split_evenly(text: str, parts: int) -> list[str]:
    """``text`` cut into ``parts`` consecutive pieces whose lengths differ by at most one."""
    size, extra = divmod(len(text), parts)
    pieces, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces
