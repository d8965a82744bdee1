"""The REST edge's shared parts: its context (the core services it translates to), the auth and error
middleware, and the problem-details responses. Route modules import these; ``gateway.rest.app`` puts the
routes on an app."""


from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from gateway.auth import TokenRegistry, current_principal
from warmfleet.errors import INTERNAL, STATUS_TABLE, WarmfleetError
from warmfleet.settings import Settings

if TYPE_CHECKING:  # the services' types; the services themselves are the gateway's (gateway.server)
    from gateway.catalog import ModelCatalog
    from gateway.deployments import RouteService
    from gateway.files import FileStore, InputResolver
    from gateway.predictions import PredictionService
    from gateway.push import PushService
    from gateway.rate_limit import RateLimiter
    from gateway.webhooks import WebhookSender
    from scheduler.ports import ControllerClient

log = logging.getLogger(__name__)

PROBLEM_TYPE = "https://warmfleet.dev/problems/"
PUBLIC_PATHS = ("/metrics", "/healthz", "/openapi.json", "/docs")
RETRY_AFTER_S = 1


@dataclass
class RestContext:
    """What REST routes call: the core services (the very objects the gRPC servicers call) and the
    gateway's shared parts, each built and started by the gateway (``gateway.server``), none by a route."""

    settings: Settings
    tokens: TokenRegistry
    predictions: PredictionService  # create, read, list, cancel and follow predictions
    catalog: ModelCatalog  # the models, versions and deployments as a caller sees them
    routes: RouteService  # changes to models, versions and deployments
    pusher: PushService  # pushes of Cog models
    controller: ControllerClient  # the cluster's nodes (hardware)
    files: FileStore  # the Files API's uploads
    resolver: InputResolver  # file inputs (data:, http(s), Files API URLs) to bytes
    webhooks: WebhookSender  # its secrets sign the webhooks of a caller's predictions
    rate_limiter: RateLimiter  # prediction creates per token


REST = web.AppKey("rest", RestContext)


def base_url(request: web.Request) -> str:
    """This gateway's URL as the client reached it, for the links in responses."""
    return f"{request.scheme}://{request.host}"


def problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    """An RFC 7807 problem details response."""
    code = title.lower().replace(" ", "-")
    body = {"type": PROBLEM_TYPE + code, "title": title, "status": status, "detail": detail, **extra}
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else {}
    return web.json_response(body, status=status, headers=headers, content_type="application/problem+json")


def problem_of(err: WarmfleetError) -> web.Response:
    for cls in type(err).__mro__:
        if cls in STATUS_TABLE:
            code, status = STATUS_TABLE[cls]
            break
    else:  # pragma: no cover - WarmfleetError itself is in the table
        code, status = INTERNAL
    extra = {"field": err.field} if hasattr(err, "field") else {}
    return problem(status, code.replace("_", " ").title(), str(err), **extra)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path.startswith("/v1/"):
            ctx = request.app[REST]
            current_principal.set(ctx.tokens.authenticate(_bearer(request.headers.get("Authorization"))))
        return await handler(request)
    except WarmfleetError as err:
        return problem_of(err)
    except web.HTTPException as err:
        if err.status >= 400:
            return problem(err.status, err.reason, err.text or err.reason)
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return problem(500, "Internal", "internal error; the gateway log has the details")


def _bearer(header: str | None) -> str | None:
    """Replicate's clients send ``Bearer <token>``; its older ones ``Token <token>``: both are read."""
    if header and header.startswith("Token "):
        return "Bearer " + header[len("Token "):]
    return header
