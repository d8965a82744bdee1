"""The warmfleet.v1 gRPC services: each method converts, calls one domain function, converts back."""

from __future__ import annotations

import json

from gateway import convert
from gateway.auth import TokenRegistry, current_principal, require_admin
from gateway.catalog import ModelCatalog
from gateway.predictions import PredictionService
from scheduler.ports import ControllerClient
from warmfleet.v1 import (
    cluster_pb2, cluster_pb2_grpc, models_pb2, models_pb2_grpc, predictions_pb2, predictions_pb2_grpc,
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
    def __init__(self, catalog: ModelCatalog) -> None:
        self._catalog = catalog

    async def ListModels(self, request, context):
        return models_pb2.ListModelsResponse(models=[_model_pb(e) for e in self._catalog.entries()])

    async def GetModel(self, request, context):
        return _model_pb(self._catalog.by_name(request.name))


def _model_pb(entry) -> models_pb2.Model:
    return models_pb2.Model(
        name=entry.spec.name, description=entry.spec.description, runner=entry.spec.runner,
        version=entry.spec.version, input_schema_json=json.dumps(entry.input_schema),
        output_schema_json=json.dumps(entry.output_schema),
    )


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
