"""Predictions survive a gateway restart; ones in flight at the stop end failed, with the reason."""

from __future__ import annotations

import pytest

from tests.integration.conftest import NARROW, RunningGateway
from tests.integration.test_predictions import wait_status
from warmfleet.v1 import predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration


async def test_predictions_survive_a_gateway_restart(controller, tmp_path):
    gw = RunningGateway(tmp_path, controller)
    api = await gw.start()
    done = await api.create(text="remember me")
    in_flight = await api.create(NARROW, wait_s=0, text="interrupted", delay_ms=20_000)
    await wait_status(api, in_flight.id, T.STATUS_PROCESSING)
    admin_token = api.token
    await gw.stop()

    api = await gw.start()
    try:
        assert api.token == admin_token, "the admin token outlives a restart"
        again = await api.get(done.id)
        assert again.status == T.STATUS_SUCCEEDED and again.output.value.string_value == "remember me"
        assert again.created_at == done.created_at
        lost = await api.get(in_flight.id)
        assert lost.status == T.STATUS_FAILED and "shut down" in lost.error and lost.HasField("completed_at")
        page = await api.predictions.ListPredictions(P.ListPredictionsRequest(), metadata=api.md)
        assert [p.id for p in page.predictions][:2] == [in_flight.id, done.id]
    finally:
        await gw.stop()
