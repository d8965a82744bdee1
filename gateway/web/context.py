"""The console edge's shared parts: its context (the core services it calls), the session (the API
token in a cookie), CSRF tokens, and the wrapper that turns the core's errors into pages.

The session: the token a user signs in with is kept in ``wf_token``, an HttpOnly, SameSite=Strict cookie
(Secure over https), and checked on every request with the same ``Accounts.authenticate`` as a bearer
token, so a revoked token ends its sessions at once. CSRF: every form carries ``csrf``, an HMAC of the
session's random ``wf_csrf`` cookie under a key of this process; a POST whose field does not match is
refused (403). The sign-in form has one too (the cookie comes with the sign-in page), and signing in
starts a new ``wf_csrf``.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from urllib.parse import urlencode
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable

from aiohttp import web

from gateway.auth import Principal
from gateway.web.html import esc, page
from warmfleet.errors import NotFound, PermissionDenied, Unauthenticated, WarmfleetError
from warmfleet.settings import Settings

if TYPE_CHECKING:  # the services' types; the services themselves are the gateway's (gateway.server)
    from gateway.accounts import Accounts
    from gateway.catalog import ModelCatalog
    from gateway.deployments import RouteService
    from gateway.files import InputResolver
    from gateway.predictions import PredictionService
    from scheduler.ports import ControllerClient

log = logging.getLogger(__name__)

TOKEN_COOKIE = "wf_token"
CSRF_COOKIE = "wf_csrf"
NEW_SEED = web.RequestKey("console_new_csrf_seed", str)  # a new session's seed, for the response to set


@dataclass
class ConsoleContext:
    """What console pages call: the core services (the very objects the gRPC and REST edges call), each
    built and started by the gateway (``gateway.server``), none by a page."""

    settings: Settings
    accounts: Accounts  # who calls: the session's token
    predictions: PredictionService  # create, read, list, cancel and follow predictions
    catalog: ModelCatalog  # the models, versions and deployments as a caller sees them
    routes: RouteService  # changes to deployments
    controller: ControllerClient  # the cluster's nodes, instances and hardware
    resolver: InputResolver  # file inputs (data:, http(s) URLs) to bytes
    queue_length: Callable[[str], int] = lambda route: 0  # the router's queue of a route, now
    grpc_port: int = 0  # the gateway's bound gRPC port, for the grpcurl snippet
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)


CONSOLE = web.AppKey("console", ConsoleContext)


def console(request: web.Request) -> ConsoleContext:
    return request.app[CONSOLE]


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


# The session


def principal_of(request: web.Request) -> Principal:
    """The signed-in caller; ``Unauthenticated`` when the cookie holds no token the gateway knows."""
    token = request.cookies.get(TOKEN_COOKIE)
    if not token:
        raise Unauthenticated("not signed in")
    return console(request).accounts.authenticate(f"Bearer {token}")


def signed_in(request: web.Request) -> Principal | None:
    try:
        return principal_of(request)
    except Unauthenticated:
        return None


def csrf_token(request: web.Request) -> str:
    """This session's CSRF token (a new session's, when the request came with no ``wf_csrf``: the
    response sets it, see ``handler``)."""
    seed = request.cookies.get(CSRF_COOKIE) or request.get(NEW_SEED)
    if not seed:
        seed = request[NEW_SEED] = secrets.token_urlsafe(24)
    return hmac.new(console(request).csrf_key, seed.encode(), "sha256").hexdigest()


def check_csrf(request: web.Request, sent: object) -> None:
    seed = request.cookies.get(CSRF_COOKIE)
    expected = csrf_token(request) if seed else ""
    if not seed or not isinstance(sent, str) or not hmac.compare_digest(sent, expected):
        raise PermissionDenied(
            "this form has expired or did not come from this console: reload the page and send it again"
        )


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, samesite="Strict", secure=request.secure, path="/")


def new_session(response: web.StreamResponse, request: web.Request, token: str) -> None:
    set_cookie(response, request, TOKEN_COOKIE, token)
    set_cookie(response, request, CSRF_COOKIE, secrets.token_urlsafe(24))


def end_session(response: web.StreamResponse) -> None:
    for name in (TOKEN_COOKIE, CSRF_COOKIE):
        response.del_cookie(name, path="/")


# Pages and their errors

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def html_response(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": CSP,
            "Referrer-Policy": "same-origin",
        },
    )


# Only this console's own script and style; images may be data URLs (previews, streamed outputs).
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def redirect(location: str) -> web.Response:
    """303 See Other: after a form's POST, the page to GET."""
    return web.Response(status=303, headers={"Location": location})


def error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    body = f'<h1>{esc(title)}</h1><p class="problem">{esc(detail)}</p><p><a href="/models">Models</a></p>'
    return html_response(page(title, body, principal=signed_in(request), csrf=csrf_token(request)), status)


def handler(fn: Handler) -> Handler:
    """A console page: the core's errors as pages (not signed in: to the sign-in page, then back), and
    a new session's ``wf_csrf`` cookie set on the response."""

    @functools.wraps(fn)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await fn(request)
        except Unauthenticated:
            target = request.path_qs if request.method == "GET" else "/models"
            response = redirect("/signin?" + urlencode({"next": target}))
        except PermissionDenied as err:
            response = error_page(request, 403, "Not allowed", str(err))
        except NotFound as err:
            response = error_page(request, 404, "Not found", str(err))
        except WarmfleetError as err:
            response = error_page(request, 400, "Could not do that", str(err))
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = error_page(
                request, 500, "Something went wrong", "an internal error; the gateway's log has the details"
            )
        seed = request.get(NEW_SEED)
        if seed and CSRF_COOKIE not in request.cookies:
            set_cookie(response, request, CSRF_COOKIE, seed)
        return response

    return wrapped


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDenied("the fleet pages are for admins: sign in with an admin token")
