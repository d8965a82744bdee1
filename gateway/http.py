"""The gateway's HTTP side: one aiohttp application, served on the gateway's own event loop.

Routes today: ``GET /metrics`` (Prometheus exposition) and ``GET /healthz``. Other HTTP surfaces (the REST
API) add their routes to the application ``build_app`` returns, before ``HttpServer.start``: aiohttp
freezes an application's routes once it serves. With the gateway's TLS settings it serves HTTPS only (a
plaintext request on that port fails its handshake), with the same certificate as the gRPC port.
"""

from __future__ import annotations

import logging
import ssl
from typing import Callable

from aiohttp import web

from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

METRICS = web.AppKey("metrics", GatewayMetrics)
NOT_SERVING = web.AppKey("not_serving", Callable[[], str])


DEFAULT_MAX_BODY_BYTES = 1024**2  # aiohttp's own default


def build_app(metrics: GatewayMetrics, not_serving: Callable[[], str],
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> web.Application:
    """The gateway's HTTP application. ``not_serving`` says why the gateway does not serve fully ("" when
    it does: ``Gateway.not_serving``); ``max_body_bytes`` bounds a request body (a prediction's data URLs
    travel inside its JSON)."""
    app = web.Application(client_max_size=max_body_bytes)
    app[METRICS] = metrics
    app[NOT_SERVING] = not_serving
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = await request.app[METRICS].exposition(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _healthz(request: web.Request) -> web.Response:
    reason = request.app[NOT_SERVING]()
    if not reason:
        return web.json_response({"status": "serving"})
    return web.json_response({"status": "not serving", "reason": reason}, status=503)


class HttpServer:
    """Serves one aiohttp application on a host and port (0 picks a free one) until ``stop``."""

    def __init__(self, app: web.Application, shutdown_timeout_s: float = 5.0) -> None:
        # No access log: a scrape every few seconds is not news.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
        self.port = 0

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Bind and serve, HTTPS when ``ssl_context`` is given (``gateway.tls``); returns the bound port.
        Raises OSError (and holds nothing) if it cannot bind."""
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port, ssl_context=ssl_context).start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
