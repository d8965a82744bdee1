"""REST routes: predictions, in Replicate's shapes, each over one call of ``PredictionService``.

- ``POST /v1/predictions`` (``version``), ``POST /v1/models/{owner}/{name}/predictions`` and
  ``POST /v1/deployments/{owner}/{name}/predictions``: ``create``, answered 201. Headers:
  ``Prefer: wait[=N]`` (wait_s), ``Cancel-After`` (deadline_s). The account's limits (``gateway.limits``)
  answer 429 with ``Retry-After``. File inputs (data:, http(s) and
  Files API URLs) become bytes through one hook, ``resolve_files`` (``gateway.files``).
- ``GET /v1/predictions`` (cursor pages; ``page_size`` 1-1000 besides Replicate's ``cursor``,
  ``created_after``, ``created_before`` and ``source``), ``GET /v1/predictions/{id}``,
  ``POST /v1/predictions/{id}/cancel``.
- ``GET /v1/predictions/{id}/output/{index}``: the bytes of an output file (the output's URLs point
  here), to its owner (or an admin) only.

The links in a prediction (``urls.get``, ``urls.stream``, the output's file URLs) are signed
(``gateway.signing``): a client follows them without the token, as the owner, until they expire. Over
plain http, an output's files within ``inline_output_max_bytes`` come inline as data URLs instead
(``shapes.inlines_files``; a list page: that many bytes across the page); ``output/{index}`` still serves
them.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlencode

import orjson
from aiohttp import web

from gateway.auth import current_principal
from gateway.rest.context import REST, RestContext, base_url, links
from gateway.rest import shapes
from warmfleet.domain import Prediction
from warmfleet.errors import InvalidInput, NotFound


def register(app: web.Application) -> None:
    """Add this module's routes to the app."""
    app.router.add_post("/v1/predictions", create_by_version)
    app.router.add_post("/v1/models/{owner}/{name}/predictions", create_for_model)
    app.router.add_post("/v1/deployments/{owner}/{name}/predictions", create_for_deployment)
    app.router.add_get("/v1/predictions", list_predictions)
    app.router.add_get("/v1/predictions/{id}", get_prediction)
    app.router.add_post("/v1/predictions/{id}/cancel", cancel_prediction)
    app.router.add_get("/v1/predictions/{id}/output/{index}", get_output_file)


async def json_body(request: web.Request) -> Any:
    """The request's JSON body (None when empty); 422 when it is not JSON. Strict JSON: NaN, infinities
    (1e999 too), lone surrogates, invalid UTF-8 and nesting past 1024 levels are refused here."""
    data = await request.read()
    try:
        return orjson.loads(data) if data.strip() else None
    except orjson.JSONDecodeError as err:
        raise InvalidInput("body", f"is not JSON: {err}") from None


async def resolve_files(ctx: RestContext, input: dict[str, Any], target: dict[str, str]) -> dict[str, Any]:
    """The one hook for file inputs: ``input`` with its data:, http(s) and Files API URLs, where the
    target's input schema takes a file, turned into ``FileData`` (``gateway.files``)."""
    if not shapes.mentions_url(input):
        return input  # the common case: no string could name a file, and no schema is read for it
    schema = await input_schema(ctx, target)
    return await ctx.resolver.resolve(current_principal.get(), input, schema)


async def input_schema(ctx: RestContext, target: dict[str, str]) -> dict[str, Any] | None:
    """The input schema where a create's files go: its model's (a deployment's model's latest version's;
    a bare version id's, when it is a model's latest); None when no model serves that version."""
    principal, name = current_principal.get(), target.get("model")
    if target.get("deployment"):
        name = ctx.catalog.deployment(target["deployment"]).spec.model
    if name:
        return ctx.catalog.visible(principal, name).input_schema
    listed = ctx.catalog.visible_models(principal)
    entry = next((e for e in listed if e.spec.version == target.get("version")), None)
    return entry.input_schema if entry is not None else None


async def _create(request: web.Request, target: Callable[[dict[str, Any]], dict[str, str]]) -> web.Response:
    """One create: headers, body, files, then ``create`` for the ``target`` the body names."""
    ctx = request.app[REST]
    wait_s = shapes.prefer_wait_s(request.headers.get("Prefer"))
    deadline_s = shapes.cancel_after_s(request.headers.get("Cancel-After"))
    body = await json_body(request)
    input = shapes.input_of(body)
    names = target(body)
    input = await resolve_files(ctx, input, names)
    create = shapes.create_request(body, input, wait_s=wait_s, deadline_s=deadline_s, **names)
    pred = await ctx.predictions.create(current_principal.get(), create)
    shown = shown_prediction(request, pred)
    return web.json_response(shown, status=201, headers={"Location": shown["urls"]["get"]})


async def create_by_version(request: web.Request) -> web.Response:
    return await _create(request, shapes.target_of)


async def create_for_model(request: web.Request) -> web.Response:
    return await _create(request, lambda body: {"model": _name(request)})


async def create_for_deployment(request: web.Request) -> web.Response:
    return await _create(request, lambda body: {"deployment": _name(request)})


def _name(request: web.Request) -> str:
    return f"{request.match_info['owner']}/{request.match_info['name']}"


# The filters of a list that its next page's URL keeps.
LIST_FILTERS = ("page_size", "created_after", "created_before", "source")


async def list_predictions(request: web.Request) -> web.Response:
    """A page of the caller's predictions, newest first; ``created_after`` (at or after) and
    ``created_before`` (before) are RFC 3339 times; ``source`` is "api" (all of them: every prediction
    here is made through the API) or "web" (none: the web console makes none yet)."""
    ctx = request.app[REST]
    size = request.query.get("page_size", "")
    if size and not shapes.is_whole_number(size):
        raise InvalidInput("page_size", "must be a whole number from 1 to 1000")
    after, before = (shapes.parse_rfc3339(request.query[name], name) if name in request.query else None
                     for name in ("created_after", "created_before"))
    source = request.query.get("source", "api")
    if source not in ("api", "web"):
        raise InvalidInput("source", f"must be 'web' or 'api'; got {source[:32]!r}")
    predictions, cursor = await ctx.predictions.list(current_principal.get(), int(size or 0),
                                                     request.query.get("cursor", ""), after, before)
    if source == "web":
        predictions, cursor = [], ""
    base = base_url(request)
    next_url = None
    if cursor:
        kept = {name: request.query[name] for name in LIST_FILTERS if name in request.query}
        query = {"cursor": cursor, **kept}
        next_url = f"{base}/v1/predictions?{urlencode(query)}"
    limit = ctx.settings.inline_output_max_bytes
    results = shapes.predictions_response(predictions, base, links(request), limit)
    return web.json_response(shapes.page(results, next_url))


async def get_prediction(request: web.Request) -> web.Response:
    pred = await request.app[REST].predictions.get(current_principal.get(), request.match_info["id"])
    return web.json_response(shown_prediction(request, pred))


async def cancel_prediction(request: web.Request) -> web.Response:
    pred = await request.app[REST].predictions.cancel(current_principal.get(), request.match_info["id"])
    return web.json_response(shown_prediction(request, pred))


def shown_prediction(request: web.Request, pred: Prediction) -> dict[str, Any]:
    """``pred`` as this request's response shows it: its links for this base URL, signed, and its output's
    files inline within ``inline_output_max_bytes`` over plain http (``shapes.prediction_response``)."""
    limit = request.app[REST].settings.inline_output_max_bytes
    return shapes.prediction_response(pred, base_url(request), links(request), limit)


async def get_output_file(request: web.Request) -> web.Response:
    prediction_id, index = request.match_info["id"], request.match_info["index"]
    pred = await request.app[REST].predictions.get(current_principal.get(), prediction_id)
    files = pred.output.files if pred.output is not None else []
    if not shapes.is_whole_number(index) or int(index) >= len(files):
        raise NotFound(f"prediction {prediction_id!r} has no output file {index} ({len(files)} in all)")
    f = files[int(index)]
    name = shapes.file_name(f)
    headers = {"Content-Disposition": f'inline; filename="{name}"'} if name else {}
    return web.Response(body=f.data, content_type=f.content_type or "application/octet-stream", headers=headers)
