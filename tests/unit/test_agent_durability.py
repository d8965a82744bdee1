"""The node agent when a runner hangs or a router goes away, driven directly (no Ray, no network).

A prediction whose runner does not stop within the cancel grace ends CANCELED at once and its instance
is restarted under the same id (its other predictions finish first; a draining one just goes); an
outbox whose router's session ended is kept for a grace period for it to resume, then released.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from node.agent import NodeAgent
from node.outbox import ResumeRefused
from runners import registry
from runners.base import PredictContext, PredictGenerator
from tests.unit.fakes import SchemalessRunner
from warmfleet.domain import Finished, Output, Rejected, RouteSpec, Status, Task, TaskEvent

ROUTER = "router-1"
GRACE_S = 0.1
WAIT_S = 5.0


class IgnoresCancel(SchemalessRunner):
    """``{"hang": true}`` blocks on the class's ``release`` whatever happens (a hung model: cancel does
    not reach it); ``{"wait": true}`` waits for ``gate`` but stops when canceled; otherwise it answers.
    ``entered`` is set once a prediction is inside ``predict``, ``hanging`` once a hung one is (a cancel
    that comes before it is inside stops it as any other). Counts its loads and unloads; an unload can be
    held on ``unload_gate``."""

    family = "ignores-cancel"
    release = threading.Event()
    gate = threading.Event()
    unload_gate = threading.Event()
    entered = threading.Event()
    hanging = threading.Event()
    loads: list[int] = []
    unloads: list[int] = []

    def load(self) -> None:
        type(self).loads.append(id(self))

    def unload(self) -> None:
        type(self).unload_gate.wait(WAIT_S)
        type(self).unloads.append(id(self))

    def predict(self, input: dict[str, Any], ctx: PredictContext) -> PredictGenerator:
        type(self).entered.set()
        if input.get("hang"):
            type(self).hanging.set()
            type(self).release.wait(30)
        elif input.get("wait"):
            while not type(self).gate.wait(0.01):
                ctx.check_cancelled()
        return Output(value=id(self))
        yield


@pytest.fixture
def runner(monkeypatch):
    cls = type("IgnoresCancelRun", (IgnoresCancel,), {
        "release": threading.Event(), "gate": threading.Event(), "unload_gate": threading.Event(),
        "entered": threading.Event(), "hanging": threading.Event(), "loads": [], "unloads": []})
    cls.unload_gate.set()
    monkeypatch.setitem(registry.RUNNERS, cls.family, cls)
    yield cls
    cls.release.set()  # never leave a worker thread blocked
    cls.gate.set()
    cls.unload_gate.set()


def _spec(max_concurrency: int = 1) -> RouteSpec:
    return RouteSpec("acme/hangs", IgnoresCancel.family, options={"max_concurrency": max_concurrency})


async def poll_for(agent: NodeAgent, done, router_id: str = ROUTER) -> list[TaskEvent]:
    """Poll until ``done(events)`` holds; returns everything polled."""
    events: list[TaskEvent] = []

    async def loop() -> None:
        while not done(events):
            events.extend(await agent.poll(router_id, 0.5))

    await asyncio.wait_for(loop(), WAIT_S)
    return events


def finished(events: list[TaskEvent], pid: str) -> list[Finished]:
    return [e.body for e in events if e.prediction_id == pid and isinstance(e.body, Finished)]


async def until(predicate, timeout_s: float = WAIT_S) -> None:
    """Wait for ``predicate()`` (what worker threads change has no event to wait on: it is checked every
    few milliseconds), failing after ``timeout_s``."""
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(loop(), timeout_s)


def marker_after(delay_s: float) -> asyncio.Future:
    """A future done once the loop has run every timer due within ``delay_s`` that was armed before
    this call (timers run in the order of their time, and of their arming for equal times)."""
    loop = asyncio.get_running_loop()
    reached = loop.create_future()
    loop.call_later(delay_s, reached.set_result, None)
    return reached


async def test_a_runner_that_ignores_its_cancel_ends_canceled_and_its_instance_restarts(runner):
    agent = NodeAgent("node-1", cancel_grace_s=GRACE_S)
    await agent.load_instance("h-1", _spec())
    [first] = runner.loads
    await agent.submit(ROUTER, [Task("hung", "h-1", {"hang": True})])
    await until(runner.entered.is_set)

    await agent.cancel(["hung"])
    events = await poll_for(agent, lambda ev: finished(ev, "hung"))

    [done] = finished(events, "hung")
    assert done.status is Status.CANCELED
    assert "did not stop within 0.1 s" in done.error and "instance h-1 is restarted" in done.error
    await until(lambda: len(runner.loads) == 2)
    while [i.state for i in await agent.instances()] != ["idle"]:  # loaded, then marked idle
        await asyncio.sleep(0.005)
    assert runner.unloads == [first]  # the hung runner was unloaded before its replacement loaded

    await agent.submit(ROUTER, [Task("after", "h-1", {})])  # the same instance id takes work again
    events = await poll_for(agent, lambda ev: finished(ev, "after"))
    [after] = finished(events, "after")
    assert after.status is Status.SUCCEEDED and after.output.value == runner.loads[1]

    runner.release.set()  # the hung thread returns at last: nothing more is said of that prediction
    await until(lambda: agent.footprint()["running"] == 0)
    assert finished(await agent.poll(ROUTER, 0.0), "hung") == []


async def test_a_restarting_instance_rejects_work_as_full_not_closed(runner):
    agent = NodeAgent("node-1", cancel_grace_s=GRACE_S)
    await agent.load_instance("h-1", _spec())
    runner.unload_gate.clear()  # the hung runner's unload takes its time
    await agent.submit(ROUTER, [Task("hung", "h-1", {"hang": True})])
    await until(runner.entered.is_set)
    await agent.cancel(["hung"])
    await poll_for(agent, lambda ev: finished(ev, "hung"))

    await agent.submit(ROUTER, [Task("meanwhile", "h-1", {})])
    events = await poll_for(agent, lambda ev: any(e.prediction_id == "meanwhile" for e in ev))

    assert [e.body for e in events if e.prediction_id == "meanwhile"] == [
        Rejected("instance h-1 is restarting", instance_closed=False)]  # a router waits for it
    runner.unload_gate.set()
    await until(lambda: len(runner.loads) == 2)


async def test_the_other_predictions_of_an_instance_finish_before_it_restarts(runner):
    agent = NodeAgent("node-1", cancel_grace_s=GRACE_S)
    await agent.load_instance("h-1", _spec(max_concurrency=2))
    await agent.submit(ROUTER, [Task("hung", "h-1", {"hang": True}), Task("busy", "h-1", {"wait": True})])
    # "hung" itself inside its runner: "busy" may enter first, and a cancel that reaches "hung" before it
    # is inside stops it at once (a clean cancel: no restart), which a loaded machine made happen.
    await until(runner.hanging.is_set)
    await agent.cancel(["hung"])
    events = await poll_for(agent, lambda ev: finished(ev, "hung"))
    assert finished(events, "busy") == [] and len(runner.loads) == 1  # no restart under busy's feet

    runner.gate.set()
    events = await poll_for(agent, lambda ev: finished(ev, "busy"))

    [busy] = finished(events, "busy")
    assert busy.status is Status.SUCCEEDED and busy.output.value == runner.loads[0]
    await until(lambda: len(runner.loads) == 2)


async def test_a_draining_instance_with_a_hung_prediction_goes_without_a_replacement(runner):
    agent = NodeAgent("node-1", cancel_grace_s=GRACE_S)
    await agent.load_instance("h-1", _spec())
    await agent.submit(ROUTER, [Task("hung", "h-1", {"hang": True})])
    await agent.unload_instance("h-1")  # draining: it waits for "hung"
    await until(runner.entered.is_set)

    await agent.cancel(["hung"])
    events = await poll_for(agent, lambda ev: finished(ev, "hung"))

    assert finished(events, "hung")[0].status is Status.CANCELED
    await until(lambda: len(runner.unloads) == 1)
    assert await agent.instances() == [] and len(runner.loads) == 1


async def test_a_runner_that_stops_when_canceled_is_not_restarted(runner):
    agent = NodeAgent("node-1", cancel_grace_s=GRACE_S)
    await agent.load_instance("h-1", _spec())
    await agent.submit(ROUTER, [Task("waits", "h-1", {"wait": True})])
    await until(runner.entered.is_set)

    await agent.cancel(["waits"])
    grace_over = marker_after(GRACE_S)  # after the agent's own check of it
    events = await poll_for(agent, lambda ev: finished(ev, "waits"))
    await grace_over

    assert finished(events, "waits")[0].error == "canceled while processing"
    assert len(runner.loads) == 1 and runner.unloads == []
    assert [i.state for i in await agent.instances()] == ["idle"]


# Outboxes of routers that went away


async def after_timer(handle: asyncio.TimerHandle) -> None:
    """Wait until the loop has run the timer ``handle`` (timers due at one time run in the order made)."""
    reached = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_at(handle.when(), reached.set_result, None)
    await reached


async def test_an_outbox_is_released_a_grace_after_its_router_and_its_tasks_are_gone(runner):
    agent = NodeAgent("node-1", outbox_grace_s=0.05)
    await agent.load_instance("h-1", _spec())
    box, generation, _ = agent.open_session(ROUTER, False, 0)
    await agent.submit(ROUTER, [Task("p1", "h-1", {"wait": True})])

    agent.close_session(box, generation)  # the router's stream went away while p1 runs
    assert box.release_timer is None  # p1's events still need it
    runner.gate.set()
    await until(lambda: box.release_timer is not None)
    await after_timer(box.release_timer)

    assert agent.footprint() == {"outboxes": 0, "events_held": 0, "running": 0}
    with pytest.raises(ResumeRefused, match="holds nothing for router router-1"):
        agent.open_session(ROUTER, True, 1)


async def test_a_router_that_comes_back_within_the_grace_keeps_its_outbox_and_events(runner):
    agent = NodeAgent("node-1", outbox_grace_s=60.0)
    await agent.load_instance("h-1", _spec())
    box, generation, _ = agent.open_session(ROUTER, False, 0)
    await agent.submit(ROUTER, [Task("p1", "h-1", {})])
    seq, events = await box.take_batch(generation, WAIT_S)  # taken for a stream that then broke
    agent.close_session(box, generation)
    await until(lambda: box.release_timer is not None or agent.footprint()["running"] == 0)

    again, generation, replay = agent.open_session(ROUTER, True, 0)

    assert again is box and again.release_timer is None
    assert replay == [(seq, events)]  # what it may have missed comes again


async def test_many_routers_coming_and_going_leave_no_outbox_behind(runner):
    agent = NodeAgent("node-1", outbox_grace_s=0.01)
    await agent.load_instance("h-1", _spec(max_concurrency=4))
    boxes = []
    for n in range(100):  # each has a session, runs a task, takes its first events and hangs up
        box, generation, _ = agent.open_session(f"router-{n}", False, 0)
        await agent.submit(f"router-{n}", [Task(f"p{n}", "h-1", {})])
        await box.take_batch(generation, WAIT_S)
        agent.close_session(box, generation)
        boxes.append(box)
    await until(lambda: agent.footprint()["outboxes"] == 0)  # each released once its grace passed
    assert agent.footprint() == {"outboxes": 0, "events_held": 0, "running": 0}
    assert all(b.release_timer is None for b in boxes)
