"""The node agent driven directly (no Ray): loading, running, streaming, cancelling, rejecting, draining."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from node.agent import NodeAgent
from runners import registry
from runners.base import PredictContext, PredictGenerator, Runner
from warmfleet.domain import (
    Finished, LogLine, MetricsUpdate, RouteSpec, Output, OutputChunk, Rejected, Started, Status, Task, TaskEvent,
)
from warmfleet.errors import InvalidInput, NotFound

from tests.unit.fakes import SchemalessRunner, poll_until_ended

ROUTER = "router-1"


# Tiny one-behaviour runners, registered into the registry for one test at a time.


class RaisesOnPredict(SchemalessRunner):
    family = "raises-on-predict"

    def predict(self, input: dict[str, Any], ctx: PredictContext) -> PredictGenerator:
        yield LogLine("about to fail")
        raise RuntimeError("the model exploded")


class RefusesItsInput(SchemalessRunner):
    family = "refuses-its-input"

    def predict(self, input: dict[str, Any], ctx: PredictContext) -> PredictGenerator:
        raise InvalidInput("input.messages", "this model has no chat template")
        yield  # a generator


class RaisesBeforeItsFirstEvent(SchemalessRunner):
    """``predict`` is a plain function (it returns a generator later, or here never): it raises on call."""

    family = "raises-before-first-event"

    def predict(self, input: dict[str, Any], ctx: PredictContext) -> PredictGenerator:
        raise ValueError("bad input shape")


class ReportsMetrics(SchemalessRunner):
    """Reports its own figures, including one (predict_time_s) that the agent measures itself."""

    family = "reports-metrics"

    def predict(self, input: dict[str, Any], ctx: PredictContext) -> PredictGenerator:
        yield MetricsUpdate({"image_count": 3, "predict_time_s": 1234.0})
        return Output(value="done")


class RaisesOnLoad(SchemalessRunner):
    family = "raises-on-load"

    def load(self) -> None:
        raise OSError("weights not found")

    def predict(self, input: dict[str, Any], ctx: PredictContext) -> PredictGenerator:
        return Output(value="never")
        yield


class Gated(SchemalessRunner):
    """Holds each prediction until the test opens ``gate``; records its unload."""

    family = "gated"
    gate = threading.Event()
    unloaded = threading.Event()

    def predict(self, input: dict[str, Any], ctx: PredictContext) -> PredictGenerator:
        if not type(self).gate.wait(10):
            raise TimeoutError("the test never opened the gate")
        return Output(value=input.get("text", ""))
        yield

    def unload(self) -> None:
        type(self).unloaded.set()


@pytest.fixture
def register(monkeypatch):
    def add(cls: type[Runner]) -> type[Runner]:
        monkeypatch.setitem(registry.RUNNERS, cls.family, cls)
        return cls

    return add


@pytest.fixture
def gated(register):
    cls = register(type("GatedRun", (Gated,), {"gate": threading.Event(), "unloaded": threading.Event()}))
    yield cls
    cls.gate.set()  # never leave a worker thread blocked


@pytest.fixture
def agent():
    return NodeAgent("node-1")


async def collect(agent: NodeAgent, prediction_ids: set[str], router_id: str = ROUTER,
                  timeout_s: float = 5.0) -> list[TaskEvent]:
    """Poll until every prediction in ``prediction_ids`` has its Finished (or Rejected) event."""
    return await poll_until_ended(agent, router_id, prediction_ids, (Finished, Rejected), timeout_s)


async def poll_until(agent: NodeAgent, kind: type, prediction_id: str, router_id: str = ROUTER) -> list[TaskEvent]:
    """Poll until an event of ``kind`` for ``prediction_id`` arrives; returns everything polled."""
    events: list[TaskEvent] = []

    async def loop() -> None:
        while not any(e.prediction_id == prediction_id and isinstance(e.body, kind) for e in events):
            events.extend(await agent.poll(router_id, 1.0))

    await asyncio.wait_for(loop(), 5.0)
    return events


def _echo(max_concurrency: int = 4) -> RouteSpec:
    return RouteSpec("acme/echo", "echo", options={"max_concurrency": max_concurrency})


def _of(events: list[TaskEvent], pid: str) -> list:
    return [e.body for e in events if e.prediction_id == pid]


async def test_load_returns_an_idle_instance_with_the_runner_policy(agent):
    info = await agent.load_instance("echo-1", _echo(max_concurrency=3))

    assert (info.id, info.model, info.node_id, info.state) == ("echo-1", "acme/echo", "node-1", "idle")
    assert info.max_concurrency == 3 and info.in_flight == 0
    assert info.version == _echo(3).version
    assert [i.id for i in await agent.instances()] == ["echo-1"]
    assert (await agent.info()).instance_count == 1


async def test_a_task_streams_started_log_chunks_and_finished_in_order(agent):
    await agent.load_instance("echo-1", _echo())
    await agent.submit(ROUTER, [Task("p1", "echo-1", {"text": "abcdefgh", "chunks": 4, "delay_ms": 0})])

    bodies = _of(await collect(agent, {"p1"}), "p1")

    # Chunks that pile up between two polls travel merged (node.outbox.coalesce); their text and order
    # are what the runner yielded.
    kinds = [type(b) for b in bodies]
    assert kinds[:2] == [Started, LogLine] and kinds[-1] is Finished
    assert set(kinds[2:-1]) == {OutputChunk}
    assert "".join(b.value for b in bodies if isinstance(b, OutputChunk)) == "abcdefgh"
    started, finished = bodies[0], bodies[-1]
    assert finished.status is Status.SUCCEEDED and finished.error == ""
    assert finished.output.value == "abcdefgh"
    assert finished.started_at == started.at <= finished.completed_at
    assert finished.metrics.predict_time_s == pytest.approx(finished.completed_at - finished.started_at)


async def test_the_slot_is_free_by_the_time_the_finished_event_is_read(agent):
    await agent.load_instance("echo-1", _echo(max_concurrency=1))
    await agent.submit(ROUTER, [Task("p1", "echo-1", {"text": "x"})])
    await collect(agent, {"p1"})

    [info] = await agent.instances()
    assert (info.state, info.in_flight) == ("idle", 0)


async def test_events_go_to_the_router_that_submitted_the_task(agent):
    await agent.load_instance("echo-1", _echo())
    await agent.submit("router-a", [Task("pa", "echo-1", {"text": "a"})])
    await agent.submit("router-b", [Task("pb", "echo-1", {"text": "b"})])

    seen_a = await collect(agent, {"pa"}, router_id="router-a")
    seen_b = await collect(agent, {"pb"}, router_id="router-b")
    assert {e.prediction_id for e in seen_a} == {"pa"}
    assert {e.prediction_id for e in seen_b} == {"pb"}
    assert await agent.poll("router-a", 0.01) == []


async def test_cancel_ends_a_delayed_task_canceled_well_before_its_delay(agent):
    await agent.load_instance("echo-1", _echo())
    begun = time.monotonic()
    await agent.submit(ROUTER, [Task("slow", "echo-1", {"text": "x", "delay_ms": 20_000}),
                                Task("chunked", "echo-1", {"text": "xyz", "delay_ms": 20_000, "chunks": 3})])
    await poll_until(agent, Started, "slow")

    await agent.cancel(["slow", "chunked", "unknown-id"])
    events = await collect(agent, {"slow", "chunked"})

    for pid in ("slow", "chunked"):
        finished = _of(events, pid)[-1]
        assert finished.status is Status.CANCELED and "cancel" in finished.error
        assert finished.output is None
    assert time.monotonic() - begun < 5.0
    [info] = await agent.instances()
    assert info.in_flight == 0


async def test_a_runner_that_raises_ends_failed_with_the_error_text(agent, register):
    register(RaisesOnPredict)
    await agent.load_instance("boom-1", RouteSpec("acme/boom", RaisesOnPredict.family))
    await agent.submit(ROUTER, [Task("p1", "boom-1", {})])

    bodies = _of(await collect(agent, {"p1"}), "p1")

    assert [type(b) for b in bodies] == [Started, LogLine, Finished]
    assert bodies[-1].status is Status.FAILED
    assert bodies[-1].error == "RuntimeError: the model exploded"
    [info] = await agent.instances()
    assert (info.state, info.in_flight) == ("idle", 0)  # one failed prediction does not fail the instance


async def test_a_runners_own_error_travels_as_its_code_and_field_not_as_text(agent, register):
    register(RefusesItsInput)
    await agent.load_instance("strict-1", RouteSpec("acme/strict", RefusesItsInput.family))
    await agent.submit(ROUTER, [Task("p1", "strict-1", {})])
    [finished] = [b for b in _of(await collect(agent, {"p1"}), "p1") if isinstance(b, Finished)]
    assert (finished.status, finished.error_code, finished.error_field) == (
        Status.FAILED, "InvalidInput", "input.messages")
    assert finished.error == "InvalidInput: input.messages: this model has no chat template"


async def test_runner_metrics_are_kept_and_the_agent_measures_predict_time_itself(agent, register):
    register(ReportsMetrics)
    await agent.load_instance("m-1", RouteSpec("acme/metrics", ReportsMetrics.family))
    await agent.submit(ROUTER, [Task("p1", "m-1", {})])

    finished = _of(await collect(agent, {"p1"}), "p1")[-1]

    assert finished.status is Status.SUCCEEDED
    assert finished.metrics.image_count == 3
    assert 0 <= finished.metrics.predict_time_s < 60


async def test_a_predict_that_raises_when_called_still_ends_failed(agent, register):
    register(RaisesBeforeItsFirstEvent)
    await agent.load_instance("boom-1", RouteSpec("acme/boom", RaisesBeforeItsFirstEvent.family))
    await agent.submit(ROUTER, [Task("p1", "boom-1", {})])

    bodies = _of(await collect(agent, {"p1"}), "p1")
    assert [type(b) for b in bodies] == [Started, Finished]
    assert bodies[-1].status is Status.FAILED and bodies[-1].error == "ValueError: bad input shape"
    [info] = await agent.instances()
    assert info.in_flight == 0


async def test_a_runner_that_fails_to_load_raises_and_its_instance_is_failed(agent, register):
    register(RaisesOnLoad)
    with pytest.raises(OSError, match="weights not found"):
        await agent.load_instance("bad-1", RouteSpec("acme/bad", RaisesOnLoad.family))

    [info] = await agent.instances()
    assert info.state == "failed"
    await agent.submit(ROUTER, [Task("p1", "bad-1", {})])
    [event] = await collect(agent, {"p1"})
    assert isinstance(event.body, Rejected) and "failed" in event.body.reason

    await agent.unload_instance("bad-1")
    assert await agent.instances() == []


async def test_an_unknown_runner_family_is_invalid_input(agent):
    with pytest.raises(InvalidInput) as err:
        await agent.load_instance("x-1", RouteSpec("acme/x", "no-such-family"))
    assert err.value.field == "runner"
    assert await agent.instances() == []


async def test_submits_beyond_capacity_or_to_unknown_instances_are_rejected(agent, gated):
    await agent.load_instance("g-1", RouteSpec("acme/gated", gated.family, options={"max_concurrency": 2}))
    await agent.submit(ROUTER, [Task(f"p{n}", "g-1", {"text": str(n)}) for n in range(3)]
                       + [Task("lost", "nowhere", {})])

    early = await poll_until(agent, Rejected, "lost")
    rejected = {e.prediction_id: e.body for e in early if isinstance(e.body, Rejected)}
    assert rejected == {  # full: the router tries again later; absent: it sends that instance nothing more
        "p2": Rejected("instance g-1 has no free slot (2 of 2 busy)", instance_closed=False),
        "lost": Rejected("instance nowhere is absent", instance_closed=True)}
    [info] = await agent.instances()
    assert (info.state, info.in_flight) == ("processing", 2)

    gated.gate.set()
    events = early + await collect(agent, {"p0", "p1"})
    assert [b.status for pid in ("p0", "p1") for b in _of(events, pid) if isinstance(b, Finished)] == \
        [Status.SUCCEEDED, Status.SUCCEEDED]
    assert not any(isinstance(b, (Started, Finished)) for b in _of(events, "p2"))


async def test_unload_drains_in_flight_work_then_removes_and_unloads_the_instance(agent, gated):
    await agent.load_instance("g-1", RouteSpec("acme/gated", gated.family))
    await agent.submit(ROUTER, [Task("running", "g-1", {"text": "kept"})])
    await poll_until(agent, Started, "running")

    await agent.unload_instance("g-1")
    [info] = await agent.instances()
    assert info.state == "draining"
    await agent.submit(ROUTER, [Task("late", "g-1", {})])
    [rejected] = _of(await collect(agent, {"late"}), "late")
    assert rejected == Rejected("instance g-1 is draining", instance_closed=True)
    assert not gated.unloaded.is_set()

    gated.gate.set()
    [finished] = [b for b in _of(await collect(agent, {"running"}), "running") if isinstance(b, Finished)]
    assert finished.status is Status.SUCCEEDED and finished.output.value == "kept"
    assert await agent.instances() == []
    assert await asyncio.to_thread(gated.unloaded.wait, 5.0)


async def test_unload_of_an_idle_instance_removes_it_at_once(agent, gated):
    await agent.load_instance("g-1", RouteSpec("acme/gated", gated.family))
    await agent.unload_instance("g-1")

    assert await agent.instances() == []
    assert await asyncio.to_thread(gated.unloaded.wait, 5.0)
    with pytest.raises(NotFound):
        await agent.unload_instance("g-1")


async def test_poll_with_nothing_to_report_returns_empty_after_its_wait(agent):
    begun = time.monotonic()
    assert await agent.poll(ROUTER, 0.05) == []
    assert time.monotonic() - begun >= 0.04
