"""The warmfleet.v1 gRPC services: each method converts, calls one domain function, converts back."""

from __future__ import annotations

from gateway.accounts import Accounts
from gateway.auth import current_principal, require_admin
from gateway.catalog import ModelCatalog
from gateway.deployments import RouteService, Scale
from gateway.grpc import convert
from gateway.predictions import PredictionService
from gateway.push import PushHeader, PushService
from scheduler.ports import ControllerClient
from warmfleet.errors import InvalidInput
from warmfleet.v1 import (
    accounts_pb2, accounts_pb2_grpc, cluster_pb2, cluster_pb2_grpc, deployments_pb2, deployments_pb2_grpc,
    models_pb2, models_pb2_grpc, predictions_pb2, predictions_pb2_grpc,
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
        create = convert.create_from_pb(request)
        _, events = await self._service.create_and_follow(current_principal.get(), create)
        async for event in events:
            yield convert.event_to_pb(event)


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, catalog: ModelCatalog, routes: RouteService, pusher: PushService) -> None:
        self._catalog = catalog
        self._routes = routes
        self._pusher = pusher

    async def ListModels(self, request, context):
        entries = self._catalog.visible_models(current_principal.get())
        return models_pb2.ListModelsResponse(models=[convert.model_to_pb(e) for e in entries])

    async def GetModel(self, request, context):
        return convert.model_to_pb(self._catalog.visible(current_principal.get(), request.name))

    async def PushVersion(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("header", "a push starts with its header (model, digest, size_bytes)")
        h = first.header
        header = PushHeader(h.model, h.description, h.digest, h.size_bytes)
        chunks = convert.push_chunks(request_iterator)
        pushed = await self._pusher.push_as(current_principal.get(), header, chunks)
        return models_pb2.PushVersionResponse(
            model=convert.model_to_pb(pushed.model), version=convert.version_to_pb(pushed.version),
            created_model=pushed.created_model, new_version=pushed.new_version)

    async def ListVersions(self, request, context):
        entries = self._catalog.visible_versions(current_principal.get(), request.model)
        return models_pb2.ListVersionsResponse(versions=[convert.version_to_pb(e) for e in entries])

    async def GetVersion(self, request, context):
        entry = self._catalog.visible_version(current_principal.get(), request.model, request.id)
        return convert.version_to_pb(entry)

    async def DeleteVersion(self, request, context):
        entry = await self._routes.delete_version_as(current_principal.get(), request.model, request.id)
        return convert.version_to_pb(entry)

    async def CreateModel(self, request, context):
        spec = convert.model_spec_from_pb(request)
        entry = await self._routes.create_model_as(current_principal.get(), spec)
        return convert.model_to_pb(entry)

    async def DeleteModel(self, request, context):
        entry = await self._routes.delete_model_as(current_principal.get(), request.name)
        return models_pb2.DeleteModelResponse(model=convert.model_to_pb(entry))


class DeploymentsServicer(deployments_pb2_grpc.DeploymentsServicer):
    def __init__(self, routes: RouteService) -> None:
        self._routes = routes

    async def CreateDeployment(self, request, context):
        scale = Scale(request.min_instances,
                      request.max_instances if request.HasField("max_instances") else None,
                      convert.autoscaling_from_pb(request.autoscaling), request.hardware)
        deployment = await self._routes.create_deployment_as(
            current_principal.get(), request.name, request.model, request.version, scale)
        return convert.deployment_to_pb(deployment)

    async def GetDeployment(self, request, context):
        return convert.deployment_to_pb(await self._routes.deployment(request.name))

    async def ListDeployments(self, request, context):
        return deployments_pb2.ListDeploymentsResponse(
            deployments=[convert.deployment_to_pb(d) for d in await self._routes.deployments()])

    async def UpdateDeployment(self, request, context):
        scale = Scale(*(getattr(request, f) if request.HasField(f) else None
                        for f in ("min_instances", "max_instances")),
                      convert.autoscaling_from_pb(request.autoscaling),
                      request.hardware if request.HasField("hardware") else None)
        version = request.version if request.HasField("version") else None
        principal = current_principal.get()
        deployment = await self._routes.update_deployment_as(principal, request.name, version, scale)
        return convert.deployment_to_pb(deployment)

    async def DeleteDeployment(self, request, context):
        deployment = await self._routes.delete_deployment_as(current_principal.get(), request.name)
        return deployments_pb2.DeleteDeploymentResponse(deployment=convert.deployment_to_pb(deployment))


class ClusterServicer(cluster_pb2_grpc.ClusterServicer):
    def __init__(self, controller: ControllerClient) -> None:
        self._controller = controller

    async def ListNodes(self, request, context):
        require_admin()
        return cluster_pb2.ListNodesResponse(nodes=[convert.node_to_pb(n) for n in await self._controller.nodes()])

    async def ListInstances(self, request, context):
        require_admin()
        instances = await self._controller.instances()
        return cluster_pb2.ListInstancesResponse(instances=[convert.instance_to_pb(i) for i in instances])

    async def DrainNode(self, request, context):
        require_admin()
        if not request.node_id:
            raise InvalidInput("node_id", "must name a node (see ListNodes)")
        drain = await self._controller.drain_node(request.node_id, request.wait)
        return cluster_pb2.DrainNodeResponse(node_id=drain.node_id, instances_left=drain.instances_left,
                                             done=drain.done)


class AccountsServicer(accounts_pb2_grpc.AccountsServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    def _token_pb(self, token) -> accounts_pb2.Token:
        return convert.token_to_pb(token, self._accounts.account_by_id(token.account))

    async def GetAccount(self, request, context):
        caller = current_principal.get()
        orgs = [self._accounts.account(name) for name in sorted(caller.organizations)]
        return accounts_pb2.GetAccountResponse(
            account=convert.account_to_pb(self._accounts.account_of(caller)), role=caller.role.value,
            organizations=[convert.account_to_pb(o) for o in orgs], token_id=caller.token_id)

    async def CreateAccount(self, request, context):
        account = await self._accounts.create_account(current_principal.get(), request.name,
                                                      request.kind or "user")
        return convert.account_to_pb(account)

    async def ListAccounts(self, request, context):
        found = self._accounts.accounts(current_principal.get())
        return accounts_pb2.ListAccountsResponse(accounts=[convert.account_to_pb(a) for a in found])

    async def SetMember(self, request, context):
        await self._accounts.set_member(current_principal.get(), request.organization, request.account,
                                        request.member)
        return accounts_pb2.SetMemberResponse()

    async def ListMembers(self, request, context):
        found = self._accounts.members(current_principal.get(), request.organization)
        return accounts_pb2.ListAccountsResponse(accounts=[convert.account_to_pb(a) for a in found])

    async def CreateToken(self, request, context):
        caller = current_principal.get()
        token, text = await self._accounts.create_token(caller, request.account or caller.name, request.name,
                                                        request.role or "user")
        return accounts_pb2.CreateTokenResponse(text=text, token=self._token_pb(token))

    async def ListTokens(self, request, context):
        found = self._accounts.tokens(current_principal.get(), request.account)
        return accounts_pb2.ListTokensResponse(tokens=[self._token_pb(t) for t in found])

    async def RevokeToken(self, request, context):
        return self._token_pb(await self._accounts.revoke_token(current_principal.get(), request.id))
