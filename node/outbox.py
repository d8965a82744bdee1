"""A thread-safe buffer of task events for one router, drained by that router's data plane session.

Worker threads append; the agent's event loop wakes the session's pending ``take`` at most once per
batch, and what it takes goes to the router as one ``Events`` frame (``node.data_server``). So under
load one frame carries many events, and the messages per prediction fall well below one.
"""

from __future__ import annotations

import asyncio
import threading

from warmfleet.domain import OutputChunk, TaskEvent


class Outbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[TaskEvent] = []
        self._signalled = False
        self._wake = asyncio.Event()
        self._loop_thread = threading.get_ident()  # built on the loop's own thread

    def put(self, event: TaskEvent) -> None:
        """Add an event; callable from any thread."""
        with self._lock:
            self._items.append(event)
            if self._signalled:
                return
            self._signalled = True
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def take(self, max_wait_s: float) -> list[TaskEvent]:
        """Everything buffered, waiting up to ``max_wait_s`` for the first event."""
        deadline = self._loop.time() + max_wait_s
        while True:
            with self._lock:
                if self._items:
                    items, self._items, self._signalled = self._items, [], False
                    return coalesce(items)
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return []
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                pass
            # Let what was woken in the same turn run first: a fast prediction's Started and Finished
            # then travel in one batch instead of two.
            await asyncio.sleep(0)


def coalesce(events: list[TaskEvent]) -> list[TaskEvent]:
    """Merge text chunks of a prediction that piled up with nothing else of it between them.

    Each prediction's events keep their order. At low load every token still travels alone; under load
    (many streams, one frame) one message carries several tokens of a stream, which spares the data
    plane, the gateway and the client one event per token.
    """
    out: list[TaskEvent] = []
    open_chunk: dict[str, int] = {}  # prediction id -> index in ``out`` of its latest text chunk
    for event in events:
        body, pid = event.body, event.prediction_id
        joinable = isinstance(body, OutputChunk) and body.joinable and body.file is None
        if joinable and isinstance(body.value, str):
            at = open_chunk.get(pid)
            if at is not None:
                out[at] = TaskEvent(pid, OutputChunk(value=out[at].body.value + body.value))
                continue
            open_chunk[pid] = len(out)
        else:
            open_chunk.pop(pid, None)
        out.append(event)
    return out
