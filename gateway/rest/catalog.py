"""REST routes: models, versions, deployments, hardware and the account, in Replicate's shapes, each over
one RPC of the Models, Deployments or Cluster service.

- ``GET /v1/models``, ``GET|DELETE /v1/models/{owner}/{name}`` (ListModels, GetModel, DeleteModel).
- ``GET /v1/models/{owner}/{name}/versions``, ``GET|DELETE .../versions/{id}`` (ListVersions, GetVersion,
  DeleteVersion): every version, newest first.
- ``POST /v1/models/{owner}/{name}/versions`` (PushVersion): the body is a Cog model's bundle (a tar, as
  ``warmfleet push`` makes it; ``X-Bundle-Digest`` may carry its SHA-256), streamed, never read whole.
- ``GET|POST /v1/deployments``, ``GET|PATCH|DELETE /v1/deployments/{owner}/{name}`` (the Deployments
  service; changes need an admin token, as over gRPC).
- ``GET /v1/hardware`` (ListNodes): the SKUs of the cluster's nodes. Node listing is admin-only over gRPC,
  and so it is here: this route needs an admin token.
- ``GET /v1/account``: who the token is (no RPC: the token's principal is all there is to say).
"""

from __future__ import annotations

from aiohttp import web

from gateway.auth import current_principal
from gateway.rest.context import REST, base_url
from gateway.rest import shapes
from gateway.rest.predictions import json_body
from warmfleet.v1 import cluster_pb2, deployments_pb2, models_pb2


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
    app.router.add_get("/v1/account", get_account)


def _name(request: web.Request) -> str:
    return f"{request.match_info['owner']}/{request.match_info['name']}"


# Models and versions


async def list_models(request: web.Request) -> web.Response:
    reply = await request.app[REST].models.ListModels(models_pb2.ListModelsRequest(), None)
    base = base_url(request)
    return web.json_response(shapes.page([shapes.model_json(m, base) for m in reply.models]))


async def _model(request: web.Request) -> models_pb2.Model:
    return await request.app[REST].models.GetModel(models_pb2.GetModelRequest(name=_name(request)), None)


async def get_model(request: web.Request) -> web.Response:
    return web.json_response(shapes.model_json(await _model(request), base_url(request)))


async def delete_model(request: web.Request) -> web.Response:
    await request.app[REST].models.DeleteModel(models_pb2.DeleteModelRequest(name=_name(request)), None)
    return web.Response(status=204)


async def list_versions(request: web.Request) -> web.Response:
    request_pb = models_pb2.ListVersionsRequest(model=_name(request))
    reply = await request.app[REST].models.ListVersions(request_pb, None)
    return web.json_response(shapes.page([shapes.version_json(v) for v in reply.versions]))


def _version_request(request: web.Request, cls):
    return cls(model=_name(request), id=request.match_info["id"])


async def get_version(request: web.Request) -> web.Response:
    request_pb = _version_request(request, models_pb2.GetVersionRequest)
    reply = await request.app[REST].models.GetVersion(request_pb, None)
    return web.json_response(shapes.version_json(reply))


async def delete_version(request: web.Request) -> web.Response:
    request_pb = _version_request(request, models_pb2.DeleteVersionRequest)
    await request.app[REST].models.DeleteVersion(request_pb, None)
    return web.Response(status=202)


async def push_version(request: web.Request) -> web.Response:
    header = models_pb2.PushHeader(model=_name(request),
                                   description=request.headers.get("X-Model-Description", ""),
                                   digest=request.headers.get("X-Bundle-Digest", ""),
                                   size_bytes=request.content_length or 0)

    async def parts():
        yield models_pb2.PushVersionRequest(header=header)
        async for chunk in request.content.iter_chunked(PUSH_CHUNK_BYTES):
            yield models_pb2.PushVersionRequest(chunk=chunk)

    reply = await request.app[REST].models.PushVersion(parts(), None)
    body = {**shapes.version_json(reply.version), "model": shapes.model_json(reply.model, base_url(request)),
            "created_model": reply.created_model, "new_version": reply.new_version}
    return web.json_response(body, status=201 if reply.new_version else 200)


# Deployments


async def list_deployments(request: web.Request) -> web.Response:
    reply = await request.app[REST].deployments.ListDeployments(deployments_pb2.ListDeploymentsRequest(), None)
    return web.json_response(shapes.page([shapes.deployment_json(d) for d in reply.deployments]))


async def create_deployment(request: web.Request) -> web.Response:
    pb = shapes.deployment_create_request(await json_body(request), current_principal.get().name)
    reply = await request.app[REST].deployments.CreateDeployment(pb, None)
    return web.json_response(shapes.deployment_json(reply), status=201)


async def get_deployment(request: web.Request) -> web.Response:
    reply = await request.app[REST].deployments.GetDeployment(
        deployments_pb2.GetDeploymentRequest(name=_name(request)), None)
    return web.json_response(shapes.deployment_json(reply))


async def update_deployment(request: web.Request) -> web.Response:
    pb = shapes.deployment_update_request(_name(request), await json_body(request))
    reply = await request.app[REST].deployments.UpdateDeployment(pb, None)
    return web.json_response(shapes.deployment_json(reply))


async def delete_deployment(request: web.Request) -> web.Response:
    await request.app[REST].deployments.DeleteDeployment(
        deployments_pb2.DeleteDeploymentRequest(name=_name(request)), None)
    return web.Response(status=204)


# Hardware and account


async def list_hardware(request: web.Request) -> web.Response:
    reply = await request.app[REST].cluster.ListNodes(cluster_pb2.ListNodesRequest(), None)
    return web.json_response(shapes.hardware_json(list(reply.nodes)))


async def get_account(request: web.Request) -> web.Response:
    return web.json_response(shapes.account_json(current_principal.get().name))
