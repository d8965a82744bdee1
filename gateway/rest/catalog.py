"""REST routes: models, versions, deployments and hardware, in Replicate's shapes, each over
one call of the core: the catalog (``ModelCatalog``), its changes (``RouteService``), pushes
(``PushService``) and the controller's nodes.

- ``GET /v1/models``, ``GET|DELETE /v1/models/{owner}/{name}``: the models the caller may see; deleting
  one takes an admin or its owner.
- ``GET /v1/models/{owner}/{name}/versions``, ``GET|DELETE .../versions/{id}``: every version, newest first.
- ``POST /v1/models/{owner}/{name}/versions``: a push. The body is a Cog model's bundle (a tar, as
  ``warmfleet push`` makes it; ``X-Bundle-Digest`` may carry its SHA-256), streamed, never read whole.
- ``GET|POST /v1/deployments``, ``GET|PATCH|DELETE /v1/deployments/{owner}/{name}`` (changes need an admin
  token, as over gRPC).
- ``GET /v1/hardware``: the SKUs of the cluster's nodes. Node listing is admin-only over gRPC, and so it is
  here: this route needs an admin token.
"""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from gateway.auth import current_principal, require_admin
from gateway.push import PushHeader
from gateway.rest.context import REST, base_url
from gateway.rest import shapes
from gateway.rest.predictions import json_body
from warmfleet.errors import InvalidInput


PUSH_CHUNK_BYTES = 1 << 20


def register(app: web.Application) -> None:
    """Add this module's routes to the app."""
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{owner}/{name}", get_model)
    app.router.add_delete("/v1/models/{owner}/{name}", delete_model)
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


async def list_models(request: web.Request) -> web.Response:
    entries = request.app[REST].catalog.visible_models(current_principal.get())
    base = base_url(request)
    return web.json_response(shapes.page([shapes.model_json(e, base) for e in entries]))


async def get_model(request: web.Request) -> web.Response:
    entry = request.app[REST].catalog.visible(current_principal.get(), _name(request))
    return web.json_response(shapes.model_json(entry, base_url(request)))


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
    return web.json_response(shapes.deployment_json(deployment), status=201)


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
    require_admin()  # as the gRPC ListNodes: the cluster's nodes are the operator's business
    return web.json_response(shapes.hardware_json(await request.app[REST].controller.nodes()))

