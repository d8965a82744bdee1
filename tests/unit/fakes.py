"""Fakes of the scheduler's ports, and small helpers for driving the router in unit tests.

Each fake subclasses the port it stands for. ``FakeNodeData`` (the router's ``NodeData``) records every
``submit`` and ``cancel`` in the order they arrive, and its ``poll`` is fed by the test through an
``asyncio.Queue``: ``push`` hands the router one batch of task events, ``lose`` makes the router's next
poll raise ``NodeLost``. ``FakeNodeControl`` (the controller's ``NodeControl``) loads and unloads
instances in a dict. Nothing here sleeps: tests await the conditions they need.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from runners.base import Runner
from scheduler.ports import NodeControl, NodeData, NodeLost, RoutingTable
from warmfleet.domain import (
    Finished, InstanceInfo, InstanceState, RouteSpec, NodeInfo, Output, Rejected, Status, Task, TaskEvent,
    TaskEventBody,
)

WAIT_S = 2.0  # how long a test waits for something that should happen at once


async def wait_until(predicate: Callable[[], bool], changed: asyncio.Event,
                     timeout_s: float = WAIT_S) -> None:
    """Wait until ``predicate()`` holds, re-checking whenever ``changed`` is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError("timed out waiting for a condition")
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), remaining)
        except TimeoutError:
            pass


async def settle(turns: int = 20) -> None:
    """Let every callback and task the router chained onto the loop run (no wall-clock time passes).

    The router's chains are short (poll result -> dispatch -> flush -> send -> submit), so a bounded
    number of loop turns runs them all. Used only before asserting that something did *not* happen.
    """
    for _ in range(turns):
        await asyncio.sleep(0)


@dataclass
class QueuedItem:
    """What the fair queue holds of a queued prediction (the router's ``_Queued`` has these and more)."""

    prediction_id: str
    route: str
    priority: int
    seq: int
    account: str


class ManualClock:
    """A clock the test moves (``now``, seconds): what policies and stores take as their ``clock``."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SchemalessRunner(Runner):
    """The base of the tests' tiny runners: any object is its input, and it declares no output schema."""

    @classmethod
    def input_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return {"type": "object"}

    @classmethod
    def output_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return {}


class FakeNodeData(NodeData):
    """A node agent's data plane the test scripts: records calls, replays pushed events, can be lost."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.data_address = f"fake://{node_id}/{id(self)}"  # another fake of the same node: another agent
        self.submits: list[list[Task]] = []  # one entry per submit call
        self.cancels: list[list[str]] = []  # one entry per cancel call
        self.calls: list[tuple[str, tuple[str, ...]]] = []  # ("submit" | "cancel", prediction ids), in order
        self.submit_times: list[float] = []  # the event loop's time of each submit call
        self.polls = 0
        self.hold_submits: asyncio.Event | None = None  # when set to an unset Event, submit waits for it
        self.submit_error: BaseException | None = None  # raised by submit (after any hold)
        self.changed = asyncio.Event()
        self.held: dict[str, str] = {}  # what ``attach`` says the agent holds of the router's predictions
        self.attach_error: BaseException | None = None  # raised by attach
        self.attaches = 0
        self.hold_attach: asyncio.Event | None = None  # when set to an unset Event, attach waits for it
        self._events: asyncio.Queue[list[TaskEvent] | BaseException] = asyncio.Queue()

    # The NodeData port

    async def attach(self, router_id: str) -> dict[str, str]:
        self.attaches += 1
        if self.hold_attach is not None:
            await self.hold_attach.wait()
        if self.attach_error is not None:
            raise self.attach_error
        held, self.held = self.held, {}
        return held

    async def submit(self, router_id: str, tasks: list[Task]) -> None:
        self.calls.append(("submit", tuple(t.prediction_id for t in tasks)))
        self.submit_times.append(asyncio.get_running_loop().time())
        self.changed.set()
        if self.hold_submits is not None:
            await self.hold_submits.wait()
        if self.submit_error is not None:
            raise self.submit_error
        self.submits.append(list(tasks))
        self.changed.set()

    async def cancel(self, prediction_ids: list[str]) -> None:
        self.calls.append(("cancel", tuple(prediction_ids)))
        self.cancels.append(list(prediction_ids))
        self.changed.set()

    async def poll(self, router_id: str, max_wait_s: float) -> list[TaskEvent]:
        self.polls += 1
        self.changed.set()
        item = await self._events.get()
        if isinstance(item, BaseException):
            raise item
        return item

    # What the test does

    def push(self, *events: TaskEvent) -> None:
        """Hand the router's poll one batch of events."""
        self._events.put_nowait(list(events))

    def finish(self, prediction_id: str, status: Status = Status.SUCCEEDED, value: Any = "ok") -> None:
        """The node reports that a prediction ended (one batch)."""
        output = Output(value=value) if status is Status.SUCCEEDED else None
        self.push(TaskEvent(prediction_id, Finished(status, 1.0, 2.0, output)))

    def reject(self, prediction_id: str, reason: str = "instance is draining", closed: bool = False) -> None:
        self.push(TaskEvent(prediction_id, Rejected(reason, closed)))

    def reject_full(self, prediction_id: str) -> None:
        """The agent had no free slot for it (another router's work fills the instance)."""
        self.reject(prediction_id, "instance has no free slot (1 of 1 busy)", closed=False)

    def lose(self) -> None:
        """The router's next poll of this node raises NodeLost."""
        self._events.put_nowait(NodeLost(self.node_id))

    # What the test reads

    @property
    def submitted_ids(self) -> list[str]:
        """Prediction ids in the order they reached this node, over all submit calls."""
        return [t.prediction_id for batch in self.submits for t in batch]

    def tasks_on(self, instance_id: str) -> list[str]:
        return [t.prediction_id for batch in self.submits for t in batch if t.instance_id == instance_id]

    async def wait_submitted(self, count: int, timeout_s: float = WAIT_S) -> None:
        """Wait until ``count`` tasks in all have reached this node."""
        await wait_until(lambda: len(self.submitted_ids) >= count, self.changed, timeout_s)


class FakeNodeControl(NodeControl):
    """A node agent as the controller sees it: a load succeeds at once (an idle instance, as many slots
    as the spec's ``max_concurrency``, 1 without), an unload forgets the instance."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.loaded: dict[str, InstanceInfo] = {}

    async def load_instance(self, instance_id: str, spec: RouteSpec) -> InstanceInfo:
        slots = int(spec.options.get("max_concurrency", 1))
        info = InstanceInfo(instance_id, spec.name, spec.version, self.node_id, InstanceState.IDLE, slots)
        self.loaded[instance_id] = info
        return info

    async def unload_instance(self, instance_id: str) -> None:
        self.loaded.pop(instance_id, None)

    async def instances(self) -> list[InstanceInfo]:
        return list(self.loaded.values())

    async def info(self) -> NodeInfo:
        return NodeInfo(id=self.node_id, ray_node_id="", address="")


class EventLog:
    """The router's ``on_event`` sink: records every (prediction id, body) it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, TaskEventBody]] = []
        self.changed = asyncio.Event()

    def __call__(self, prediction_id: str, body: TaskEventBody) -> None:
        self.events.append((prediction_id, body))
        self.changed.set()

    def finished(self, prediction_id: str) -> list[Finished]:
        return [b for p, b in self.events if p == prediction_id and isinstance(b, Finished)]

    def bodies(self, prediction_id: str) -> list[TaskEventBody]:
        return [b for p, b in self.events if p == prediction_id]

    async def wait_finished(self, *prediction_ids: str, timeout_s: float = WAIT_S) -> list[Finished]:
        """Wait until each of ``prediction_ids`` has a Finished; returns the first Finished of each."""
        await wait_until(lambda: all(self.finished(p) for p in prediction_ids), self.changed, timeout_s)
        return [self.finished(p)[0] for p in prediction_ids]


def instance(instance_id: str, model: str, node_id: str, max_concurrency: int, state: str = InstanceState.IDLE
             ) -> InstanceInfo:
    return InstanceInfo(id=instance_id, model=model, version="v1", node_id=node_id, state=state,
                        max_concurrency=max_concurrency)


def table(revision: int, instances: list[InstanceInfo], *nodes: FakeNodeData) -> RoutingTable:
    return RoutingTable(revision, list(instances), {n.node_id: n for n in nodes})


async def poll_until_ended(node: NodeData, router_id: str, prediction_ids: set[str],
                           ends: tuple[type, ...] = (Finished,), timeout_s: float = 10.0) -> list[TaskEvent]:
    """Poll ``node`` (an agent, or a data channel to one) for ``router_id`` until every prediction in
    ``prediction_ids`` has an event of the ``ends`` kinds; returns everything polled."""
    events: list[TaskEvent] = []

    async def loop() -> None:
        pending = set(prediction_ids)
        while pending:
            for event in await node.poll(router_id, 1.0):
                events.append(event)
                if isinstance(event.body, ends):
                    pending.discard(event.prediction_id)

    await asyncio.wait_for(loop(), timeout_s)
    return events
