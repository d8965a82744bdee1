"""The REST API on an aiohttp application: the context, the middleware and every route module's routes."""

from __future__ import annotations

from aiohttp import web

from gateway.rest import accounts, catalog, files, openai, openapi, predictions, stream, unserved, webhooks
from gateway.rest.context import REST, RestContext, middleware


def add_rest_routes(app: web.Application, ctx: RestContext) -> None:
    """Put the REST API on ``app`` (before it serves)."""
    app[REST] = ctx
    app.middlewares.append(middleware)
    for module in (predictions, catalog, accounts, stream, webhooks, files, openai, openapi, unserved):
        module.register(app)
