"""The warmfleet.v1 gRPC services: each method converts, calls one domain function, converts back."""

from __future__ import annotations

import json

from gateway.auth import TokenRegistry, current_principal, require_admin
from gateway.catalog import ModelCatalog, model_not_found
from gateway.deployments import RouteService, Scale
from gateway.grpc import convert
from gateway.predictions import PredictionService
from gateway.push import PushHeader, PushService
from scheduler.ports import ControllerClient
from warmfleet.errors import InvalidInput, PermissionDenied
from warmfleet.v1 import (
    cluster_pb2, cluster_pb2_grpc, deployments_pb2, deployments_pb2_grpc, models_pb2, models_pb2_grpc,
    predictions_pb2, predictions_pb2_grpc,
)


class PredictionsServicer(predictions_pb2_grpc.PredictionsServicer):
    def __init__(self, service: PredictionService) -> None:
        self._service = service

    async def CreatePrediction(self, request, context):
        pred = await self._service.create(current_principal.get(), convert.create_from_pb(request))
        return convert.prediction_to_pb(pred)

    async def GetPrediction(self, request, context):
        return convert.prediction_to_pb(await self._service.get(current_principal.get(), request.id))

    async def ListPredictions(self, request, context):
        page, cursor = await self._service.list(current_principal.get(), request.page_size, request.cursor)
        return predictions_pb2.ListPredictionsResponse(
            predictions=[convert.prediction_to_pb(p) for p in page], next_cursor=cursor)

    async def CancelPrediction(self, request, context):
        return convert.prediction_to_pb(await self._service.cancel(current_principal.get(), request.id))

    async def StreamPrediction(self, request, context):
        async for event in self._service.events(current_principal.get(), request.id, request.after_seq):
            yield convert.event_to_pb(event)

    async def CreateAndStreamPrediction(self, request, context):
        principal = current_principal.get()
        create = convert.create_from_pb(request)
        create.wait_s = 0.0
        pred = await self._service.create(principal, create)
        async for event in self._service.events(principal, pred.id):
            yield convert.event_to_pb(event)


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, catalog: ModelCatalog, routes: RouteService, pusher: PushService) -> None:
        self._catalog = catalog
        self._routes = routes
        self._pusher = pusher

    async def ListModels(self, request, context):
        principal = current_principal.get()
        return models_pb2.ListModelsResponse(
            models=[_model_pb(e) for e in self._catalog.models() if principal.may_see(e.spec)])

    async def GetModel(self, request, context):
        return _model_pb(_visible(self._catalog.by_name(request.name)))

    async def PushVersion(self, request_iterator, context):
        principal = current_principal.get()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("header", "a push starts with its header (model, digest, size_bytes)")
        h = first.header
        header = PushHeader(h.model, h.description, h.digest, h.size_bytes)
        result = await self._pusher.push(principal.name, principal.is_admin, header,
                                         convert.push_chunks(request_iterator))
        return models_pb2.PushVersionResponse(
            model=_model_pb(self._catalog.by_name(result.spec.name)), version=convert.version_to_pb(
                self._catalog.version_of(result.spec.name, result.version.version)),
            created_model=result.created_model, new_version=result.new_version)

    async def ListVersions(self, request, context):
        _visible(self._catalog.by_name(request.model))
        return models_pb2.ListVersionsResponse(
            versions=[convert.version_to_pb(e) for e in self._catalog.versions(request.model)])

    async def GetVersion(self, request, context):
        _visible(self._catalog.by_name(request.model))
        return convert.version_to_pb(self._catalog.version_of(request.model, request.id))

    async def DeleteVersion(self, request, context):
        entry = _visible(self._catalog.by_name(request.model))
        _may_change(entry)
        version = convert.version_to_pb(self._catalog.version_of(request.model, request.id))
        await self._routes.delete_version(request.model, request.id)
        return version

    async def CreateModel(self, request, context):
        require_admin()
        spec = await self._routes.create_model(convert.model_spec_from_pb(request))
        return _model_pb(self._catalog.by_name(spec.name))

    async def DeleteModel(self, request, context):
        entry = _visible(self._catalog.by_name(request.name))
        _may_change(entry)
        model = _model_pb(entry)
        await self._routes.delete_model(request.name)
        return models_pb2.DeleteModelResponse(model=model)


class DeploymentsServicer(deployments_pb2_grpc.DeploymentsServicer):
    def __init__(self, catalog: ModelCatalog, routes: RouteService, controller: ControllerClient) -> None:
        self._catalog = catalog
        self._routes = routes
        self._controller = controller

    async def _pb(self, spec) -> deployments_pb2.Deployment:
        targets = await self._controller.scaling()
        return convert.deployment_to_pb(spec, targets.get(spec.name, 0))

    async def CreateDeployment(self, request, context):
        require_admin()
        scale = Scale(request.min_instances,
                      request.max_instances if request.HasField("max_instances") else None,
                      convert.autoscaling_from_pb(request.autoscaling), request.hardware)
        spec = await self._routes.create_deployment(request.name, request.model, request.version, scale)
        return await self._pb(spec)

    async def GetDeployment(self, request, context):
        return await self._pb(self._catalog.deployment(request.name).spec)

    async def ListDeployments(self, request, context):
        targets = await self._controller.scaling()
        return deployments_pb2.ListDeploymentsResponse(deployments=[
            convert.deployment_to_pb(e.spec, targets.get(e.spec.name, 0)) for e in self._catalog.deployments()])

    async def UpdateDeployment(self, request, context):
        require_admin()
        scale = Scale(*(getattr(request, f) if request.HasField(f) else None
                        for f in ("min_instances", "max_instances")),
                      convert.autoscaling_from_pb(request.autoscaling),
                      request.hardware if request.HasField("hardware") else None)
        version = request.version if request.HasField("version") else None
        return await self._pb(await self._routes.update_deployment(request.name, version, scale))

    async def DeleteDeployment(self, request, context):
        require_admin()
        spec = await self._routes.delete_deployment(request.name)
        return deployments_pb2.DeleteDeploymentResponse(deployment=convert.deployment_to_pb(spec, 0))


def _visible(entry):
    """The entry, if the caller may see its model (public, theirs, or they are an admin); else NotFound
    as if it did not exist."""
    if not current_principal.get().may_see(entry.spec):
        raise model_not_found(entry.spec.model_name)
    return entry


def _may_change(entry) -> None:
    """Changing a model takes an admin, or the owner of a pushed model."""
    principal = current_principal.get()
    if not principal.is_admin and not (entry.spec.owner and entry.spec.owner == principal.name):
        raise PermissionDenied(f"only {entry.spec.owner or 'an admin'} may change {entry.spec.model_name}")


def _model_pb(entry) -> models_pb2.Model:
    pb = models_pb2.Model(
        name=entry.spec.name, description=entry.spec.description, runner=entry.spec.runner,
        version=entry.spec.version, input_schema_json=json.dumps(entry.input_schema),
        output_schema_json=json.dumps(entry.output_schema), owner=entry.spec.owner,
        visibility=entry.spec.visibility,
    )
    if entry.spec.created_at:
        pb.latest_version_created_at.FromNanoseconds(int(entry.spec.created_at * 1e9))
    pb.latest_version.CopyFrom(convert.version_to_pb(entry))
    return pb


class ClusterServicer(cluster_pb2_grpc.ClusterServicer):
    def __init__(self, controller: ControllerClient, tokens: TokenRegistry) -> None:
        self._controller = controller
        self._tokens = tokens

    async def ListNodes(self, request, context):
        require_admin()
        return cluster_pb2.ListNodesResponse(nodes=[convert.node_to_pb(n) for n in await self._controller.nodes()])

    async def ListInstances(self, request, context):
        require_admin()
        instances = await self._controller.instances()
        return cluster_pb2.ListInstancesResponse(instances=[convert.instance_to_pb(i) for i in instances])

    async def CreateToken(self, request, context):
        require_admin()
        token = await self._tokens.create(request.name, request.role or "user")
        return cluster_pb2.CreateTokenResponse(token=token, name=request.name, role=request.role or "user")

    async def DrainNode(self, request, context):
        require_admin()
        if not request.node_id:
            raise InvalidInput("node_id", "must name a node (see ListNodes)")
        drain = await self._controller.drain_node(request.node_id, request.wait)
        return cluster_pb2.DrainNodeResponse(node_id=drain.node_id, instances_left=drain.instances_left,
                                             done=drain.done)
