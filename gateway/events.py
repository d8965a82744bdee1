"""Fan-out of prediction events to stream subscribers and to callers waiting for the end.

Events of an active prediction are kept so that a subscriber who joins late replays them from the start
(or after the ``seq`` it last saw). When the prediction ends its events are dropped; a later subscriber
gets the final ``Completed`` event alone, read from the store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator

from warmfleet.domain import Completed, Prediction, PredictionEvent, PublicEventBody


@dataclass
class _Stream:
    events: list[PredictionEvent] = field(default_factory=list)
    subscribers: list[asyncio.Queue] = field(default_factory=list)
    done: asyncio.Future | None = None


def _resolve(fut: asyncio.Future, value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class EventHub:
    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}

    def open(self, prediction_id: str) -> None:
        self._streams[prediction_id] = _Stream()

    def is_open(self, prediction_id: str) -> bool:
        return prediction_id in self._streams

    def publish(self, prediction_id: str, body: PublicEventBody) -> None:
        stream = self._streams.get(prediction_id)
        if stream is None:
            return
        event = PredictionEvent(prediction_id, len(stream.events) + 1, body)
        stream.events.append(event)
        for queue in stream.subscribers:
            queue.put_nowait(event)
        if isinstance(body, Completed):
            del self._streams[prediction_id]
            if stream.done is not None and not stream.done.done():
                stream.done.set_result(body.prediction)

    def published(self, prediction_id: str) -> list[PublicEventBody]:
        """What was published of an active prediction so far (nothing once it ended)."""
        stream = self._streams.get(prediction_id)
        return [e.body for e in stream.events] if stream is not None else []

    async def wait(self, prediction_id: str, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the prediction to end; True if it did (or was not active)."""
        stream = self._streams.get(prediction_id)
        if stream is None:
            return True
        loop = asyncio.get_running_loop()
        if stream.done is None:
            stream.done = loop.create_future()
        # A timer and a plain future: cheaper on the hot path than asyncio.wait_for's extra task.
        woken = loop.create_future()
        timer = loop.call_later(timeout_s, _resolve, woken, False)
        stream.done.add_done_callback(lambda _f: _resolve(woken, True))
        try:
            return await woken
        finally:
            timer.cancel()

    def subscribe(self, prediction: Prediction, after_seq: int) -> AsyncIterator[PredictionEvent]:
        """The prediction's events after ``after_seq``, live, ending with its ``Completed`` event. The
        subscription starts at this call, not at the first read: nothing published after it is missed,
        even if the prediction ends before the caller reads."""
        stream = self._streams.get(prediction.id)
        if stream is None:
            return _ended(prediction, after_seq)
        queue: asyncio.Queue = asyncio.Queue()
        for event in stream.events:
            if event.seq > after_seq:
                queue.put_nowait(event)
        stream.subscribers.append(queue)
        return _follow(stream, queue)


async def _ended(prediction: Prediction, after_seq: int) -> AsyncIterator[PredictionEvent]:
    yield PredictionEvent(prediction.id, max(after_seq + 1, 1), Completed(prediction))


async def _follow(stream: _Stream, queue: asyncio.Queue) -> AsyncIterator[PredictionEvent]:
    try:
        while True:
            event = await queue.get()
            yield event
            if isinstance(event.body, Completed):
                return
    finally:
        if queue in stream.subscribers:
            stream.subscribers.remove(queue)
