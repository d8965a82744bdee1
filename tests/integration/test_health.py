"""The gateway's health says when it cannot serve fully, and why: while the controller does not answer
(predictions still queue and run on the instances already warm) and while the store cannot write
(creates are refused, naming the cause). Real gateway, real controller on a local Ray."""

from __future__ import annotations

import grpc
import pytest
from aiohttp import ClientSession
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import RunningGateway
from warmfleet.errors import Unavailable

pytestmark = pytest.mark.integration

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class AwayController:
    """The cluster's controller, but its routing table fails while ``away`` (as a controller that Ray
    restarts answers UNAVAILABLE), and its long polls last half a second, so the gateway asks often."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.away = False

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    async def routing_table(self, since_revision: int, max_wait_s: float):
        if self.away:
            raise Unavailable("the controller is restarting")
        return await self._inner.routing_table(since_revision, min(max_wait_s, 0.5))


async def next_status(watch, wanted: int) -> int:
    """Read the health Watch stream until it says ``wanted`` (it streams every change: no polling)."""
    async for reply in watch:
        if reply.status == wanted:
            return reply.status
    raise AssertionError("the health stream ended")


async def healthz(gw: RunningGateway) -> tuple[int, dict]:
    async with ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{gw.gateway.http_port}/healthz") as resp:
            return resp.status, await resp.json()


async def test_health_is_not_serving_while_the_controller_is_away_and_predictions_still_run(controller, tmp_path):
    away = AwayController(controller)
    gw = RunningGateway(tmp_path, away)
    api = await gw.start()
    watch = health_pb2_grpc.HealthStub(api.channel).Watch(health_pb2.HealthCheckRequest(service=""))
    try:
        assert await next_status(watch, SERVING) == SERVING
        away.away = True
        assert await next_status(watch, NOT_SERVING) == NOT_SERVING
        status, body = await healthz(gw)
        assert status == 503 and "the controller does not answer" in body["reason"]
        assert "predictions queue meanwhile" in body["reason"]
        done = await api.create(text="while away")  # the router knows the warm instance
        assert done.output.value.string_value == "while away"

        away.away = False
        assert await next_status(watch, SERVING) == SERVING
        assert await healthz(gw) == (200, {"status": "serving"})
    finally:
        watch.cancel()
        await gw.stop()


async def test_health_is_not_serving_while_the_store_cannot_write_and_creates_are_refused(controller, tmp_path):
    gw = RunningGateway(tmp_path, controller)
    api = await gw.start()
    watch = health_pb2_grpc.HealthStub(api.channel).Watch(health_pb2.HealthCheckRequest(service=""))
    try:
        assert await next_status(watch, SERVING) == SERVING
        await gw.gateway.store.close()  # the writer is gone: what a dead disk looks like from here
        assert await next_status(watch, NOT_SERVING) == NOT_SERVING
        status, body = await healthz(gw)
        assert status == 503 and body["reason"] == "the prediction store cannot write: it is closed"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.create(text="refused")
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "the prediction store cannot write" in err.value.details()
    finally:
        watch.cancel()
        await gw.stop()
