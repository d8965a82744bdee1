"""The web console on an aiohttp application: its context, its routes and its static files."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway.web import deployments, fleet, live, models, predictions, signin
from gateway.web.context import CONSOLE, ConsoleContext, redirect

STATIC_DIR = Path(__file__).parent / "static"


async def _home(request: web.Request) -> web.Response:
    return redirect("/models")


async def _static(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in ("console.js", "console.css"):
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "public, max-age=3600"})


def add_console_routes(app: web.Application, ctx: ConsoleContext) -> None:
    """Put the console on ``app`` (before it serves), at ``/`` beside the REST API's ``/v1``."""
    app[CONSOLE] = ctx
    app.router.add_get("/", _home)
    app.router.add_get("/static/{name}", _static)
    for module in (signin, models, predictions, live, deployments, fleet):
        module.register(app)
