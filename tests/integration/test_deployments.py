"""Models and deployments through the gateway on a real local Ray: create a model version, deploy it,
predict by deployment, roll out a new version under steady load without dropping a prediction, refuse
what is wrong naming the field, delete (queued predictions fail with a reason)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from tests.integration.test_autoscaling import instances_of, wait_count
from warmfleet.v1 import (
    deployments_pb2 as D, deployments_pb2_grpc, models_pb2 as M, predictions_pb2 as P, types_pb2 as T,
)

pytestmark = pytest.mark.integration

MODEL = "acme/echo-versions"
DEPLOYMENT = "acme/echo-prod"


def deployments(api) -> deployments_pb2_grpc.DeploymentsStub:
    return deployments_pb2_grpc.DeploymentsStub(api.channel)


async def create_version(api, **options) -> M.Model:
    struct = json_format.ParseDict({"max_concurrency": 4, **options}, struct_pb2.Struct())
    return await api.models.CreateModel(
        M.CreateModelRequest(name=MODEL, runner="echo", options=struct, min_instances=0), metadata=api.md)


def echo_by_deployment(text: str, wait_s: float = 30.0) -> P.CreatePredictionRequest:
    return P.CreatePredictionRequest(deployment=DEPLOYMENT, wait_s=wait_s,
                                     input=T.PredictionInput(echo=T.EchoInput(text=text)))


async def test_deploy_predict_roll_out_a_new_version_under_load_and_delete(api):
    v1 = await create_version(api, tag="v1")
    dep = await deployments(api).CreateDeployment(D.CreateDeploymentRequest(
        name=DEPLOYMENT, model=MODEL, min_instances=1, max_instances=2), metadata=api.md)
    assert (dep.version, dep.current_release, dep.min_instances, dep.max_instances) == (v1.version, 1, 1, 2)
    await wait_count(api, DEPLOYMENT, 1, timeout_s=20)  # min 1: warm before its first prediction

    first = await api.predictions.CreatePrediction(echo_by_deployment("hello"), metadata=api.md)
    assert first.status == T.STATUS_SUCCEEDED and first.output.value.string_value == "hello"
    assert (first.model, first.deployment, first.version) == (MODEL, DEPLOYMENT, v1.version)
    assert not first.metrics.HasField("boot_time_s")

    v2 = await create_version(api, tag="v2")
    assert v2.version != v1.version
    stop = asyncio.Event()

    async def steady_load() -> list:
        done = []
        while not stop.is_set():
            done.append(await api.predictions.CreatePrediction(echo_by_deployment(f"n{len(done)}"),
                                                               metadata=api.md))
        return done

    load = asyncio.create_task(steady_load())
    updated = await deployments(api).UpdateDeployment(
        D.UpdateDeploymentRequest(name=DEPLOYMENT, version=v2.version), metadata=api.md)
    assert (updated.version, updated.current_release) == (v2.version, 2)
    async with asyncio.timeout(30):  # the old version's instance drains once the new one is ready
        while {i.version for i in await instances_of(api, DEPLOYMENT)} != {v2.version}:
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    stop.set()
    results = await load
    assert len(results) > 10
    assert all(p.status == T.STATUS_SUCCEEDED for p in results), [p.error for p in results if p.error]
    assert {p.version for p in results} == {v1.version, v2.version}  # both served, none dropped

    deleted = await deployments(api).DeleteDeployment(D.DeleteDeploymentRequest(name=DEPLOYMENT),
                                                      metadata=api.md)
    assert deleted.deployment.name == DEPLOYMENT
    await wait_count(api, DEPLOYMENT, 0, timeout_s=20)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.predictions.CreatePrediction(echo_by_deployment("gone"), metadata=api.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await api.models.DeleteModel(M.DeleteModelRequest(name=MODEL), metadata=api.md)


@pytest.mark.parametrize("request_, code, field", [
    (D.CreateDeploymentRequest(name="no-slash", model="warmfleet/echo"), "INVALID_ARGUMENT", "name"),
    (D.CreateDeploymentRequest(name="acme/x", model="acme/nope"), "NOT_FOUND", "acme/nope"),
    (D.CreateDeploymentRequest(name="acme/x", model="warmfleet/echo", min_instances=3, max_instances=2),
     "INVALID_ARGUMENT", "max_instances"),
    (D.CreateDeploymentRequest(name="acme/x", model="warmfleet/echo",
                               autoscaling=D.Autoscaling(target_ongoing_requests=0)),
     "INVALID_ARGUMENT", "target_ongoing_requests"),
    (D.CreateDeploymentRequest(name="warmfleet/echo", model="warmfleet/echo"), "ALREADY_EXISTS", "taken"),
    (D.CreateDeploymentRequest(name="acme/x", model="warmfleet/echo", version="0123456789abcdef"),
     "NOT_FOUND", "version"),
])
async def test_a_bad_deployment_is_refused_naming_the_problem(api, request_, code, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await deployments(api).CreateDeployment(request_, metadata=api.md)
    assert err.value.code().name == code and field in err.value.details()


async def test_only_an_admin_changes_deployments_but_anyone_reads_them(api):
    from tests.integration.conftest import user

    alice = await user(api, "alice-deployer")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await deployments(alice).CreateDeployment(
            D.CreateDeploymentRequest(name="alice/x", model="warmfleet/echo"), metadata=alice.md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = await deployments(alice).ListDeployments(D.ListDeploymentsRequest(), metadata=alice.md)
    assert all(d.name != "alice/x" for d in listed.deployments)


async def test_the_python_client_manages_models_and_deployments(api, running):
    from warmfleet import Client

    def scenario() -> tuple:
        client = Client(f"127.0.0.1:{running.gateway.port}", api.token)
        model = client.models.create("acme/client-echo", "echo", options={"max_concurrency": 2})
        dep = client.deployments.create("acme/client-prod", "acme/client-echo", min_instances=0,
                                        max_instances=3, target_ongoing_requests=4, downscale_delay_s=5)
        out = client.run("acme/client-echo", input={"text": "via the model"})
        updated = client.deployments.update("acme/client-prod", min_instances=1, upscale_delay_s=2)
        listed = [d.name for d in client.deployments.list()]
        client.deployments.delete("acme/client-prod")
        client.models.delete("acme/client-echo")
        names = [m.name for m in client.models.list()]
        return model, dep, out, updated, listed, names

    model, dep, out, updated, listed, names = await asyncio.to_thread(scenario)
    assert (dep.model, dep.version, dep.current_release, dep.max_instances) == (
        "acme/client-echo", model.version, 1, 3)
    assert dep.autoscaling == {"target_ongoing_requests": 4.0, "downscale_delay_s": 5.0}
    assert out == "via the model"  # min 0: a cold boot, then the output
    assert (updated.current_release, updated.min_instances) == (2, 1)
    assert updated.autoscaling == {"target_ongoing_requests": 4.0, "downscale_delay_s": 5.0, "upscale_delay_s": 2.0}
    assert "acme/client-prod" in listed and "acme/client-echo" not in names


async def test_placement_refuses_what_fits_nowhere_and_evicts_the_lru_idle_instance_for_room(api):
    from warmfleet.v1 import cluster_pb2

    [node] = (await api.cluster.ListNodes(cluster_pb2.ListNodesRequest(), metadata=api.md)).nodes
    room = int(node.memory_total_bytes * 0.9)  # the share of a node instances are booked on
    for name, memory in (("acme/huge", 100 * node.memory_total_bytes), ("acme/big-a", int(room * 0.6)),
                         ("acme/big-b", int(room * 0.6))):
        struct = json_format.ParseDict({"memory_bytes": memory}, struct_pb2.Struct())
        await api.models.CreateModel(M.CreateModelRequest(name=name, runner="echo", options=struct),
                                     metadata=api.md)

    def echo(model: str) -> P.CreatePredictionRequest:
        return P.CreatePredictionRequest(model=model, wait_s=30, input=T.PredictionInput(echo=T.EchoInput(text="x")))

    huge = await api.predictions.CreatePrediction(echo("acme/huge"), metadata=api.md)
    assert huge.status == T.STATUS_FAILED
    assert "could be loaded" in huge.error and "hardware" in huge.error and "GiB" in huge.error, huge.error

    a = await api.predictions.CreatePrediction(echo("acme/big-a"), metadata=api.md)
    assert a.status == T.STATUS_SUCCEEDED, a.error
    assert len(await instances_of(api, "acme/big-a")) == 1
    b = await api.predictions.CreatePrediction(echo("acme/big-b"), metadata=api.md)
    assert b.status == T.STATUS_SUCCEEDED, b.error  # it fits only once big-a's idle instance is gone
    await wait_count(api, "acme/big-a", 0, timeout_s=10)
    assert len(await instances_of(api, "acme/big-b")) == 1
    for name in ("acme/huge", "acme/big-a", "acme/big-b"):
        await api.models.DeleteModel(M.DeleteModelRequest(name=name), metadata=api.md)
