"""Who may do what, and what a full queue answers."""

from __future__ import annotations

import uuid

import grpc
import pytest

from tests.integration.conftest import NARROW, RunningGateway, create_request, user
from tests.integration.test_predictions import wait_status
from warmfleet.v1 import accounts_pb2, cluster_pb2, predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_no_token_and_a_wrong_token_are_unauthenticated(api):
    stub = api.predictions
    missing = await rpc_error(stub.CreatePrediction(create_request(wait_s=1)))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED and "authorization" in missing.details()
    wrong = await rpc_error(stub.CreatePrediction(create_request(wait_s=1), metadata=api.as_token("wf_nope").md))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED and "unknown token" in wrong.details()
    malformed = await rpc_error(stub.GetPrediction(P.GetPredictionRequest(id="x"),
                                                   metadata=(("authorization", "Basic abc"),)))
    assert malformed.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_user_sees_only_their_own_predictions(api):
    alice = await user(api, f"alice-{uuid.uuid4().hex[:6]}")
    bob = await user(api, f"bob-{uuid.uuid4().hex[:6]}")
    secret = await alice.create(text="alice's")
    assert (await alice.get(secret.id)).output.value.string_value == "alice's"

    hidden = await rpc_error(bob.get(secret.id))
    assert hidden.code() == grpc.StatusCode.NOT_FOUND
    cancel = await rpc_error(bob.predictions.CancelPrediction(P.CancelPredictionRequest(id=secret.id), metadata=bob.md))
    assert cancel.code() == grpc.StatusCode.NOT_FOUND
    stream = bob.predictions.StreamPrediction(P.StreamPredictionRequest(id=secret.id), metadata=bob.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [e async for e in stream]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    bobs = await bob.predictions.ListPredictions(P.ListPredictionsRequest(), metadata=bob.md)
    assert secret.id not in [p.id for p in bobs.predictions]
    # The admin sees everyone's.
    seen_by_admin = await api.get(secret.id)
    assert seen_by_admin.id == secret.id and seen_by_admin.owner == await alice.account_id()


async def test_a_user_cannot_call_admin_rpcs(api):
    carol = await user(api, f"carol-{uuid.uuid4().hex[:6]}")
    for call in (
        carol.cluster.ListNodes(cluster_pb2.ListNodesRequest(), metadata=carol.md),
        carol.cluster.ListInstances(cluster_pb2.ListInstancesRequest(), metadata=carol.md),
        carol.accounts.CreateToken(accounts_pb2.CreateTokenRequest(name="mallory", role="admin"), metadata=carol.md),
        carol.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(name="mallory"), metadata=carol.md),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    nodes = await api.cluster.ListNodes(cluster_pb2.ListNodesRequest(), metadata=api.md)
    assert nodes.nodes and nodes.nodes[0].accelerator == "cpu" and "no accelerator" in nodes.nodes[0].metrics_note
    instances = await api.cluster.ListInstances(cluster_pb2.ListInstancesRequest(), metadata=api.md)
    assert {i.model for i in instances.instances} >= {NARROW}


async def test_account_and_token_names_are_checked(api):
    bad = await rpc_error(api.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(name="no spaces"),
                                                     metadata=api.md))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.details().startswith("name")
    bad = await rpc_error(api.accounts.CreateToken(accounts_pb2.CreateTokenRequest(name="no spaces"),
                                                   metadata=api.md))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.details().startswith("name")


async def test_a_full_queue_answers_resource_exhausted(controller, tmp_path):
    gw = RunningGateway(tmp_path, controller, max_queue_per_model=2)
    api = await gw.start()
    try:
        busy = await api.create(NARROW, wait_s=0, text="busy", delay_ms=20_000)
        await wait_status(api, busy.id, T.STATUS_PROCESSING)
        queued = [await api.create(NARROW, wait_s=0, text=f"q{i}") for i in range(2)]
        full = await rpc_error(api.create(NARROW, wait_s=0, text="one too many"))
        assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "full" in full.details()
        # Canceling a queued one makes room again.
        await api.predictions.CancelPrediction(P.CancelPredictionRequest(id=queued[0].id), metadata=api.md)
        room = await api.create(NARROW, wait_s=0, text="fits now")
        for p in (busy, queued[1], room):
            await api.predictions.CancelPrediction(P.CancelPredictionRequest(id=p.id), metadata=api.md)
    finally:
        await gw.stop()
