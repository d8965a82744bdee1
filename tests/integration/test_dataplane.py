"""The data plane over real gRPC on 127.0.0.1, without Ray: a router's ``DataChannel`` and an agent's
``DataServer`` in front of a real ``NodeAgent`` running the echo runner.

Tasks go out and their events come back as typed frames; a cancel reaches the agent; and whatever is not
a frame the other end expects ends the session with a status that names it, on either end.
"""

from __future__ import annotations

import asyncio
import pickle

import grpc
import pytest

from node.agent import NodeAgent
from node.data_server import DataServer
from scheduler.data_channel import DataChannel
from scheduler.ports import NodeLost
from warmfleet import dataplane
from warmfleet.domain import Finished, RouteSpec, OutputChunk, Started, Status, Task, TaskEvent

pytestmark = pytest.mark.integration

SECRET = "s3cret"
ROUTER = "router-1"


@pytest.fixture
async def served():
    """An agent with one echo instance, serving its data plane on 127.0.0.1."""
    agent = NodeAgent("node-1")
    await agent.load_instance("echo-1", RouteSpec("acme/echo", "echo", options={"max_concurrency": 4}))
    server = DataServer(agent, SECRET, "127.0.0.1")
    address = await server.start()
    yield agent, address
    await server.stop()


async def events_until_finished(channel: DataChannel, prediction_ids: set[str],
                                timeout_s: float = 10.0) -> list[TaskEvent]:
    events: list[TaskEvent] = []

    async def loop() -> None:
        pending = set(prediction_ids)
        while pending:
            for event in await channel.poll(ROUTER, 1.0):
                events.append(event)
                if isinstance(event.body, Finished):
                    pending.discard(event.prediction_id)

    await asyncio.wait_for(loop(), timeout_s)
    return events


async def test_submitted_tasks_stream_their_events_back_to_the_router(served):
    _, address = served
    channel = DataChannel("node-1", address, SECRET, ROUTER)
    try:
        await channel.submit(ROUTER, [Task("p1", "echo-1", {"text": "abcd", "chunks": 2}),
                                      Task("p2", "echo-1", {"text": "xy"})])
        events = await events_until_finished(channel, {"p1", "p2"})
    finally:
        await channel.close()

    for pid, text in (("p1", "abcd"), ("p2", "xy")):
        bodies = [e.body for e in events if e.prediction_id == pid]
        assert isinstance(bodies[0], Started) and isinstance(bodies[-1], Finished)
        assert bodies[-1].status is Status.SUCCEEDED and bodies[-1].output.value == text
    streamed = [e.body.value for e in events if e.prediction_id == "p1" and isinstance(e.body, OutputChunk)]
    assert "".join(streamed) == "abcd"


async def test_a_cancel_reaches_the_agent_and_the_prediction_ends_canceled(served):
    agent, address = served
    channel = DataChannel("node-1", address, SECRET, ROUTER)
    try:
        await channel.submit(ROUTER, [Task("slow", "echo-1", {"text": "x", "delay_ms": 30_000})])
        while not any(e.prediction_id == "slow" and isinstance(e.body, Started)
                      for e in await channel.poll(ROUTER, 1.0)):
            pass
        await channel.cancel(["slow"])
        events = await events_until_finished(channel, {"slow"})
    finally:
        await channel.close()

    [finished] = [e.body for e in events if isinstance(e.body, Finished)]
    assert finished.status is Status.CANCELED


async def test_a_channel_speaks_only_for_its_own_router(served):
    _, address = served
    channel = DataChannel("node-1", address, SECRET, ROUTER)
    with pytest.raises(ValueError, match="speaks for router router-1, not router-2"):
        await channel.submit("router-2", [])
    await channel.close()


async def raw_session(address: str, *frames: bytes, secret: str = SECRET) -> grpc.aio.AioRpcError:
    """Send ``frames`` (bytes, as they go on the wire) on a session; the error that ends it."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(dataplane.METHOD)(metadata=((dataplane.SECRET_HEADER, secret),))
        for frame in frames:
            await call.write(frame)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 10.0)
        return caught.value


@pytest.mark.parametrize("frames, says", [
    ([pickle.dumps(("bogus", 1))], "unknown data plane frame"),
    ([dataplane.encode(dataplane.Submit([]))], "a session starts with Hello, not Submit"),
    ([dataplane.encode(dataplane.Hello(ROUTER)), pickle.dumps(("bogus", 1))], "tag 'bogus'"),
    ([dataplane.encode(dataplane.Hello(ROUTER)), dataplane.encode(dataplane.Events([]))],
     "Events is not for an agent"),
    ([dataplane.encode(dataplane.Hello(ROUTER)), b"garbage"], "undecodable"),
], ids=["bad-first-frame", "no-hello", "unknown-tag", "wrong-direction", "not-a-pickle"])
async def test_the_agent_refuses_what_is_not_a_frame_for_it_by_name(served, frames, says):
    _, address = served

    err = await raw_session(address, *frames)

    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert says in err.details()


async def test_the_agent_refuses_a_session_without_the_cluster_secret(served):
    _, address = served

    err = await raw_session(address, dataplane.encode(dataplane.Hello(ROUTER)), secret="wrong")

    assert err.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_the_router_refuses_an_agent_that_sends_an_unknown_frame():
    """An agent of another version: the router gives up on it (NodeLost, saying why), and does not hang."""

    async def session(requests, context):
        await anext(requests)  # the Hello
        yield pickle.dumps(("bogus", 1))
        await asyncio.Event().wait()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        dataplane.SERVICE, {dataplane.SESSION: grpc.stream_stream_rpc_method_handler(session)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = DataChannel("node-x", f"127.0.0.1:{port}", SECRET, ROUTER)
    try:
        with pytest.raises(NodeLost, match="node-x: it sent a frame the router refuses: .*tag 'bogus'"):
            while True:
                await asyncio.wait_for(channel.poll(ROUTER, 1.0), 10.0)
    finally:
        await channel.close()
        await server.stop(0)
