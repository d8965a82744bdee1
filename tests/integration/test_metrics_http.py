"""GET /metrics and /healthz of a real gateway (own HTTP port, 0), after real echo predictions on Ray."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ECHO, RunningGateway
from tests.integration.test_predictions import wait_status, wait_terminal
from warmfleet.v1 import predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def gw(controller, tmp_path_factory):
    gw = RunningGateway(tmp_path_factory.mktemp("metrics-home"), controller, http_port=0)
    await gw.start()
    yield gw
    await gw.stop()


async def get(gw: RunningGateway, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{gw.gateway.http_port}{path}") as reply:
            return reply.status, await reply.text()


async def scrape(gw: RunningGateway) -> dict[tuple[str, frozenset], float]:
    status, text = await get(gw, "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_healthz_answers_while_serving(gw):
    assert gw.settings.http_port == 0 and gw.gateway.http_port > 0  # asked for any port, and got one
    status, body = await get(gw, "/healthz")
    assert status == 200 and "serving" in body


async def test_metrics_count_one_succeeded_and_one_canceled_prediction(gw):
    api = gw.api
    before = await scrape(gw)
    done = await api.create(ECHO, text="counted")
    assert done.status == T.STATUS_SUCCEEDED
    slow = await api.create(ECHO, wait_s=0, text="canceled", delay_ms=20_000)
    await wait_status(api, slow.id, T.STATUS_PROCESSING)
    await api.predictions.CancelPrediction(P.CancelPredictionRequest(id=slow.id), metadata=api.md)
    assert (await wait_terminal(api, slow.id)).status == T.STATUS_CANCELED
    after = await scrape(gw)

    def moved(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("warmfleet_prediction_created_total", model=ECHO) == 2
    assert moved("warmfleet_predictions_total", model=ECHO, status="succeeded") == 1
    assert moved("warmfleet_predictions_total", model=ECHO, status="canceled") == 1
    assert moved("warmfleet_predictions_total", model=ECHO, status="failed") == 0
    assert moved("warmfleet_prediction_latency_seconds_count", model=ECHO) == 2
    assert moved("warmfleet_prediction_queue_seconds_count", model=ECHO) == 2  # both started
    assert moved("warmfleet_prediction_latency_seconds_bucket", model=ECHO, le="+Inf") == 2
    assert value(after, "warmfleet_queue_depth", model=ECHO) == 0
    assert value(after, "warmfleet_predictions_in_flight", model=ECHO) == 0
    echo_instances = sum(v for (name, labels), v in after.items()
                         if name == "warmfleet_instances" and dict(labels)["model"] == ECHO)
    assert echo_instances >= 1
    assert any(name == "warmfleet_node_info" and dict(labels)["hardware"] for name, labels in after)
    assert value(after, "warmfleet_cluster_scrape_errors_total") == 0


async def test_a_taken_http_port_costs_the_metrics_not_the_predictions(gw, tmp_path):
    second = RunningGateway(tmp_path, gw.controller, http_port=gw.gateway.http_port)
    api = await second.start()
    try:
        assert second.gateway.http_port is None
        assert (await api.create(ECHO, text="still served")).status == T.STATUS_SUCCEEDED
    finally:
        await second.stop()
    status, _ = await get(gw, "/healthz")  # the first gateway keeps its port
    assert status == 200
