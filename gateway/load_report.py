"""Tells the controller what this gateway's router has ongoing, so that the autoscaler can act on it.

The queue lives in the router (in this process); the autoscaler lives in the controller. Ray Serve does
the same: handles push their queue lengths to the controller. A report goes every ``interval_s`` (also
when nothing is ongoing, so that load that ended is seen to end), and at once when a prediction arrives
for a model with no instance, so that a cold boot starts without waiting for the next report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from scheduler.ports import ControllerClient
from scheduler.router import Router

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.5


class LoadReporter:
    def __init__(self, router: Router, controller: ControllerClient,
                 interval_s: float = REPORT_INTERVAL_S) -> None:
        self._router = router
        self._controller = controller
        self._interval_s = interval_s
        self._now = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="load-report")

    def report_now(self) -> None:
        self._now.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), self._interval_s)
            self._now.clear()
            try:
                await self._controller.report_load(self._router.router_id, self._router.ongoing())
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the next report retries; scaling waits meanwhile
                log.warning("could not report load to the controller: %s", err)
