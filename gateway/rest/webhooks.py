"""REST route ``GET /v1/webhooks/default/secret``: the caller's webhook signing secret, as Replicate serves
it (``{"key": "whsec_..."}``), to verify the ``webhook-signature`` of their predictions' webhooks."""

from __future__ import annotations

from aiohttp import web

from gateway.auth import current_principal
from gateway.rest import REST
from gateway.webhooks import WebhookSecrets, secret_path


async def default_secret(request: web.Request) -> web.Response:
    ctx = request.app[REST]
    sender = ctx.extras.get("webhooks")
    secrets = sender.secrets if sender is not None else WebhookSecrets(secret_path(ctx.settings.home))
    return web.json_response({"key": secrets.key_for(current_principal.get().name)})


def register(app: web.Application) -> None:
    """Add this module's routes to the app."""
    app.router.add_get("/v1/webhooks/default/secret", default_secret)
