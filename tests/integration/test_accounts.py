"""Accounts, not names: two accounts with tokens of the same name see only their own predictions, files
and private models; a revoked token is refused at once; an organization's members share its private
model, which a non-member cannot even see. Over real gRPC and REST, on a gateway with a real Ray."""

from __future__ import annotations

import uuid

import aiohttp
import grpc
import pytest

from tests.integration.conftest import Api, user
from tests.integration.test_rest import bearer
from warmfleet.v1 import accounts_pb2 as A, models_pb2 as M, predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def same_named_tokens(api: Api) -> tuple[Api, Api]:
    """Two new user accounts, each with a token called "laptop"."""
    found = []
    for name in (unique("alice"), unique("bob")):
        await api.accounts.CreateAccount(A.CreateAccountRequest(name=name), metadata=api.md)
        made = await api.accounts.CreateToken(A.CreateTokenRequest(account=name, name="laptop"), metadata=api.md)
        assert made.token.name == "laptop" and made.token.account == name
        found.append(api.as_token(made.text))
    return found[0], found[1]


async def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


async def echo(api: Api, model: str, text: str) -> T.Prediction:
    request = P.CreatePredictionRequest(model=model, wait_s=20, input=T.PredictionInput(echo=T.EchoInput(text=text)))
    return await api.predictions.CreatePrediction(request, metadata=api.md)


async def test_tokens_of_the_same_name_in_two_accounts_see_only_their_own(api, running):
    alice, bob = await same_named_tokens(api)
    mine = await alice.create(text="alice's")
    assert mine.owner == await alice.account_id() != await bob.account_id()
    assert await status_of(bob.get(mine.id)) is grpc.StatusCode.NOT_FOUND
    listed = await bob.predictions.ListPredictions(P.ListPredictionsRequest(), metadata=bob.md)
    assert mine.id not in {p.id for p in listed.predictions}
    listed = await alice.predictions.ListPredictions(P.ListPredictionsRequest(), metadata=alice.md)
    assert mine.id in {p.id for p in listed.predictions}

    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.gateway.http_port}") as http:
        form = aiohttp.FormData()
        form.add_field("content", b"alice's notes", filename="notes.txt", content_type="text/plain")
        async with http.post("/v1/files", data=form, headers=bearer(alice.token)) as reply:
            assert reply.status == 201
            uploaded = await reply.json()
        async with http.get(f"/v1/files/{uploaded['id']}", headers=bearer(bob.token)) as reply:
            assert reply.status == 404
        async with http.get("/v1/files", headers=bearer(bob.token)) as reply:
            assert uploaded["id"] not in [f["id"] for f in (await reply.json())["results"]]
        async with http.get(f"/v1/predictions/{mine.id}", headers=bearer(bob.token)) as reply:
            assert reply.status == 404
        async with http.get("/v1/account", headers=bearer(alice.token)) as reply:
            me = await reply.json()
            assert (me["type"], me["id"]) == ("user", await alice.account_id())


async def test_a_private_model_is_seen_and_run_by_its_owner_only(api):
    alice, bob = await same_named_tokens(api)
    me = await alice.accounts.GetAccount(A.GetAccountRequest(), metadata=alice.md)
    model = f"{me.account.name}/private-echo"
    await api.models.CreateModel(M.CreateModelRequest(name=model, runner="echo", visibility="private"),
                                 metadata=api.md)
    assert (await echo(alice, model, "mine")).output.value.string_value == "mine"
    assert model in {m.name for m in (await alice.models.ListModels(M.ListModelsRequest(), metadata=alice.md)).models}
    assert model not in {m.name for m in (await bob.models.ListModels(M.ListModelsRequest(), metadata=bob.md)).models}
    assert await status_of(bob.models.GetModel(M.GetModelRequest(name=model), metadata=bob.md)) is \
        grpc.StatusCode.NOT_FOUND
    assert await status_of(echo(bob, model, "theirs")) is grpc.StatusCode.NOT_FOUND


async def test_an_organizations_members_share_its_model_and_a_non_member_gets_404(api, running):
    org = unique("acme")
    await api.accounts.CreateAccount(A.CreateAccountRequest(name=org, kind="organization"), metadata=api.md)
    member, outsider = await user(api, unique("member")), await user(api, unique("outsider"))
    name = (await member.accounts.GetAccount(A.GetAccountRequest(), metadata=member.md)).account.name
    await api.accounts.SetMember(A.SetMemberRequest(organization=org, account=name, member=True), metadata=api.md)
    model = f"{org}/shared-echo"
    await api.models.CreateModel(M.CreateModelRequest(name=model, runner="echo", visibility="private"),
                                 metadata=api.md)

    me = await member.accounts.GetAccount(A.GetAccountRequest(), metadata=member.md)
    assert [o.name for o in me.organizations] == [org]
    assert (await echo(member, model, "ours")).output.value.string_value == "ours"
    assert await status_of(echo(outsider, model, "x")) is grpc.StatusCode.NOT_FOUND
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.gateway.http_port}") as http:
        async with http.get(f"/v1/models/{model}", headers=bearer(outsider.token)) as reply:
            assert reply.status == 404
        async with http.get(f"/v1/models/{model}", headers=bearer(member.token)) as reply:
            assert reply.status == 200 and (await reply.json())["visibility"] == "private"

    await api.accounts.SetMember(A.SetMemberRequest(organization=org, account=name, member=False), metadata=api.md)
    assert await status_of(echo(member, model, "gone")) is grpc.StatusCode.NOT_FOUND  # at once


async def test_a_revoked_token_is_refused_at_once_over_grpc_and_rest(api, running):
    alice = await user(api, unique("alice"))
    second = await alice.accounts.CreateToken(A.CreateTokenRequest(name="ci"), metadata=alice.md)
    ci = alice.as_token(second.text)
    assert (await ci.create(text="before")).status == T.STATUS_SUCCEEDED
    listed = await alice.accounts.ListTokens(A.ListTokensRequest(), metadata=alice.md)
    assert [t.name for t in listed.tokens] == ["default", "ci"]
    assert listed.tokens[1].HasField("last_used_at") and not listed.tokens[1].HasField("revoked_at")

    revoked = await alice.accounts.RevokeToken(A.RevokeTokenRequest(id=second.token.id), metadata=alice.md)
    assert revoked.HasField("revoked_at")
    assert await status_of(ci.create(text="after")) is grpc.StatusCode.UNAUTHENTICATED
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.gateway.http_port}") as http:
        async with http.get("/v1/predictions", headers=bearer(ci.token)) as reply:
            assert reply.status == 401 and "revoked" in (await reply.json())["detail"]
        # REST lists and revokes too: the first token revokes a third one made over REST.
        async with http.post("/v1/tokens", json={"name": "script"}, headers=bearer(alice.token)) as reply:
            assert reply.status == 201
            made = await reply.json()
        async with http.delete(f"/v1/tokens/{made['id']}", headers=bearer(alice.token)) as reply:
            assert reply.status == 200 and (await reply.json())["revoked_at"] is not None
        async with http.get("/v1/account", headers=bearer(made["token"])) as reply:
            assert reply.status == 401
        async with http.get("/v1/tokens", headers=bearer(alice.token)) as reply:
            assert [t["name"] for t in (await reply.json())["results"]] == ["default", "ci", "script"]
    assert (await alice.create(text="still")).status == T.STATUS_SUCCEEDED  # its other tokens go on


async def test_a_user_cannot_give_itself_more_than_its_role(api):
    alice = await user(api, unique("alice"))
    assert await status_of(alice.accounts.CreateToken(A.CreateTokenRequest(name="root", role="admin"),
                                                      metadata=alice.md)) is grpc.StatusCode.PERMISSION_DENIED
    request = P.CreatePredictionRequest(model="warmfleet/echo", wait_s=5, priority=5,
                                        input=T.PredictionInput(echo=T.EchoInput(text="me first")))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await alice.predictions.CreatePrediction(request, metadata=alice.md)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED and "priority" in err.value.details()
    boss = await user(api, unique("boss"), role="priority")
    assert (await boss.predictions.CreatePrediction(request, metadata=boss.md)).status == T.STATUS_SUCCEEDED
