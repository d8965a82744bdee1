"""Handing items from a worker thread to asyncio queues on one event loop, waking the loop at most once
per burst.

``loop.call_soon_threadsafe`` per item writes to the loop's wake-up pipe and takes a turn of the loop
for each: an LLM engine streaming 32 rows does that 32 times a decode step, and each wake-up contends
for the GIL with the engine's own thread. A ``Relay`` buffers what the thread puts and schedules one
callback for everything that came before the loop ran it (the same idea as ``node.outbox.Outbox``, for
many consumers rather than one).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Relay:
    """Puts items into asyncio queues of ``loop`` from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, Any]] = []
        self._scheduled = False

    def put(self, queue: asyncio.Queue, item: Any) -> None:
        """``queue.put_nowait(item)`` on the loop, soon; items keep their order."""
        with self._lock:
            self._pending.append((queue, item))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, [], False
        for queue, item in pending:
            queue.put_nowait(item)
