"""REST route ``GET /v1/webhooks/default/secret``: the caller's webhook signing secret, as Replicate serves
it (``{"key": "whsec_..."}``), to verify the ``webhook-signature`` of their predictions' webhooks."""

from __future__ import annotations

from aiohttp import web

from gateway.auth import current_principal
from gateway.rest.context import REST


async def default_secret(request: web.Request) -> web.Response:
    secrets = request.app[REST].webhooks.secrets
    return web.json_response({"key": secrets.key_for(current_principal.get().account)})


def register(app: web.Application) -> None:
    """Add this module's routes to the app."""
    app.router.add_get("/v1/webhooks/default/secret", default_secret)
