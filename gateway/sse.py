"""Server-Sent Events of one prediction, for every HTTP edge that streams them (the REST API's
``/v1/predictions/{id}/stream``, the console's live page): ``pump`` writes each event's frames as it
comes, a heartbeat comment whenever ``heartbeat_s`` passes idle, and ends at ``Completed``, or at once
when the app stops serving (``CLOSING``, set on shutdown: a client's EventSource resumes elsewhere with
``Last-Event-ID``). What an event looks like on the wire is each edge's own (its ``frames``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable

from aiohttp import web

from warmfleet.domain import Completed, PredictionEvent

HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
HEARTBEAT = b": ping\n\n"
CLOSING = web.AppKey("sse_closing", asyncio.Event)


def install(app: web.Application) -> None:
    """Give ``app`` its ``CLOSING`` event, set as the app shuts down (once, whichever edge asks first)."""
    if CLOSING not in app:
        app[CLOSING] = asyncio.Event()
        app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    app[CLOSING].set()


async def pump(response: web.StreamResponse, events: AsyncIterator[PredictionEvent], closing: asyncio.Event,
               frames: Callable[[PredictionEvent], Iterable[bytes]], heartbeat_s: float) -> None:
    """Write ``frames(event)`` for each event until ``Completed`` (or ``closing``). The pending read stays
    one task across heartbeats: cancelling it would end the subscription."""
    pending = asyncio.ensure_future(anext(events, None))
    closed = asyncio.ensure_future(closing.wait())
    try:
        while True:
            done, _ = await asyncio.wait({pending, closed}, timeout=heartbeat_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                return
            if not done:
                await response.write(HEARTBEAT)
                continue
            event = pending.result()
            if event is None:
                return
            for frame in frames(event):
                await response.write(frame)
            if isinstance(event.body, Completed):
                return
            pending = asyncio.ensure_future(anext(events, None))
    finally:
        for task in (pending, closed):
            if not task.done():
                task.cancel()
        await asyncio.gather(pending, closed, return_exceptions=True)
