"""Where coglet's webhooks land: one small HTTP server on the agent's event loop, shared by every Cog
instance of the agent, handing each prediction's updates to the prediction that waits for them.

They are asked for only where the output is an iterator, to stream it: coglet sends one per item
(``COG_THROTTLE_RESPONSE_INTERVAL=0``), each with the whole output so far, in any order.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

from aiohttp import web


class WebhookReceiver:
    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue] = {}
        self._runner: web.AppRunner | None = None
        self._token = secrets.token_urlsafe(16)  # only the coglet processes this agent started know it
        self.url = ""
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._runner is None:
                await self._start()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{token}/{prediction_id}", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        self.url = f"http://127.0.0.1:{port}/{self._token}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def open(self, prediction_id: str, queue: asyncio.Queue) -> None:
        """Put the prediction's webhook bodies on ``queue``, as ``("output", body)``."""
        self._queues[prediction_id] = queue

    def close(self, prediction_id: str) -> None:
        self._queues.pop(prediction_id, None)

    def webhook_for(self, prediction_id: str) -> str:
        return f"{self.url}/{prediction_id}"

    async def _receive(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self._token:
            raise web.HTTPForbidden()
        queue = self._queues.get(request.match_info["prediction_id"])
        if queue is not None:
            try:
                queue.put_nowait(("output", json.loads(await request.read())))
            except ValueError:
                pass
        return web.Response()


_RECEIVERS: dict[Any, WebhookReceiver] = {}


async def receiver() -> WebhookReceiver:
    """The receiver of the running event loop (started on first use)."""
    loop = asyncio.get_running_loop()
    found = _RECEIVERS.get(loop)
    if found is None:
        found = _RECEIVERS[loop] = WebhookReceiver()
    await found.start()
    return found
