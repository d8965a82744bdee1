"""Background work that is never lost silently: tasks kept until they end, with their failure logged, and
loops that outlive a bad turn."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger(__name__)


class Tasks:
    """Tasks held until they end (a task nobody holds may be collected mid-way), each failure logged
    with the task's name (an exception nobody awaits is otherwise lost)."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._running: set[asyncio.Task] = set()

    def spawn(self, work: Awaitable[None], name: str) -> asyncio.Task:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s task %s failed", self._owner, task.get_name(), exc_info=task.exception())

    def cancel(self) -> None:
        for task in list(self._running):
            task.cancel()


async def repeat(turn: Callable[[], Awaitable[None]], interval_s: float, what: str,
                 wake: asyncio.Event | None = None) -> None:
    """Run ``turn`` every ``interval_s`` (sooner when ``wake`` is set), for good. A turn that raises is
    logged and the next one runs: one bad turn never stops the loop."""
    while True:
        if wake is None:
            await asyncio.sleep(interval_s)
        else:
            try:
                await asyncio.wait_for(wake.wait(), interval_s)
            except TimeoutError:
                pass
            wake.clear()
        try:
            await turn()
        except Exception:  # noqa: BLE001 - the loop must outlive one bad turn; the next retries
            log.exception("%s turn failed", what)


async def wait_notified(condition: asyncio.Condition, timeout_s: float) -> None:
    """Until ``condition`` is notified, or ``timeout_s`` passes (whichever comes first)."""
    async with condition:
        try:
            await asyncio.wait_for(condition.wait(), timeout_s)
        except TimeoutError:
            pass
