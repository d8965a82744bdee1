"""``GET /v1/predictions/{id}/stream`` against a running cluster: Server-Sent Events of echo chunks and of
tiny-llama's tokens, resuming with Last-Event-ID, the end of canceled predictions, heartbeats, and who
may follow a prediction."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator

import aiohttp
import pytest

from gateway.rest import stream as rest_stream
from tests.integration.conftest import Api, RunningGateway, user
from tests.integration.test_llm import generation
from tests.integration.test_predictions import wait_status, wait_terminal
from warmfleet.v1 import predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0


def stream_url(gw: RunningGateway, prediction_id: str) -> str:
    return f"http://127.0.0.1:{gw.gateway.http_port}/v1/predictions/{prediction_id}/stream"


def headers(api: Api, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.token}", "Accept": "text/event-stream", **extra}


async def sse(resp: aiohttp.ClientResponse) -> AsyncIterator[dict]:
    """Parse text/event-stream as EventSource does: yields {"event", "id", "data"}, or {"comment"}."""
    event: dict = {"data": []}
    while line := await resp.content.readline():
        text = line.decode().rstrip("\r\n")
        if text.startswith(":"):
            yield {"comment": text[1:].strip()}
        elif text == "":
            if event["data"] or "event" in event:
                yield {**event, "data": "\n".join(event["data"])}
            event = {"data": []}
        else:
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                event["data"].append(value)
            else:
                event[name] = value


async def follow(gw: RunningGateway, api: Api, prediction_id: str, stop_after: int | None = None,
                 **extra: str) -> list[dict]:
    """The stream's events (comments too), until ``done`` or ``stop_after`` output events."""
    got, outputs = [], 0
    async with asyncio.timeout(TIMEOUT_S), aiohttp.ClientSession() as session:
        async with session.get(stream_url(gw, prediction_id), headers=headers(api, **extra)) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for event in sse(resp):
                got.append(event)
                outputs += event.get("event") == "output"
                if event.get("event") == "done" or outputs == stop_after:
                    break
    return got


def outputs(events: list[dict]) -> list[str]:
    return [e["data"] for e in events if e.get("event") == "output"]


async def test_echo_chunks_stream_as_output_events_then_done(running, api):
    text = f"one two three {uuid.uuid4().hex}"
    pred = await api.create(wait_s=0, text=text, chunks=3, delay_ms=600)
    events = [e for e in await follow(running, api, pred.id) if "comment" not in e]
    assert len(outputs(events)) == 3 and "".join(outputs(events)) == text
    assert events[0]["event"] == "logs" and events[0]["data"] == f"echoing {len(text)} characters in 3 chunks"
    assert events[-1]["event"] == "done" and events[-1]["data"] == "{}"
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_tiny_llama_tokens_stream_and_add_up_to_the_output(running, api):
    req = generation(wait_s=0, max_new_tokens=48, min_new_tokens=48, temperature=0.0)
    pred = await api.predictions.CreatePrediction(req, metadata=api.md)
    events = await follow(running, api, pred.id)
    final = await wait_terminal(api, pred.id)
    assert final.status == T.STATUS_SUCCEEDED
    tokens = outputs(events)
    assert len(tokens) > 1 and "".join(tokens) == final.output.value.string_value
    assert events[-1] == {"event": "done", "id": events[-1]["id"], "data": "{}"}


async def test_a_client_resumes_after_the_last_event_id_it_saw(running, api):
    text = "abcdefghij" * 3
    pred = await api.create(wait_s=0, text=text, chunks=6, delay_ms=3000)
    first = await follow(running, api, pred.id, stop_after=2)
    last_id = [e for e in first if "id" in e][-1]["id"]
    rest = await follow(running, api, pred.id, **{"Last-Event-ID": last_id})
    assert all(int(e["id"]) > int(last_id) for e in rest if "id" in e)
    assert "".join(outputs(first) + outputs(rest)) == text
    assert len(outputs(first) + outputs(rest)) == 6
    assert rest[-1]["event"] == "done"


async def test_a_stream_opened_after_the_end_gets_the_whole_output_then_done(running, api):
    pred = await api.create(text="finished already")
    assert pred.status == T.STATUS_SUCCEEDED
    events = await follow(running, api, pred.id)
    assert [(e["event"], e["data"]) for e in events] == [("output", "finished already"), ("done", "{}")]


async def test_a_canceled_prediction_ends_with_done_reason_canceled(running, api):
    pred = await api.create(wait_s=0, text="never", delay_ms=20_000)
    await wait_status(api, pred.id, T.STATUS_PROCESSING)
    following = asyncio.create_task(follow(running, api, pred.id))
    await asyncio.sleep(0.2)
    await api.predictions.CancelPrediction(P.CancelPredictionRequest(id=pred.id), metadata=api.md)
    events = await following
    assert events[-1]["event"] == "done" and events[-1]["data"] == '{"reason":"canceled"}'
    assert outputs(events) == []


async def test_an_idle_stream_sends_heartbeat_comments(running, api, monkeypatch):
    monkeypatch.setattr(rest_stream, "HEARTBEAT_S", 0.1)
    pred = await api.create(wait_s=0, text="quiet", delay_ms=800)
    events = await follow(running, api, pred.id)
    assert sum(1 for e in events if e.get("comment") == "ping") >= 3
    assert events[-1]["event"] == "done"


async def test_only_the_owner_or_an_admin_may_follow(running, api):
    alice = await user(api, f"alice-{uuid.uuid4().hex[:6]}")
    bob = await user(api, f"bob-{uuid.uuid4().hex[:6]}")
    pred = await alice.create(text="alice's")
    assert outputs(await follow(running, api, pred.id)) == ["alice's"]  # admin
    async with aiohttp.ClientSession() as session:
        async with session.get(stream_url(running, pred.id), headers=headers(bob)) as resp:
            assert resp.status == 404
            assert resp.headers["Content-Type"].startswith("application/problem+json")
        async with session.get(stream_url(running, pred.id), headers={"Accept": "text/event-stream"}) as resp:
            assert resp.status == 401


async def test_only_event_streams_are_served(running, api):
    pred = await api.create(text="json?")
    async with aiohttp.ClientSession() as session:
        async with session.get(stream_url(running, pred.id),
                               headers=headers(api, Accept="application/json")) as resp:
            assert resp.status == 406
            assert (await resp.json())["status"] == 406
        bad_id = headers(api, **{"Last-Event-ID": "x"})
        async with session.get(stream_url(running, pred.id), headers=bad_id) as resp:
            assert resp.status == 422 and (await resp.json())["field"] == "Last-Event-ID"


async def test_open_streams_end_at_once_when_the_gateway_stops(controller, tmp_path):
    gw = RunningGateway(tmp_path / "home", controller)
    api = await gw.start()
    pred = await api.create(wait_s=0, text="cut short", delay_ms=5000)
    await wait_status(api, pred.id, T.STATUS_PROCESSING)
    following = asyncio.create_task(follow(gw, api, pred.id))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await gw.stop()
    stopped_in_s = time.monotonic() - started
    events = await following
    assert stopped_in_s < 3.0, "an open stream held the shutdown for aiohttp's grace period"
    assert not any(e.get("event") == "done" for e in events)  # cut, not ended: the client resumes elsewhere
