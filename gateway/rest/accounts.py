"""REST routes: the caller's account and access tokens, each over one call of ``Accounts``.

- ``GET /v1/account``: the caller's account, in Replicate's shape (``type``, ``username``, ``name``; no
  ``github_url``, which warmfleet has not), with warmfleet's ``id`` and ``organizations`` besides.
- ``GET /v1/tokens`` (``?account=NAME``, an admin's), ``POST /v1/tokens`` (``{"name", "role", "account"}``,
  answered 201 with the token's text, shown once), ``DELETE /v1/tokens/{id}`` (revoke; answered with the
  token). A user sees and revokes its own tokens; an admin any account's.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.accounts import TokenInfo
from gateway.auth import current_principal
from gateway.rest.context import REST
from gateway.rest.predictions import json_body
from gateway.rest.shapes import account_json, rfc3339
from warmfleet.errors import InvalidInput


def register(app: web.Application) -> None:
    """Add this module's routes to the app."""
    app.router.add_get("/v1/account", get_account)
    app.router.add_get("/v1/tokens", list_tokens)
    app.router.add_post("/v1/tokens", create_token)
    app.router.add_delete("/v1/tokens/{id}", revoke_token)


def _token_json(request: web.Request, t: TokenInfo) -> dict[str, Any]:
    account = request.app[REST].accounts.account_by_id(t.account)
    return {"id": t.id, "account": account.name, "account_id": t.account, "name": t.name, "role": t.role.value,
            "created_at": rfc3339(t.created_at), "last_used_at": rfc3339(t.last_used_at),
            "revoked_at": rfc3339(t.revoked_at)}


async def get_account(request: web.Request) -> web.Response:
    caller = current_principal.get()
    account = request.app[REST].accounts.account_of(caller)
    return web.json_response({**account_json(account.kind, account.name), "id": account.id,
                              "organizations": sorted(caller.organizations)})


async def list_tokens(request: web.Request) -> web.Response:
    account = request.query.get("account", "")
    found = request.app[REST].accounts.tokens(current_principal.get(), account)
    return web.json_response({"results": [_token_json(request, t) for t in found]})


async def create_token(request: web.Request) -> web.Response:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    fields = {key: body.get(key, default) for key, default in (("name", ""), ("role", "user"), ("account", ""))}
    for key, value in fields.items():
        if not isinstance(value, str):
            raise InvalidInput(key, "must be a string")
    caller = current_principal.get()
    token, text = await request.app[REST].accounts.create_token(
        caller, fields["account"] or caller.name, fields["name"], fields["role"])
    return web.json_response({"token": text, **_token_json(request, token)}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    token = await request.app[REST].accounts.revoke_token(current_principal.get(), request.match_info["id"])
    return web.json_response(_token_json(request, token))
