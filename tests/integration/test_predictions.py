"""The prediction path end to end: gRPC gateway, router, Ray node agents, echo runner."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from tests.integration.conftest import ECHO, NARROW, Api, create_request, user
from warmfleet.v1 import predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration

TERMINAL = {T.STATUS_SUCCEEDED, T.STATUS_FAILED, T.STATUS_CANCELED, T.STATUS_ABORTED}


async def wait_terminal(api: Api, prediction_id: str, timeout_s: float = 10.0) -> T.Prediction:
    async with asyncio.timeout(timeout_s):
        while True:
            pred = await api.get(prediction_id)
            if pred.status in TERMINAL:
                return pred
            await asyncio.sleep(0.02)


async def wait_status(api: Api, prediction_id: str, status: int, timeout_s: float = 10.0) -> T.Prediction:
    async with asyncio.timeout(timeout_s):
        while (pred := await api.get(prediction_id)).status != status:
            await asyncio.sleep(0.02)
        return pred


async def test_sync_create_returns_the_finished_prediction(api):
    text = f"hello {uuid.uuid4().hex}"
    pred = await api.create(text=text)
    assert pred.status == T.STATUS_SUCCEEDED
    assert pred.output.value.string_value == text
    assert pred.model == ECHO and pred.version and pred.owner == await api.account_id()
    assert pred.input.echo.text == text
    assert pred.created_at.ToNanoseconds() <= pred.started_at.ToNanoseconds() <= pred.completed_at.ToNanoseconds()
    assert pred.metrics.predict_time_s >= 0 and pred.metrics.total_time_s >= pred.metrics.predict_time_s


async def test_async_create_then_get(api):
    pred = await api.create(wait_s=0, text="later", delay_ms=200)
    assert pred.status in (T.STATUS_STARTING, T.STATUS_PROCESSING) and not pred.HasField("output")
    done = await wait_terminal(api, pred.id)
    assert done.status == T.STATUS_SUCCEEDED and done.output.value.string_value == "later"
    assert done.metrics.predict_time_s >= 0.19  # the 200 ms delay (wall clock vs the loop's monotonic clock)


async def test_wait_shorter_than_the_prediction_returns_it_unfinished(api):
    pred = await api.create(wait_s=0.1, text="slow", delay_ms=1500)
    assert pred.status in (T.STATUS_STARTING, T.STATUS_PROCESSING)
    assert (await wait_terminal(api, pred.id)).status == T.STATUS_SUCCEEDED


async def test_create_and_stream_delivers_chunks_in_order_then_completed(api):
    text = "streaming is fun"
    events = [e async for e in api.predictions.CreateAndStreamPrediction(
        create_request(text=text, chunks=4, delay_ms=40), metadata=api.md)]
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[-1] == "completed" and kinds.count("completed") == 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    chunks = [e.output.value.string_value for e in events if e.WhichOneof("kind") == "output"]
    assert 2 <= len(chunks) <= 4 and "".join(chunks) == text  # chunks that pile up may travel merged
    assert "log" in kinds and kinds.index("status") < kinds.index("output")
    assert events[-1].completed.status == T.STATUS_SUCCEEDED
    assert events[-1].completed.output.value.string_value == text


async def test_stream_joined_late_replays_from_after_seq(api):
    pred = await api.create(wait_s=0, text="abcdefgh", chunks=8, delay_ms=800)
    await wait_status(api, pred.id, T.STATUS_PROCESSING)
    await asyncio.sleep(0.3)
    first = [e async for e in api.predictions.StreamPrediction(P.StreamPredictionRequest(id=pred.id), metadata=api.md)]
    assert first[0].seq == 1 and first[-1].WhichOneof("kind") == "completed"
    chunks = "".join(e.output.value.string_value for e in first if e.WhichOneof("kind") == "output")
    assert chunks == "abcdefgh"
    # After the end, a stream is the final event alone.
    again = [e async for e in api.predictions.StreamPrediction(P.StreamPredictionRequest(id=pred.id), metadata=api.md)]
    assert [e.WhichOneof("kind") for e in again] == ["completed"]


async def test_cancel_a_queued_and_a_running_prediction(api):
    running = await api.create(NARROW, wait_s=0, text="busy", delay_ms=20_000)
    await wait_status(api, running.id, T.STATUS_PROCESSING)
    queued = await api.create(NARROW, wait_s=0, text="queued")
    assert (await api.get(queued.id)).status == T.STATUS_STARTING

    canceled = await api.predictions.CancelPrediction(P.CancelPredictionRequest(id=queued.id), metadata=api.md)
    assert canceled.status == T.STATUS_CANCELED and "queued" in canceled.error
    assert not canceled.HasField("started_at")

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await api.predictions.CancelPrediction(P.CancelPredictionRequest(id=running.id), metadata=api.md)
    stopped = await wait_terminal(api, running.id)
    assert stopped.status == T.STATUS_CANCELED and loop.time() - t0 < 5.0
    assert stopped.HasField("started_at")
    # The slot is free again: the narrow model serves the next prediction at once.
    assert (await api.create(NARROW, text="next")).status == T.STATUS_SUCCEEDED


async def test_cancel_of_an_ended_prediction_returns_it_unchanged(api):
    done = await api.create(text="over")
    again = await api.predictions.CancelPrediction(P.CancelPredictionRequest(id=done.id), metadata=api.md)
    assert again.status == T.STATUS_SUCCEEDED and again.output.value.string_value == "over"


async def test_list_pages_newest_first_with_cursors(api):
    alice = await user(api, f"pager-{uuid.uuid4().hex[:6]}")
    ids = [(await alice.create(text=f"n{i}")).id for i in range(5)]
    seen, cursor, pages = [], "", 0
    while True:
        page = await alice.predictions.ListPredictions(
            P.ListPredictionsRequest(page_size=2, cursor=cursor), metadata=alice.md)
        pages += 1
        seen += [p.id for p in page.predictions]
        cursor = page.next_cursor
        if not cursor:
            break
    assert pages == 3
    assert seen == list(reversed(ids))


async def test_idempotent_create_with_a_client_chosen_id(api):
    pid = f"idem-{uuid.uuid4().hex[:8]}"
    req = create_request(text="once", wait_s=5)
    req.id = pid
    first = await api.predictions.CreatePrediction(req, metadata=api.md)
    second = await api.predictions.CreatePrediction(req, metadata=api.md)
    assert first.id == second.id == pid and second.created_at == first.created_at
    req.input.echo.text = "something else"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.predictions.CreatePrediction(req, metadata=api.md)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_deadline_passed_in_the_queue_aborts(api):
    blocker = await api.create(NARROW, wait_s=0, text="block", delay_ms=1500)
    req = create_request(NARROW, text="too late")
    req.deadline_s = 0.2
    late = await api.predictions.CreatePrediction(req, metadata=api.md)
    ended = await wait_terminal(api, late.id)
    assert ended.status == T.STATUS_ABORTED and "deadline" in ended.error
    assert (await wait_terminal(api, blocker.id)).status == T.STATUS_SUCCEEDED


@pytest.mark.parametrize("field, echo, rule", [
    ("input.delay_ms", {"delay_ms": 60_001}, "maximum"),
    ("input.chunks", {"chunks": 0}, "minimum"),
])
async def test_bad_input_is_invalid_argument_naming_the_field(api, field, echo, rule):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.create(**echo)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field) and rule in err.value.details()


async def test_generic_json_input_is_validated_too(api):
    from google.protobuf import struct_pb2

    fields = struct_pb2.Struct()
    fields.update({"text": "json form", "colour": "blue"})
    req = P.CreatePredictionRequest(model=ECHO, wait_s=5, input=T.PredictionInput(json=T.JsonInput(fields=fields)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.predictions.CreatePrediction(req, metadata=api.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "input.colour" in err.value.details()
    del req.input.json.fields["colour"]
    req.input.json.fields.update({"chunks": 2})
    ok = await api.predictions.CreatePrediction(req, metadata=api.md)
    assert ok.status == T.STATUS_SUCCEEDED and ok.output.value.string_value == "json form"
    assert ok.input.json.fields["chunks"] == 2


async def test_unknown_model_is_not_found(api):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.create("nobody/nothing")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nobody/nothing" in err.value.details()


async def test_many_concurrent_predictions_all_succeed(api):
    texts = [f"c{i}" for i in range(200)]
    preds = await asyncio.gather(*(api.create(text=t) for t in texts))
    assert [p.output.value.string_value for p in preds] == texts
    assert all(p.status == T.STATUS_SUCCEEDED for p in preds)
    assert len({p.id for p in preds}) == len(texts)
