"""A thread-safe buffer of task events for one router, drained by that router's long poll.

Worker threads append; the agent's event loop wakes the pending poll at most once per batch, so under load
one poll carries many events and the Ray round trips per prediction fall well below one.
"""

from __future__ import annotations

import asyncio
import threading

from warmfleet.domain import TaskEvent


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
                    return items
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
