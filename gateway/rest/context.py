"""The REST edge's shared parts: its context (the core services it translates to), the auth and error
middleware, and the problem-details responses. Route modules import these; ``gateway.rest.app`` puts the
routes on an app."""


from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from gateway.auth import Principal, current_principal
from gateway.signing import Sign, UrlSigner, unsigned
from warmfleet.errors import INTERNAL, STATUS_TABLE, LimitExceeded, WarmfleetError
from warmfleet.settings import Settings

if TYPE_CHECKING:  # the services' types; the services themselves are the gateway's (gateway.server)
    from gateway.accounts import Accounts
    from gateway.catalog import ModelCatalog
    from gateway.deployments import RouteService
    from gateway.files import FileStore, InputResolver
    from gateway.predictions import PredictionService
    from gateway.push import PushService
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
    accounts: Accounts  # who calls: accounts, organizations and tokens
    predictions: PredictionService  # create, read, list, cancel and follow predictions
    catalog: ModelCatalog  # the models, versions and deployments as a caller sees them
    routes: RouteService  # changes to models, versions and deployments
    pusher: PushService  # pushes of Cog models
    controller: ControllerClient  # the cluster's nodes (hardware)
    files: FileStore  # the Files API's uploads
    resolver: InputResolver  # file inputs (data:, http(s), Files API URLs) to bytes
    webhooks: WebhookSender  # its secrets sign the webhooks of a caller's predictions
    signer: UrlSigner | None = None  # signs the links in responses; None: only the token opens them


REST = web.AppKey("rest", RestContext)


def base_url(request: web.Request) -> str:
    """This gateway's URL as the client reached it, for the links in responses."""
    return f"{request.scheme}://{request.host}"


def links(request: web.Request) -> Sign:
    """How this request's response writes its links (``gateway.signing``): signed for
    ``signed_url_ttl_s``, so that a client follows them without the token."""
    ctx = request.app[REST]
    return ctx.signer.links(ctx.settings.signed_url_ttl_s) if ctx.signer is not None else unsigned


def problem(status: int, title: str, detail: str, retry_after_s: int = RETRY_AFTER_S, **extra: Any
            ) -> web.Response:
    """An RFC 7807 problem details response (a 429 says when to retry: ``Retry-After``)."""
    code = title.lower().replace(" ", "-")
    body = {"type": PROBLEM_TYPE + code, "title": title, "status": status, "detail": detail, **extra}
    headers = {"Retry-After": str(retry_after_s)} if status == 429 else {}
    return web.json_response(body, status=status, headers=headers, content_type="application/problem+json")


def problem_of(err: WarmfleetError, **more: Any) -> web.Response:
    """The problem details of a warmfleet error, from the one status table (``more``: other members)."""
    for cls in type(err).__mro__:
        if cls in STATUS_TABLE:
            code, status = STATUS_TABLE[cls]
            break
    else:  # pragma: no cover - WarmfleetError itself is in the table
        code, status = INTERNAL
    extra = {"field": err.field, **more} if hasattr(err, "field") else more
    if isinstance(err, LimitExceeded):
        return problem(status, "Rate Limited", str(err), retry_after_s=err.retry_after_s, **extra)
    return problem(status, code.replace("_", " ").title(), str(err), **extra)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path.startswith("/v1/"):
            ctx = request.app[REST]
            current_principal.set(_caller(ctx, request))
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


def _caller(ctx: RestContext, request: web.Request) -> Principal:
    """Who calls: the token's account when the request sends one (a bad token is 401, whatever the
    query); else, for a signed link (a GET or HEAD), the owner of what it opens (a link that does not
    match or has expired is 403); else 401, as for no token."""
    header = request.headers.get("Authorization")
    if header is None and ctx.signer is not None:
        owner = ctx.signer.owner_of(request.method, request.path, request.query)
        if owner is not None:
            return ctx.accounts.link_principal(owner)
    return ctx.accounts.authenticate(_bearer(header))


def _bearer(header: str | None) -> str | None:
    """Replicate's clients send ``Bearer <token>``; its older ones ``Token <token>``: both are read."""
    if header and header.startswith("Token "):
        return "Bearer " + header[len("Token "):]
    return header
