"""The data plane over real gRPC on 127.0.0.1, without Ray: a router's ``DataChannel`` and an agent's
``DataServer`` in front of a real ``NodeAgent`` running the echo runner.

Tasks go out and their events come back as typed frames; a cancel reaches the agent; and whatever is not
a frame the other end expects ends the session with a status that names it, on either end. Then, with a
router in front: a stream cut again and again under load (through a TCP proxy) loses and repeats no
event; a silent one is found by its keepalive; an agent that is gone is lost after the reconnects; two
routers share an instance without failing a prediction; a hung runner is cut off at its deadline.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from typing import Any

import grpc
import pytest

from node.agent import NodeAgent
from node.data_server import DataServer
from runners import registry
from runners.base import PredictContext, PredictGenerator
from scheduler.data_channel import DataChannel
from scheduler.ports import NodeLost, RoutingTable
from scheduler.router import DEADLINE_RUNNING, Router
from tests.unit.fakes import EventLog, SchemalessRunner, poll_until_ended, wait_until
from warmfleet import dataplane
from warmfleet.domain import (
    Finished, InstanceInfo, InstanceState, Output, OutputChunk, Rejected, Requeued, RouteSpec, Started, Status, Task,
    TaskEvent,
)

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
    return await poll_until_ended(channel, ROUTER, prediction_ids, (Finished,), timeout_s)


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
            try:
                await call.write(frame)
            except grpc.aio.AioRpcError as err:  # the agent ended the session already (a wrong secret)
                return err
            except asyncio.InvalidStateError:  # ... and the call knew it before this write
                break
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            for _ in range(3):  # a Welcome may come first, when the Hello was taken
                await asyncio.wait_for(call.read(), 10.0)
        return caught.value


@pytest.mark.parametrize("frames, says", [
    ([pickle.dumps(("bogus", 1))], "unknown data plane frame"),
    ([dataplane.encode(dataplane.Submit([]))], "a session starts with Hello, not Submit"),
    ([dataplane.encode(dataplane.Hello(ROUTER)), pickle.dumps(("bogus", 1))], "tag 'bogus'"),
    ([dataplane.encode(dataplane.Hello(ROUTER)), dataplane.encode(dataplane.Events([], 1, 0))],
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


# A stream that breaks, a silent network, an agent that goes, routers that share an instance, deadlines.
# The router (``scheduler.router.Router``) drives the channel here, as in the gateway's process.


class Proxy:
    """A TCP proxy in front of an agent's data server. ``kill`` cuts every connection through it (each
    end sees its stream reset, as when a network or a process on the way fails); ``freeze`` stops the
    bytes of the open ones while their sockets stay open (a silent network: only a ping finds it);
    while ``refusing``, new connections are cut at once (the agent's port is unreachable)."""

    def __init__(self, target: str) -> None:
        self._host, port = target.rsplit(":", 1)
        self._port = int(port)
        self._conns: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Event]] = []
        self._server: asyncio.Server | None = None
        self.refusing = False
        self.accepted = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        flowing = asyncio.Event()
        flowing.set()
        self._conns.append((writer, up_writer, flowing))
        await asyncio.gather(_pipe(reader, up_writer, flowing), _pipe(up_reader, writer, flowing),
                             return_exceptions=True)

    def kill(self) -> None:
        for down, up, flowing in self._conns:
            down.transport.abort()
            up.transport.abort()
            flowing.set()
        self._conns.clear()

    def freeze(self) -> None:
        for _, _, flowing in self._conns:
            flowing.clear()

    async def stop(self) -> None:
        self.kill()
        if self._server is not None:
            self._server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
    try:
        while data := await reader.read(1 << 16):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


def echo_instance(instance_id: str = "echo-1", max_concurrency: int = 4) -> InstanceInfo:
    return InstanceInfo(instance_id, "acme/echo", "v1", "node-1", InstanceState.IDLE, max_concurrency)


@pytest.fixture
async def routed():
    """Builds a Router over a real DataChannel to an address, and closes them after the test."""
    made: list[tuple[Router, DataChannel]] = []

    def make(address: str, router_id: str = ROUTER, instances: list[InstanceInfo] | None = None,
             **channel_kwargs) -> tuple[Router, EventLog, DataChannel]:
        log = EventLog()
        router = Router(router_id, log, 10_000)
        channel = CountingChannel("node-1", address, SECRET, router_id, **channel_kwargs)
        router.update_table(RoutingTable(1, instances or [echo_instance()], {"node-1": channel}))
        made.append((router, channel))
        return router, log, channel

    yield make
    for router, channel in made:
        await router.close()
        await channel.close()


class CountingChannel(DataChannel):
    """A DataChannel that counts the rejections its router is told of."""

    rejected = 0

    async def poll(self, router_id: str, max_wait_s: float) -> list[TaskEvent]:
        events = await super().poll(router_id, max_wait_s)
        self.rejected += sum(isinstance(e.body, Rejected) for e in events)
        return events


def assert_echoed(log: EventLog, texts: dict[str, str]) -> None:
    """Every prediction ended once, succeeded, with its text as output and as the join of its chunks."""
    for pid, text in texts.items():
        [done] = log.finished(pid)
        assert done.status is Status.SUCCEEDED, (pid, done)
        assert done.output.value == text
        streamed = [b.value for b in log.bodies(pid) if isinstance(b, OutputChunk)]
        assert "".join(streamed) == text, (pid, streamed)  # no chunk lost, none twice
        assert [type(b) for b in log.bodies(pid) if isinstance(b, (Started, Finished))] == [Started, Finished]


async def test_predictions_survive_their_stream_being_cut_again_and_again_under_load(served, routed):
    agent, address = served
    proxy = Proxy(address)
    router, log, channel = routed(await proxy.start())
    n, cuts = 240, 4
    texts = {f"p{i}": f"text-{i}-" + "x" * (i % 13) for i in range(n)}
    try:
        for pid, text in texts.items():
            router.enqueue(pid, "acme/echo", {"text": text, "chunks": 3, "delay_ms": 6})
        for cut in range(1, cuts + 1):  # cut the stream each time another share of them has ended
            await wait_until(lambda: sum(bool(log.finished(p)) for p in texts) >= cut * n // (cuts + 1),
                             log.changed, timeout_s=30.0)
            proxy.kill()
        await log.wait_finished(*texts, timeout_s=60.0)
        await _until(lambda: agent.footprint()["events_held"] == 0)  # acknowledged within ACK_AFTER_S
    finally:
        await proxy.stop()

    assert_echoed(log, texts)
    assert channel.reconnects >= cuts and proxy.accepted >= cuts + 1
    assert router.footprint()["running"] == 0 and agent.footprint()["running"] == 0
    # What either end kept for a resend is let go once the other end has it (the agent's, above).
    assert channel.footprint() == {"unapplied_frames": 0, "buffered_events": 0}


async def test_a_silent_stream_is_found_by_its_keepalive_and_reopened_within_seconds(served, routed):
    _, address = served
    proxy = Proxy(address)
    router, log, channel = routed(await proxy.start())
    texts = {f"p{i}": f"quiet-{i}" for i in range(8)}
    try:
        router.enqueue("first", "acme/echo", {"text": "first"})
        await log.wait_finished("first", timeout_s=10.0)
        for pid, text in texts.items():
            router.enqueue(pid, "acme/echo", {"text": text, "chunks": 2, "delay_ms": 300})
        first_four = list(texts)[:4]  # as many as run at once: they are under way
        await wait_until(lambda: all(any(isinstance(b, Started) for b in log.bodies(p)) for p in first_four),
                         log.changed, timeout_s=10.0)
        begun = asyncio.get_running_loop().time()
        proxy.freeze()  # nothing more passes, and nothing says so
        await log.wait_finished(*texts, timeout_s=30.0)
        took_s = asyncio.get_running_loop().time() - begun
    finally:
        await proxy.stop()

    assert_echoed(log, texts)
    assert channel.reconnects == 1
    assert took_s < 2 * (dataplane.KEEPALIVE_MS + dataplane.KEEPALIVE_TIMEOUT_MS) / 1000 + 2


async def test_an_agent_gone_for_good_has_its_predictions_queued_to_run_again_after_the_reconnects(served, routed):
    _, address = served
    proxy = Proxy(address)
    router, log, channel = routed(await proxy.start(), reconnect_tries=3, backoff_s=0.05)
    try:
        router.enqueue("before", "acme/echo", {"text": "x"})
        await log.wait_finished("before", timeout_s=10.0)
        router.enqueue("running", "acme/echo", {"text": "x", "delay_ms": 30_000})
        await wait_until(lambda: any(isinstance(b, Started) for b in log.bodies("running")), log.changed)
        proxy.refusing = True  # the agent's port no longer answers
        proxy.kill()
        await wait_until(lambda: any(isinstance(b, Requeued) for b in log.bodies("running")), log.changed, 10.0)
    finally:
        await proxy.stop()

    [again] = [b for b in log.bodies("running") if isinstance(b, Requeued)]
    assert again.attempt == 2 and "was lost while it ran" in again.reason
    assert log.finished("running") == [] and router.queue_length("acme/echo") == 1  # for another instance
    assert channel.reconnects == 0  # every try failed
    with pytest.raises(NodeLost, match="could not be opened in 3 tries"):
        await channel.poll(ROUTER, 0.1)


async def test_a_router_back_after_its_agent_let_its_session_go_is_told_so(routed):
    agent = NodeAgent("node-1", outbox_grace_s=0.05)
    await agent.load_instance("echo-1", RouteSpec("acme/echo", "echo", options={"max_concurrency": 4}))
    server = DataServer(agent, SECRET, "127.0.0.1")
    proxy = Proxy(await server.start())
    router, log, channel = routed(await proxy.start(), reconnect_tries=20, backoff_s=0.05)
    try:
        router.enqueue("p1", "acme/echo", {"text": "x"})
        await log.wait_finished("p1", timeout_s=10.0)
        proxy.refusing = True
        proxy.kill()
        await _until(lambda: agent.footprint()["outboxes"] == 0)  # released after its grace
        proxy.refusing = False
        with pytest.raises(NodeLost, match="DATA_LOSS|holds nothing for router"):
            await asyncio.wait_for(_poll_until_lost(channel), 10.0)
    finally:
        await proxy.stop()
        await server.stop()


async def _poll_until_lost(channel: DataChannel) -> None:
    while True:
        await channel.poll(ROUTER, 0.5)


async def _until(predicate, timeout_s: float = 10.0) -> None:
    """Wait for a condition that has no event of its own (the agent's state), checking every 5 ms."""
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(loop(), timeout_s)


async def test_two_routers_sharing_an_instance_never_fail_a_prediction_for_want_of_a_slot(routed):
    agent = NodeAgent("node-1")
    await agent.load_instance("echo-1", RouteSpec("acme/echo", "echo", options={"max_concurrency": 2}))
    server = DataServer(agent, SECRET, "127.0.0.1")
    address = await server.start()
    try:
        # Each router believes the instance's two slots are its own.
        routers = [routed(address, f"gateway-{k}", [echo_instance(max_concurrency=2)]) for k in "ab"]
        texts = {f"{k}{i}": f"{k}-{i}" for k in "ab" for i in range(12)}
        for pid, text in texts.items():
            router, _, _ = routers[pid[0] == "b"]
            router.enqueue(pid, "acme/echo", {"text": text, "chunks": 2, "delay_ms": 40})
        for k, (_, log, _) in zip("ab", routers):
            await log.wait_finished(*(p for p in texts if p[0] == k), timeout_s=30.0)
    finally:
        await server.stop()

    for k, (_, log, _) in zip("ab", routers):
        assert_echoed(log, {p: t for p, t in texts.items() if p[0] == k})
    assert sum(channel.rejected for _, _, channel in routers) > 0  # they did get in each other's way


class HangsOnCancel(SchemalessRunner):
    """A runner whose predictions never stop once begun (``{"hang": true}``: a hung model that no
    cancel reaches, until the test's ``release``); otherwise it echoes its text."""

    family = "hangs-on-cancel"
    release = threading.Event()
    hanging = threading.Event()  # set once a hung prediction is inside its runner
    loads = 0

    def load(self) -> None:
        type(self).loads += 1

    def predict(self, input: dict[str, Any], ctx: PredictContext) -> PredictGenerator:
        if input.get("hang"):
            type(self).hanging.set()
            type(self).release.wait(60)
        return Output(value=input.get("text", ""))
        yield


@pytest.fixture
def hangs(monkeypatch):
    cls = type("HangsOnCancelRun", (HangsOnCancel,), {"release": threading.Event(), "hanging": threading.Event(),
                                                      "loads": 0})
    monkeypatch.setitem(registry.RUNNERS, cls.family, cls)
    yield cls
    cls.release.set()


async def test_a_hung_runner_is_cut_off_at_its_deadline_and_its_instance_restarted(hangs, routed):
    agent = NodeAgent("node-1", cancel_grace_s=0.3)
    await agent.load_instance("hang-1", RouteSpec("acme/hangs", hangs.family))
    server = DataServer(agent, SECRET, "127.0.0.1")
    address = await server.start()
    instance = InstanceInfo("hang-1", "acme/hangs", "v1", "node-1", InstanceState.IDLE, 1)
    router, log, _ = routed(address, instances=[instance])
    try:
        # A deadline that a loaded machine still lets the hung prediction reach its runner within: one
        # that passes before it is inside stops it cleanly (no restart), as a cancel would.
        router.enqueue("hung", "acme/hangs", {"hang": True}, deadline_at=time.time() + 1.5)
        router.enqueue("after", "acme/hangs", {"text": "next"})  # waits for the hung one's slot
        [hung] = await log.wait_finished("hung", timeout_s=10.0)
        [after] = await log.wait_finished("after", timeout_s=10.0)
    finally:
        await server.stop()

    assert hangs.hanging.is_set() and hung.status is Status.CANCELED
    assert hung.error.startswith(DEADLINE_RUNNING) and "did not stop within 0.3 s" in hung.error
    assert after.status is Status.SUCCEEDED and after.output.value == "next"
    assert hangs.loads == 2  # restarted under the same id, and the router found it again


async def test_an_echo_running_past_its_deadline_is_canceled(served, routed):
    _, address = served
    router, log, _ = routed(address)

    router.enqueue("slow", "acme/echo", {"text": "x", "delay_ms": 30_000}, deadline_at=time.time() + 0.3)
    [done] = await log.wait_finished("slow", timeout_s=10.0)

    assert done.status is Status.CANCELED
    assert done.error == f"{DEADLINE_RUNNING}; canceled while processing"
    assert done.completed_at - done.started_at < 5.0
