"""EventHub: live fan-out, late-subscriber replay, the end of a stream, and waiting for the end."""

from __future__ import annotations

import asyncio
import dataclasses

from warmfleet.domain import (
    Completed, LogLine, OutputChunk, Prediction, PredictionEvent, ProgressUpdate, Status,
)
from gateway.events import EventHub

WAIT_S = 2.0


def _prediction(pid: str = "p1", status: Status = Status.STARTING) -> Prediction:
    return Prediction(id=pid, model="acme/echo", version="v1", input={"text": "hi"}, owner="alice",
                      created_at=1.0, status=status)


async def _drain(hub: EventHub, pred: Prediction, after_seq: int = 0) -> list[PredictionEvent]:
    return [e async for e in hub.subscribe(pred, after_seq)]


def _publish_some(hub: EventHub, pid: str = "p1") -> None:
    hub.publish(pid, Status.PROCESSING)
    hub.publish(pid, LogLine("loading"))
    hub.publish(pid, ProgressUpdate(1, 2))
    hub.publish(pid, OutputChunk(value="he"))


async def test_a_live_subscriber_gets_every_event_in_order_ending_with_completed():
    hub = EventHub()
    pred = _prediction()
    hub.open(pred.id)
    got: list[PredictionEvent] = []
    first = asyncio.Event()

    async def follow() -> None:
        async for event in hub.subscribe(pred, 0):
            got.append(event)
            first.set()

    follower = asyncio.create_task(follow())
    hub.publish(pred.id, Status.PROCESSING)
    await asyncio.wait_for(first.wait(), WAIT_S)  # the subscriber is attached and live
    hub.publish(pred.id, OutputChunk(value="hi"))
    done = dataclasses.replace(pred, status=Status.SUCCEEDED)
    hub.publish(pred.id, Completed(done))
    await asyncio.wait_for(follower, WAIT_S)  # the stream ends by itself after Completed

    assert [e.seq for e in got] == [1, 2, 3]
    assert [e.body for e in got] == [Status.PROCESSING, OutputChunk(value="hi"), Completed(done)]
    assert all(e.prediction_id == "p1" for e in got)
    assert not hub.is_open("p1")


async def _attach(hub: EventHub, pred: Prediction, after_seq: int = 0):
    """Subscribe and take the first event, so the subscriber is attached before the test goes on."""
    stream = hub.subscribe(pred, after_seq)
    first = await asyncio.wait_for(anext(stream), WAIT_S)
    return stream, first


async def _rest(stream) -> list[PredictionEvent]:
    return await asyncio.wait_for(_collect(stream), WAIT_S)


async def _collect(stream) -> list[PredictionEvent]:
    return [e async for e in stream]


async def test_a_late_subscriber_replays_from_the_start_then_follows_live():
    hub = EventHub()
    pred = _prediction()
    hub.open(pred.id)
    _publish_some(hub)

    stream, first = await _attach(hub, pred)
    hub.publish(pred.id, LogLine("live"))
    hub.publish(pred.id, Completed(pred))
    got = [first] + await _rest(stream)

    assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6]
    assert [type(e.body) for e in got] == [Status, LogLine, ProgressUpdate, OutputChunk, LogLine, Completed]
    assert got[4].body == LogLine("live")


async def test_a_subscriber_resuming_after_a_seq_gets_only_what_followed():
    hub = EventHub()
    pred = _prediction()
    hub.open(pred.id)
    _publish_some(hub)

    stream, first = await _attach(hub, pred, after_seq=2)
    hub.publish(pred.id, Completed(pred))
    got = [first] + await _rest(stream)

    assert [e.seq for e in got] == [3, 4, 5]
    assert first.body == ProgressUpdate(1, 2)


async def test_two_subscribers_each_get_the_whole_stream():
    hub = EventHub()
    pred = _prediction()
    hub.open(pred.id)
    hub.publish(pred.id, Status.PROCESSING)
    (s1, f1), (s2, f2) = await _attach(hub, pred), await _attach(hub, pred)
    hub.publish(pred.id, LogLine("x"))
    hub.publish(pred.id, Completed(pred))

    first, second = [f1] + await _rest(s1), [f2] + await _rest(s2)
    assert first == second and [e.seq for e in first] == [1, 2, 3]


async def test_a_subscriber_of_an_ended_prediction_gets_completed_alone():
    hub = EventHub()
    pred = _prediction()
    hub.open(pred.id)
    _publish_some(hub)
    done = dataclasses.replace(pred, status=Status.FAILED, error="boom")
    hub.publish(pred.id, Completed(done))

    # After the end, the caller passes the stored prediction; the buffered events are gone.
    [only] = await asyncio.wait_for(_drain(hub, done), WAIT_S)
    assert only.body == Completed(done)
    assert only.seq == 1 and only.prediction_id == "p1"
    [resumed] = await asyncio.wait_for(_drain(hub, done, after_seq=4), WAIT_S)
    assert resumed.seq == 5  # never a seq the client has already seen


async def test_events_of_a_prediction_that_is_not_open_are_dropped():
    hub = EventHub()
    hub.publish("ghost", LogLine("nobody listens"))
    assert not hub.is_open("ghost")
    pred = _prediction("ghost", Status.SUCCEEDED)
    [only] = await asyncio.wait_for(_drain(hub, pred), WAIT_S)
    assert only.body == Completed(pred)


async def test_wait_returns_true_when_the_prediction_completes():
    hub = EventHub()
    pred = _prediction()
    hub.open(pred.id)
    # wait() registers before the loop runs anything else, so the end arrives while it is waiting.
    asyncio.get_running_loop().call_soon(hub.publish, pred.id, Completed(pred))
    assert await hub.wait(pred.id, WAIT_S) is True
    assert not hub.is_open(pred.id)


async def test_wait_returns_false_on_timeout_and_a_later_wait_still_sees_the_end():
    hub = EventHub()
    pred = _prediction()
    hub.open(pred.id)
    assert await hub.wait(pred.id, 0.01) is False

    asyncio.get_running_loop().call_soon(hub.publish, pred.id, Completed(pred))
    assert await hub.wait(pred.id, WAIT_S) is True


async def test_wait_on_a_prediction_that_is_not_active_returns_true_at_once():
    hub = EventHub()
    assert await hub.wait("unknown", 0) is True
