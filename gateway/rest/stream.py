"""REST route ``GET /v1/predictions/{id}/stream`` (a prediction's ``urls.stream``): its events as
Server-Sent Events, the way Replicate streams them.

- ``output``: a chunk of output; text as it is (LLM tokens, echo chunks), other JSON values encoded.
  Data with line breaks goes as several ``data:`` lines, which a client joins with ``\\n``.
- ``logs``: a log line. ``error``: why the prediction failed. ``done``: the end, with data ``{}`` when it
  succeeded and ``{"reason": "canceled" | "error" | "aborted"}`` otherwise.
- Every event has ``id:`` the seq of the prediction event it comes from: a client that reconnects with
  ``Last-Event-ID`` resumes after it (``after_seq``). A comment line every ``HEARTBEAT_S`` keeps idle
  connections (and proxies) open.
- A client that connects from the start to a prediction whose text output never came in chunks (or
  that had ended) gets the whole output as one ``output`` event before ``done``. The gateway keeps
  only the final event of an ended prediction: a client resuming after it ended gets ``done`` alone.

Only the prediction's owner (or an admin) may follow it; anyone else gets 404, as for ``GET``. The
``urls.stream`` a prediction shows is a signed link (``gateway.signing``): an EventSource, which cannot
send the token, follows it as it is.
"""

from __future__ import annotations

import logging
import re

import orjson
from aiohttp import web

from gateway import sse
from gateway.auth import current_principal
from gateway.rest.context import REST, problem
from warmfleet.domain import Completed, LogLine, OutputChunk, PredictionEvent, Status
from warmfleet.errors import InvalidInput

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0  # a comment this often while no event comes; read per request, so tests can lower it
CONTENT_TYPE = "text/event-stream"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_DONE_REASON = {Status.FAILED: "error", Status.CANCELED: "canceled", Status.ABORTED: "aborted"}


# The wire format


def sse_event(name: str, data: str, event_id: int | None = None) -> bytes:
    """One event in the text/event-stream format: a ``data:`` line per line of ``data``."""
    lines = [f"event: {name}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


def event_frames(event: PredictionEvent, whole_output: bool) -> list[bytes]:
    """The SSE events for one prediction event (none for those Replicate does not stream: status
    changes, progress, files). With ``whole_output``, a successful ``Completed`` first repeats its text
    output as one ``output`` event."""
    body = event.body
    if isinstance(body, OutputChunk):
        if body.file is not None or body.value is None:
            return []
        text = body.value if isinstance(body.value, str) else orjson.dumps(body.value).decode()
        return [sse_event("output", text, event.seq)]
    if isinstance(body, LogLine):
        return [sse_event("logs", body.text, event.seq)]
    if isinstance(body, Completed):
        return _final_frames(body, event.seq, whole_output)
    return []


def _final_frames(body: Completed, seq: int, whole_output: bool) -> list[bytes]:
    pred = body.prediction
    frames = []
    if whole_output and pred.status is Status.SUCCEEDED and pred.output is not None and isinstance(
            pred.output.value, str) and pred.output.value:
        frames.append(sse_event("output", pred.output.value, seq))
    if pred.status is Status.FAILED:
        frames.append(sse_event("error", pred.error or "the prediction failed", seq))
    reason = _DONE_REASON.get(pred.status)
    frames.append(sse_event("done", orjson.dumps({"reason": reason} if reason else {}).decode(), seq))
    return frames


# The route


async def stream_prediction(request: web.Request) -> web.StreamResponse:
    if not _accepts_event_stream(request.headers.get("Accept", "")):
        return problem(406, "Not Acceptable",
                       f"this URL serves only {CONTENT_TYPE}; send 'Accept: {CONTENT_TYPE}'")
    after_seq = _last_event_id(request.headers.get("Last-Event-ID"))
    ctx, principal, prediction_id = request.app[REST], current_principal.get(), request.match_info["id"]
    events = await ctx.predictions.follow(principal, prediction_id, after_seq)  # 404 now, before the stream
    response = web.StreamResponse(headers=sse.HEADERS)
    await response.prepare(request)
    try:
        await sse.pump(response, events, request.app[sse.CLOSING], _Frames(whole_output=after_seq == 0),
                       HEARTBEAT_S)
    except ConnectionResetError:
        pass  # the client went away
    except Exception:
        log.exception("streaming prediction %s failed", prediction_id)
        await response.write(sse_event("error", "internal error; the gateway log has the details"))
    finally:
        await events.aclose()
    return response


class _Frames:
    """The REST stream's frames of each event; the whole output again at the end unless it came in
    chunks (or the stream resumed: ``whole_output`` False)."""

    def __init__(self, whole_output: bool) -> None:
        self.whole_output = whole_output

    def __call__(self, event: PredictionEvent) -> list[bytes]:
        if isinstance(event.body, OutputChunk):
            self.whole_output = False  # the text came in chunks: no need to repeat it at the end
        return event_frames(event, self.whole_output)


def _accepts_event_stream(accept: str) -> bool:
    """No Accept header, or one that admits text/event-stream (directly, text/* or */*)."""
    if not accept.strip():
        return True
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        refused = re.search(r"\bq=0(\.0*)?\s*$", params)  # q=0: "not this one"
        if media.strip().lower() in (CONTENT_TYPE, "text/*", "*/*") and not refused:
            return True
    return False


def _last_event_id(header: str | None) -> int:
    if header is None or not header.strip():
        return 0
    try:
        seq = int(header.strip())
    except ValueError:
        seq = -1
    if seq < 0:
        raise InvalidInput("Last-Event-ID", "must be the id of an event this stream sent (a whole number)")
    return seq


def register(app: web.Application) -> None:
    """Add this module's routes to the app."""
    sse.install(app)
    app.router.add_get("/v1/predictions/{id}/stream", stream_prediction)
