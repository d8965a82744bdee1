"""The warm pool through a real controller on a real local Ray: min instances warm before the first
prediction, scale from zero on the first prediction (a cold boot, logged and timed), up to max under a
burst, and back down to zero after the delays (short ones, set on the test model)."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import AUTOSCALED, ECHO
from tests.integration.test_predictions import wait_terminal
from warmfleet.v1 import cluster_pb2, predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration


async def instances_of(api, model: str) -> list:
    reply = await api.cluster.ListInstances(cluster_pb2.ListInstancesRequest(), metadata=api.md)
    return [i for i in reply.instances if i.model == model and i.state in ("starting", "idle", "processing")]


async def wait_count(api, model: str, count: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while len(await instances_of(api, model)) != count:
            await asyncio.sleep(0.1)


async def test_a_model_with_min_one_is_warm_before_its_first_prediction(api):
    assert [i.state for i in await instances_of(api, ECHO)] in (["idle"], ["processing"])
    pred = await api.create(model=ECHO, text="warm")
    assert pred.status == T.STATUS_SUCCEEDED and not pred.metrics.HasField("boot_time_s")


async def test_scale_from_zero_boots_on_the_first_prediction_then_serves_warm(api):
    await wait_count(api, AUTOSCALED, 0, timeout_s=10)
    first = await api.create(model=AUTOSCALED, wait_s=30, text="cold")
    assert first.status == T.STATUS_SUCCEEDED, first.error
    assert first.metrics.boot_time_s > 0
    assert "Booting test/echo-autoscaled" in first.logs
    second = await api.create(model=AUTOSCALED, text="warm now")
    assert second.status == T.STATUS_SUCCEEDED and not second.metrics.HasField("boot_time_s")


async def test_a_burst_scales_up_to_max_and_the_pool_falls_back_to_zero(api):
    burst = [await api.predictions.CreatePrediction(P.CreatePredictionRequest(
        model=AUTOSCALED, input=T.PredictionInput(echo=T.EchoInput(text=f"b{i}", delay_ms=1200))), metadata=api.md)
        for i in range(6)]
    counts: list[int] = []

    async def sample() -> None:
        while True:
            counts.append(len(await instances_of(api, AUTOSCALED)))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    done = [await wait_terminal(api, p.id, timeout_s=30) for p in burst]
    sampler.cancel()
    assert [p.status for p in done] == [T.STATUS_SUCCEEDED] * 6
    assert max(counts) == 2  # up to max_instances under the burst, never more
    await wait_count(api, AUTOSCALED, 0, timeout_s=15)  # 1.5 s down, 2.5 s idle to zero
