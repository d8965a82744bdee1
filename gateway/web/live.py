"""``GET /predictions/{id}/events``: a prediction's events for its console page, as Server-Sent Events
over ``PredictionService.follow``, with the session's cookie (the REST stream reads a bearer token or a
signed link, and the console has neither in a page).

Each event's data is JSON: ``status`` {status}, ``output`` {text} or {image: a data URL}, ``logs`` {text},
``progress`` {step, total, eta_s}, and last ``done`` {status, html: the page's result part
(``predictions.result_html``), logs}. Every event has ``id:`` its seq, so that the browser's EventSource,
reconnecting with ``Last-Event-ID``, resumes after it. A comment every ``HEARTBEAT_S`` keeps it open."""

from __future__ import annotations

import base64
import logging
from typing import Any

import orjson
from aiohttp import web

from gateway import sse
from gateway.web.context import console, principal_of
from gateway.web.html import shown_text
from gateway.web.predictions import result_html
from warmfleet.domain import Completed, LogLine, OutputChunk, PredictionEvent, ProgressUpdate, Status
from warmfleet.errors import NotFound, Unauthenticated

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0


def frame(name: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    head = f"event: {name}\n" + (f"id: {seq}\n" if seq is not None else "")
    return (head + "data: " + orjson.dumps(data).decode() + "\n\n").encode()


def event_frame(event: PredictionEvent) -> bytes | None:
    """The SSE frame for one prediction event (None for what a page does not show)."""
    body, seq = event.body, event.seq
    if isinstance(body, Status):
        return frame("status", {"status": body.value}, seq)
    if isinstance(body, LogLine):
        return frame("logs", {"text": shown_text(body.text)}, seq)
    if isinstance(body, ProgressUpdate):
        return frame("progress", {"step": body.step, "total": body.total, "eta_s": body.eta_s}, seq)
    if isinstance(body, OutputChunk):
        if body.file is not None:
            if not body.file.content_type.startswith("image/"):
                return None
            data = base64.b64encode(body.file.data).decode()
            return frame("output", {"image": f"data:{body.file.content_type};base64,{data}"}, seq)
        if body.value is None:
            return None
        text = body.value if isinstance(body.value, str) else orjson.dumps(body.value).decode()
        return frame("output", {"text": shown_text(text)}, seq)
    if isinstance(body, Completed):
        pred = body.prediction
        return frame("done", {"status": pred.status.value, "html": result_html(pred), "logs": [shown_text(line) for line in pred.logs]}, seq)
    return None


async def events(request: web.Request) -> web.StreamResponse:
    try:
        principal = principal_of(request)
        after = request.headers.get("Last-Event-ID", "").strip()
        after_seq = int(after) if after.isdigit() else 0
        followed = await console(request).predictions.follow(principal, request.match_info["id"], after_seq)
    except (Unauthenticated, NotFound) as err:
        # An EventSource retries a failed connection forever; 204 tells it to stop.
        log.debug("console events refused: %s", err)
        return web.Response(status=204)
    response = web.StreamResponse(headers=sse.HEADERS)
    await response.prepare(request)
    try:
        await sse.pump(response, followed, request.app[sse.CLOSING], _frames, HEARTBEAT_S)
    except ConnectionResetError:
        pass  # the page went away
    finally:
        await followed.aclose()
    return response


def _frames(event: PredictionEvent) -> list[bytes]:
    data = event_frame(event)
    return [data] if data is not None else []


def register(app: web.Application) -> None:
    sse.install(app)
    app.router.add_get("/predictions/{id}/events", events)
