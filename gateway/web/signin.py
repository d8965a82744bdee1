"""Console pages: sign in with an API token, sign out."""

from __future__ import annotations

from aiohttp import web

from gateway.web.context import (
    check_csrf,
    console,
    csrf_token,
    end_session,
    handler,
    html_response,
    new_session,
    redirect,
    signed_in,
)
from gateway.web.html import csrf_field, esc, page
from warmfleet.errors import Unauthenticated


def _next(target: str) -> str:
    """Where to go after signing in: a path of this console only (never "//host" or a URL)."""
    return (
        target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/models"
    )


def _form(request: web.Request, target: str, error: str = "") -> str:
    err = f'<p class="error" id="token-error" role="alert">{esc(error)}</p>' if error else ""
    body = f"""<section class="signin">
<h1>Sign in</h1>
<p>Sign in with a warmfleet API token. An operator's admin token is in <code>~/.warmfleet/admin_token</code>
on the gateway's machine; <code>warmfleet tokens create</code> makes one for a user.</p>
<form method="post" action="/signin" novalidate>
{csrf_field(csrf_token(request))}
<input type="hidden" name="next" value="{esc(target)}">
<div class="field"><label for="token">API token</label>
<input type="password" id="token" name="token" autocomplete="current-password" required autofocus
{'aria-invalid="true" aria-describedby="token-error"' if error else ""}>{err}</div>
<button type="submit" class="primary">Sign in</button>
</form></section>"""
    return page("Sign in", body, principal=None, csrf=csrf_token(request))


@handler
async def signin_page(request: web.Request) -> web.Response:
    target = _next(request.query.get("next", "/models"))
    if signed_in(request) is not None:
        return redirect(target)
    return html_response(_form(request, target))


@handler
async def signin(request: web.Request) -> web.Response:
    form = await request.post()
    check_csrf(request, form.get("csrf"))
    target = _next(str(form.get("next", "/models")))
    token = str(form.get("token", "")).strip()
    try:
        console(request).accounts.authenticate(f"Bearer {token}")
    except Unauthenticated as err:
        reason = "enter a token" if not token else str(err)
        return html_response(_form(request, target, f"Could not sign in: {reason}"), 401)
    response = redirect(target)
    new_session(response, request, token)
    return response


@handler
async def signout(request: web.Request) -> web.Response:
    form = await request.post()
    check_csrf(request, form.get("csrf"))
    response = redirect("/signin")
    end_session(response)
    return response


def register(app: web.Application) -> None:
    app.router.add_get("/signin", signin_page)
    app.router.add_post("/signin", signin)
    app.router.add_post("/signout", signout)
