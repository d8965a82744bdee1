"""Webhooks from a running cluster to a receiver in the test (aiohttp on 127.0.0.1, port 0): Standard
Webhooks signatures checked with the secret the gateway serves, the events a filter lets through,
throttled intermediate states, and the completed webhook retried after a 500."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import grpc
import orjson
import pytest
from aiohttp import web

from tests.integration.conftest import Api, RunningGateway, create_request, user
from warmfleet.v1 import predictions_pb2 as P

pytestmark = pytest.mark.integration

TIMEOUT_S = 20.0


@dataclass
class Delivery:
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    raw: bytes
    answered: int

    @property
    def body(self) -> dict:
        return orjson.loads(self.raw)


@dataclass
class Receiver:
    """A webhook endpoint. ``fail_completed`` answers 500 to that many completed webhooks first."""

    fail_completed: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hook/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook/{uuid.uuid4().hex[:8]}"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        status = 200
        if orjson.loads(raw)["status"] in ("succeeded", "failed", "canceled") and self.fail_completed:
            self.fail_completed -= 1
            status = 500
        self.deliveries.append(Delivery(time.monotonic(), dict(request.headers), raw, status))
        return web.Response(status=status)

    async def wait_completed(self, count: int = 1) -> list[Delivery]:
        async with asyncio.timeout(TIMEOUT_S):
            while sum(d.body["status"] == "succeeded" and d.answered == 200 for d in self.deliveries) < count:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything sent after the end would show up now
        return self.deliveries


@pytest.fixture(scope="module")
async def running(controller, tmp_path_factory):
    """This module's gateway: its receivers listen on 127.0.0.1, which only an operator's
    allow_private_urls lets webhooks reach."""
    gw = RunningGateway(tmp_path_factory.mktemp("home"), controller, allow_private_urls=True)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def receiver():
    rec = await Receiver().start()
    yield rec
    await rec.stop()


async def secret_of(gw: RunningGateway, api: Api) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{gw.gateway.http_port}/v1/webhooks/default/secret",
                               headers={"Authorization": f"Bearer {api.token}"}) as resp:
            assert resp.status == 200
            return (await resp.json())["key"]


def verified(secret: str, delivery: Delivery) -> bool:
    """The Standard Webhooks check, by hand (and by the reference library where it is installed)."""
    h = {k.lower(): v for k, v in delivery.headers.items()}
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + delivery.raw
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    fresh = abs(int(h["webhook-timestamp"]) - time.time()) < 300
    ok = hmac.compare_digest(expected, h["webhook-signature"]) and fresh
    try:
        import standardwebhooks
    except ImportError:
        return ok
    try:
        standardwebhooks.Webhook(secret).verify(delivery.raw, h)
        return ok
    except standardwebhooks.webhooks.WebhookVerificationError:
        return False


def with_webhook(url: str, events: list[str] | None = None, **echo) -> P.CreatePredictionRequest:
    req = create_request(wait_s=0, **echo)
    req.webhook = url
    req.webhook_events_filter.extend(events or [])
    return req


async def test_a_start_and_completed_filter_gets_exactly_those_two_signed(running, api, receiver):
    text = f"filtered {uuid.uuid4().hex}"
    req = with_webhook(receiver.url, ["start", "completed"], text=text, chunks=4, delay_ms=800)
    pred = await api.predictions.CreatePrediction(req, metadata=api.md)
    assert pred.webhook == receiver.url and list(pred.webhook_events_filter) == ["start", "completed"]
    deliveries = await receiver.wait_completed()
    secret = await secret_of(running, api)
    assert [d.body["status"] for d in deliveries] == ["starting", "succeeded"]
    assert all(verified(secret, d) for d in deliveries)
    final = deliveries[-1].body
    assert final["id"] == pred.id and final["output"] == text
    assert urlsplit(final["urls"]["get"]).path == f"/v1/predictions/{pred.id}"
    assert len({d.headers["webhook-id"] for d in deliveries}) == 2


async def test_by_default_output_and_logs_come_throttled_with_the_latest_state(running, api, receiver):
    text = "0123456789ab" * 2
    req = with_webhook(receiver.url, text=text, chunks=12, delay_ms=2400)  # a chunk every 200 ms
    pred = await api.predictions.CreatePrediction(req, metadata=api.md)
    deliveries = await receiver.wait_completed()
    secret = await secret_of(running, api)
    assert all(verified(secret, d) for d in deliveries)
    statuses = [d.body["status"] for d in deliveries]
    assert statuses[0] == "starting" and statuses[-1] == "succeeded" and statuses.count("succeeded") == 1
    middle = deliveries[1:-1]
    assert 2 <= len(middle) <= 7, f"13 events in 2.4 s, at most one per 500 ms: got {len(middle)}"
    gaps = [b.at - a.at for a, b in zip(middle, middle[1:])]
    assert min(gaps) >= 0.3, gaps  # 0.5 s apart when sent; arrival jitters a little
    partial = [d.body["output"] or "" for d in middle]
    assert all(text.startswith(p) for p in partial) and partial == sorted(partial, key=len)
    assert any(partial) and deliveries[-1].body["output"] == text and deliveries[-1].body["id"] == pred.id


async def test_the_completed_webhook_is_retried_after_a_500(running, api, receiver):
    receiver.fail_completed = 1
    req = with_webhook(receiver.url, ["completed"], text="retried")
    await api.predictions.CreatePrediction(req, metadata=api.md)
    deliveries = await receiver.wait_completed()
    assert [(d.body["status"], d.answered) for d in deliveries] == [("succeeded", 500), ("succeeded", 200)]
    first, again = deliveries
    assert first.headers["webhook-id"] == again.headers["webhook-id"]  # one message, tried twice
    assert again.at - first.at >= 0.9  # the first backoff step is 1 s
    secret = await secret_of(running, api)
    assert verified(secret, first) and verified(secret, again)


async def test_each_owner_verifies_with_their_own_secret(running, api, receiver):
    carol = await user(api, f"carol-{uuid.uuid4().hex[:6]}")
    mine, admins = await secret_of(running, carol), await secret_of(running, api)
    assert mine.startswith("whsec_") and mine != admins
    assert await secret_of(running, carol) == mine  # stable
    await carol.predictions.CreatePrediction(with_webhook(receiver.url, ["completed"], text="carol's"),
                                             metadata=carol.md)
    [delivery] = await receiver.wait_completed()
    assert verified(mine, delivery) and not verified(admins, delivery)


@pytest.mark.parametrize("url, events, field_name", [
    ("ftp://example.com/hook", [], "webhook"),
    ("not a url", [], "webhook"),
    ("http://127.0.0.1:9/hook", ["start", "finished"], "webhook_events_filter"),
])
async def test_a_bad_webhook_is_invalid_argument_naming_the_field(api, url, events, field_name):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.predictions.CreatePrediction(with_webhook(url, events), metadata=api.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field_name + ":")


async def test_predictions_without_a_webhook_never_reach_the_sender(running, api, receiver, monkeypatch):
    sender = running.gateway.webhooks
    seen: list[str] = []
    real = sender.notify

    def spy(pred, body):
        seen.append(pred.id)
        real(pred, body)

    monkeypatch.setattr(sender, "notify", spy)
    plain = await api.create(text="no hook", chunks=3)
    hooked = await api.predictions.CreatePrediction(
        with_webhook(receiver.url, ["completed"], text="hook", chunks=3), metadata=api.md)
    await receiver.wait_completed()
    assert plain.id not in seen
    assert seen.count(hooked.id) >= 3  # start, a log line, completed (and the chunks, perhaps merged)
    assert sender.watching() == 0


async def test_a_rest_create_with_a_webhook_sends_it_and_a_bad_one_is_422_naming_it(running, api, receiver):
    url = f"http://127.0.0.1:{running.gateway.http_port}/v1/models/warmfleet/echo/predictions"
    auth = {"Authorization": f"Bearer {api.token}"}
    async with aiohttp.ClientSession() as session:
        body = {"input": {"text": "via rest"}, "webhook": receiver.url,
                "webhook_events_filter": ["completed"]}
        async with session.post(url, json=body, headers=auth) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
        bad = {"input": {"text": "x"}, "webhook": "ftp://example.com/hook"}
        async with session.post(url, json=bad, headers=auth) as resp:
            assert resp.status == 422 and (await resp.json())["field"] == "webhook"
    [delivery] = await receiver.wait_completed()
    assert delivery.body["id"] == created["id"] and delivery.body["output"] == "via rest"
    assert verified(await secret_of(running, api), delivery)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://[::1]/hook", "http://10.0.0.7/hook",
                                 "http://169.254.169.254/latest/meta-data"])
async def test_by_default_a_webhook_to_a_non_public_address_is_refused_naming_it(controller, tmp_path, url):
    gw = RunningGateway(tmp_path, controller)  # the default settings: allow_private_urls off
    api = await gw.start()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.predictions.CreatePrediction(with_webhook(url, []), metadata=api.md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("webhook: ") and "refused" in err.value.details()
    finally:
        await gw.stop()


async def test_a_name_that_resolves_to_a_private_address_is_not_called(receiver, tmp_path):
    """A name is judged by what it resolves to, at the connection (no DNS rebinding gap)."""
    from gateway.rest import shapes
    from gateway.webhooks import WebhookSecrets, WebhookSender

    sender = WebhookSender(WebhookSecrets(tmp_path / "secret"),  # allow_private off, as by default
                           render=shapes.prediction_response)
    await sender.start()
    try:
        with pytest.raises(aiohttp.ClientConnectorError) as err:
            await sender._post(receiver.url.replace("127.0.0.1", "localhost"), b"{}", {})
        assert "loopback address; refused" in str(err.value.__cause__ or err.value.os_error)
    finally:
        await sender.stop()
    assert receiver.deliveries == []
