"""REST routes: models, versions, deployments and hardware, in Replicate's shapes, each over
one call of the core: the catalog (``ModelCatalog``), its changes (``RouteService``), pushes
(``PushService``) and the controller's nodes.

- ``GET /v1/models`` (``sort_by``, ``sort_direction``): the models the caller may see, as Replicate's page
  and OpenAI's list at once (``shapes.models_page``); ``GET|PATCH|DELETE /v1/models/{owner}/{name}``:
  changing or deleting one takes an admin or a member of its namespace.
- ``POST /v1/models``: Replicate's "create a model", with no version yet (a push fills it), under one of
  the caller's namespaces; 201 with the model.
- ``QUERY /v1/models`` (the body: text) and ``GET /v1/search?query=``: the models that match a text.
- ``GET /v1/models/{owner}/{name}/readme`` (text, 404 without one) and ``.../examples`` (an empty page:
  warmfleet keeps no example predictions).
- ``GET /v1/models/{owner}/{name}/versions``, ``GET|DELETE .../versions/{id}``: every version, newest first.
- ``POST /v1/models/{owner}/{name}/versions``: a push. The body is a Cog model's bundle (a tar, as
  ``warmfleet push`` makes it; ``X-Bundle-Digest`` may carry its SHA-256), streamed, never read whole.
- ``GET|POST /v1/deployments``, ``GET|PATCH|DELETE /v1/deployments/{owner}/{name}`` (changes need an admin
  token, as over gRPC). A create answers 200, as Replicate's document says.
- ``GET /v1/hardware``: the hardware SKUs the cluster's nodes offer (name and SKU only), for any token:
  Replicate's model-creation guide has users pick a SKU from it. The nodes themselves (addresses,
  memory, utilisation) stay admin-only, over gRPC's ``ListNodes``.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from aiohttp import web

from gateway.auth import current_principal
from gateway.catalog import CatalogEntry
from gateway.push import PushHeader
from gateway.rest.context import REST, base_url
from gateway.rest import shapes
from gateway.rest.predictions import json_body
from warmfleet.errors import InvalidInput, NotFound


PUSH_CHUNK_BYTES = 1 << 20


def register(app: web.Application) -> None:
    """Add this module's routes to the app."""
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/models", create_model)
    app.router.add_route("QUERY", "/v1/models", query_models)
    app.router.add_get("/v1/search", search)
    app.router.add_get("/v1/models/{owner}/{name}", get_model)
    app.router.add_patch("/v1/models/{owner}/{name}", update_model)
    app.router.add_delete("/v1/models/{owner}/{name}", delete_model)
    app.router.add_get("/v1/models/{owner}/{name}/readme", get_readme)
    app.router.add_get("/v1/models/{owner}/{name}/examples", list_examples)
    app.router.add_get("/v1/models/{owner}/{name}/versions", list_versions)
    app.router.add_post("/v1/models/{owner}/{name}/versions", push_version)
    app.router.add_get("/v1/models/{owner}/{name}/versions/{id}", get_version)
    app.router.add_delete("/v1/models/{owner}/{name}/versions/{id}", delete_version)
    app.router.add_get("/v1/deployments", list_deployments)
    app.router.add_post("/v1/deployments", create_deployment)
    app.router.add_get("/v1/deployments/{owner}/{name}", get_deployment)
    app.router.add_patch("/v1/deployments/{owner}/{name}", update_deployment)
    app.router.add_delete("/v1/deployments/{owner}/{name}", delete_deployment)
    app.router.add_get("/v1/hardware", list_hardware)


def _name(request: web.Request) -> str:
    return f"{request.match_info['owner']}/{request.match_info['name']}"


# Models and versions


# Replicate's orders of a model list: by when the model was made, or its latest version (the default).
SORTS = ("latest_version_created_at", "model_created_at")
DIRECTIONS = ("desc", "asc")
SEARCH_LIMIT, MAX_SEARCH_LIMIT = 20, 50


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str:
    value = request.query.get(name, allowed[0])
    if value not in allowed:
        raise InvalidInput(name, f"must be one of {', '.join(allowed)}; got {value[:64]!r}")
    return value


def _models_json(request: web.Request, entries: list[CatalogEntry]) -> list[dict[str, Any]]:
    catalog, base = request.app[REST].catalog, base_url(request)
    return [shapes.model_json(e, base, catalog.model_created_at(e.spec.name)) for e in entries]


async def list_models(request: web.Request) -> web.Response:
    """The models the caller may see, newest first by default (``sort_by``, ``sort_direction``); models of
    the same time by name."""
    sort_by, direction = _choice(request, "sort_by", SORTS), _choice(request, "sort_direction", DIRECTIONS)
    catalog = request.app[REST].catalog
    entries = catalog.visible_models(current_principal.get())  # by name
    if sort_by == "model_created_at":
        entries.sort(key=lambda e: catalog.model_created_at(e.spec.name), reverse=direction == "desc")
    else:
        entries.sort(key=lambda e: e.created_at, reverse=direction == "desc")
    return web.json_response(shapes.models_page(_models_json(request, entries)))


async def create_model(request: web.Request) -> web.Response:
    spec = shapes.model_create(await json_body(request))
    entry = await request.app[REST].routes.create_empty_model_as(current_principal.get(), spec)
    return web.json_response(_models_json(request, [entry])[0], status=201)


async def get_model(request: web.Request) -> web.Response:
    entry = request.app[REST].catalog.visible(current_principal.get(), _name(request))
    return web.json_response(_models_json(request, [entry])[0])


async def update_model(request: web.Request) -> web.Response:
    changes = shapes.model_update(await json_body(request))
    entry = await request.app[REST].routes.update_model_as(current_principal.get(), _name(request), changes)
    return web.json_response(_models_json(request, [entry])[0])


def _matches(request: web.Request, text: str) -> list[tuple[CatalogEntry, float]]:
    """The models the caller may see that match ``text``, best first (then by name)."""
    entries = request.app[REST].catalog.visible_models(current_principal.get())
    scored = [(e, shapes.search_score(text, e)) for e in entries]
    return sorted(((e, s) for e, s in scored if s > 0 or not text.split()), key=lambda pair: -pair[1])


async def query_models(request: web.Request) -> web.Response:
    """Replicate's ``QUERY /v1/models``: the body is the text to search for (every model for none)."""
    body = await request.read()
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise InvalidInput("body", "must be UTF-8 text: the words to search for") from None
    found = [e for e, _ in _matches(request, text)]
    return web.json_response(shapes.page(_models_json(request, found)))


async def search(request: web.Request) -> web.Response:
    """Replicate's ``GET /v1/search?query=...&limit=N`` (1-50, 20 by default): models only."""
    text = request.query.get("query", "")
    if not text.strip():
        raise InvalidInput("query", "is required: the words to search for")
    limit = request.query.get("limit", str(SEARCH_LIMIT))
    if not shapes.is_whole_number(limit) or not 1 <= int(limit) <= MAX_SEARCH_LIMIT:
        raise InvalidInput("limit", f"must be a whole number from 1 to {MAX_SEARCH_LIMIT}")
    found = _matches(request, text)[: int(limit)]
    models = _models_json(request, [e for e, _ in found])
    return web.json_response(shapes.search_json(text, [(m, s) for m, (_, s) in zip(models, found)]))


async def get_readme(request: web.Request) -> web.Response:
    entry = request.app[REST].catalog.visible(current_principal.get(), _name(request))
    readme = entry.spec.about.get("readme")
    if not readme:
        raise NotFound(f"{entry.spec.name} has no readme; PATCH /v1/models/{entry.spec.name} sets one")
    return web.Response(text=readme, content_type="text/plain")


async def list_examples(request: web.Request) -> web.Response:
    request.app[REST].catalog.visible(current_principal.get(), _name(request))  # 404 for no such model
    return web.json_response(shapes.page([]))  # warmfleet keeps no example predictions


async def delete_model(request: web.Request) -> web.Response:
    await request.app[REST].routes.delete_model_as(current_principal.get(), _name(request))
    return web.Response(status=204)


async def list_versions(request: web.Request) -> web.Response:
    entries = request.app[REST].catalog.visible_versions(current_principal.get(), _name(request))
    return web.json_response(shapes.page([shapes.version_json(e) for e in entries]))


async def get_version(request: web.Request) -> web.Response:
    catalog = request.app[REST].catalog
    entry = catalog.visible_version(current_principal.get(), _name(request), request.match_info["id"])
    return web.json_response(shapes.version_json(entry))


async def delete_version(request: web.Request) -> web.Response:
    routes = request.app[REST].routes
    await routes.delete_version_as(current_principal.get(), _name(request), request.match_info["id"])
    return web.Response(status=202)


async def push_version(request: web.Request) -> web.Response:
    description = request.headers.get("X-Model-Description", "")
    if not _utf8(description):  # aiohttp keeps a header's bytes that are not UTF-8 as surrogates
        raise InvalidInput("X-Model-Description", "must be UTF-8 text")
    header = PushHeader(_name(request), description, request.headers.get("X-Bundle-Digest", ""),
                        request.content_length or 0)

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(PUSH_CHUNK_BYTES):
            yield chunk

    pushed = await request.app[REST].pusher.push_as(current_principal.get(), header, chunks())
    model = shapes.model_json(pushed.model, base_url(request))
    body = {**shapes.version_json(pushed.version), "model": model, "created_model": pushed.created_model,
            "new_version": pushed.new_version}
    return web.json_response(body, status=201 if pushed.new_version else 200)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# Deployments


async def list_deployments(request: web.Request) -> web.Response:
    deployments = await request.app[REST].routes.deployments()
    return web.json_response(shapes.page([shapes.deployment_json(d) for d in deployments]))


async def create_deployment(request: web.Request) -> web.Response:
    principal = current_principal.get()
    name, model, version, scale = shapes.deployment_create(await json_body(request), principal.name)
    deployment = await request.app[REST].routes.create_deployment_as(principal, name, model, version, scale)
    return web.json_response(shapes.deployment_json(deployment))  # 200, as Replicate's document says


async def get_deployment(request: web.Request) -> web.Response:
    deployment = await request.app[REST].routes.deployment(_name(request))
    return web.json_response(shapes.deployment_json(deployment))


async def update_deployment(request: web.Request) -> web.Response:
    version, scale = shapes.deployment_update(await json_body(request))
    routes = request.app[REST].routes
    deployment = await routes.update_deployment_as(current_principal.get(), _name(request), version, scale)
    return web.json_response(shapes.deployment_json(deployment))


async def delete_deployment(request: web.Request) -> web.Response:
    await request.app[REST].routes.delete_deployment_as(current_principal.get(), _name(request))
    return web.Response(status=204)


# Hardware


async def list_hardware(request: web.Request) -> web.Response:
    return web.json_response(shapes.hardware_json(await request.app[REST].controller.nodes()))

