"""The router: one queue per route, dispatch to instances with a free slot, cancellation, backpressure.

It lives in the gateway process. Dispatch is batched per node: each node has at most one ``submit`` on
its way, and whatever becomes dispatchable meanwhile goes in the next one; one ``poll`` per node brings
back the events of many predictions. So under load the messages per prediction fall well below one.
The router knows nodes only through the ``NodeData`` port: in the cluster, a gRPC stream to each agent
(``scheduler.data_channel``, frames in ``warmfleet.dataplane``); in tests, a fake.

Every prediction the router accepts ends with exactly one ``Finished`` delivered to ``on_event``:
succeeded, failed (with a reason), canceled or aborted. None is dropped.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from scheduler.policies import InstanceLoad, pick_instance
from scheduler.ports import NodeData, NodeLost, RoutingTable
from warmfleet.domain import Finished, InstanceState, Rejected, Status, Task, TaskEventBody
from warmfleet.errors import QueueFull

log = logging.getLogger(__name__)

EventSink = Callable[[str, TaskEventBody], None]

MAX_REJECTIONS = 5  # a prediction bounced this often by agents fails rather than loop forever
POLL_WAIT_S = 5.0
# The states in which an instance takes predictions: the router dispatches to no other.
SERVING_STATES = frozenset({InstanceState.IDLE, InstanceState.PROCESSING})


@dataclass
class _Queued:
    prediction_id: str
    route: str
    input: dict[str, Any]
    priority: int
    deadline_at: float | None = None
    deadline_timer: asyncio.TimerHandle | None = None
    rejections: int = 0


@dataclass
class _Running:
    item: _Queued
    instance_id: str
    node_id: str


class Router:
    def __init__(self, router_id: str, on_event: EventSink, max_queue_per_model: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.router_id = router_id
        self._on_event = on_event
        self._max_queue = max_queue_per_model
        self._clock = clock
        self._seq = itertools.count()
        self._heaps: dict[str, list[tuple[int, int, str]]] = {}
        self._queued: dict[str, _Queued] = {}
        self._queue_len: dict[str, int] = {}
        self._running: dict[str, _Running] = {}
        self._instances: dict[str, InstanceLoad] = {}
        self._by_route: dict[str, list[str]] = {}
        self._route_of_instance: dict[str, str] = {}
        self._nodes: dict[str, NodeData] = {}
        self._pollers: dict[str, asyncio.Task] = {}
        self._outgoing: dict[str, list[Task]] = {}
        self._senders: dict[str, asyncio.Task] = {}
        self._dirty_routes: set[str] = set()
        self.revision = -1

    # The routing table

    def update_table(self, table: RoutingTable) -> None:
        """Adopt a newer routing table: new instances take work, removed ones take no more."""
        if table.revision <= self.revision:
            return
        self.revision = table.revision
        old = self._instances
        self._instances, self._by_route, self._route_of_instance = {}, {}, {}
        for info in table.instances:
            if info.state not in SERVING_STATES:
                continue
            prev = old.get(info.id)
            self._instances[info.id] = InstanceLoad(
                info.id, info.node_id, prev.in_flight if prev else 0, info.max_concurrency)
            self._by_route.setdefault(info.model, []).append(info.id)
            self._route_of_instance[info.id] = info.model
        for node_id, client in table.nodes.items():
            if node_id in self._nodes:
                continue  # keep the client (and its open stream) the pollers already use
            self._nodes[node_id] = client
            if node_id not in self._pollers:
                self._pollers[node_id] = asyncio.create_task(self._poll(client), name=f"poll-{node_id}")
        for route in list(self._heaps):
            self._dispatch(route)
        for route, error in table.load_failures.items():
            if route not in self._by_route:
                self._fail_queued(route, f"no instance of {route} could be loaded: {error}")
        if table.models is not None:
            served = {m.name for m in table.models}
            for route in [m for m, n in self._queue_len.items() if n and m not in served]:
                self._fail_queued(route, f"{route} is no longer served (it was deleted)")

    def _close_instance(self, instance_id: str) -> None:
        """Stop dispatching to an instance until a routing table lists it again."""
        self._instances.pop(instance_id, None)
        route = self._route_of_instance.pop(instance_id, None)
        if route is not None and instance_id in self._by_route.get(route, []):
            self._by_route[route].remove(instance_id)
            if not self._by_route[route]:
                del self._by_route[route]

    def _fail_queued(self, route: str, reason: str) -> None:
        """End every prediction queued for ``route``, with ``reason``."""
        while (item := self._pop(route)) is not None:
            if item.deadline_timer:
                item.deadline_timer.cancel()
            self._finish(item.prediction_id, Status.FAILED, reason)

    def ongoing(self) -> dict[str, int]:
        """Predictions per route that are queued or in flight here: what the autoscaler scales on."""
        counts = {route: n for route, n in self._queue_len.items() if n}
        for running in self._running.values():
            counts[running.item.route] = counts.get(running.item.route, 0) + 1
        return counts

    def models_with_instances(self) -> set[str]:
        return set(self._by_route)

    def has_instances(self, route: str) -> bool:
        """Whether any ready instance serves ``route``."""
        return route in self._by_route

    # Queueing

    def enqueue(self, prediction_id: str, route: str, input: dict[str, Any], priority: int = 0,
                deadline_at: float | None = None) -> None:
        """Queue a prediction; raises QueueFull when the route's queue is at its bound."""
        if self._queue_len.get(route, 0) >= self._max_queue:
            raise QueueFull(f"the queue of {route} is full ({self._max_queue} predictions); retry later")
        self._push(_Queued(prediction_id, route, input, priority, deadline_at))
        self._dispatch(route)

    def _push(self, item: _Queued) -> None:
        """Queue ``item`` (again), arming its deadline."""
        if item.deadline_at is not None:
            delay = max(0.0, item.deadline_at - self._clock())
            loop = asyncio.get_running_loop()
            item.deadline_timer = loop.call_later(delay, self._abort, item.prediction_id)
        self._queued[item.prediction_id] = item
        entry = (-item.priority, next(self._seq), item.prediction_id)
        heapq.heappush(self._heaps.setdefault(item.route, []), entry)
        self._queue_len[item.route] = self._queue_len.get(item.route, 0) + 1

    def _pop(self, route: str) -> _Queued | None:
        heap = self._heaps.get(route)
        while heap:
            _, _, pid = heapq.heappop(heap)
            item = self._queued.pop(pid, None)
            if item is not None:  # entries of canceled or aborted predictions are skipped
                self._queue_len[route] -= 1
                return item
        return None

    def _remove_queued(self, prediction_id: str) -> _Queued | None:
        item = self._queued.pop(prediction_id, None)
        if item is not None:
            self._queue_len[item.route] -= 1
            if item.deadline_timer:
                item.deadline_timer.cancel()
        return item

    def queue_length(self, route: str) -> int:
        return self._queue_len.get(route, 0)

    def in_flight(self) -> int:
        return len(self._running)

    def _abort(self, prediction_id: str) -> None:
        if self._remove_queued(prediction_id) is not None:
            self._finish(prediction_id, Status.ABORTED, "its deadline passed before it started")

    def _finish(self, prediction_id: str, status: Status, error: str) -> None:
        self._on_event(prediction_id, Finished(status, None, self._clock(), error=error))

    # Cancellation

    def cancel(self, prediction_id: str) -> None:
        """Cancel a queued prediction at once, or ask its node to stop a running one."""
        if self._remove_queued(prediction_id) is not None:
            self._finish(prediction_id, Status.CANCELED, "canceled while queued")
            return
        running = self._running.get(prediction_id)
        if running is not None and self._unsend(running):
            self._release(prediction_id)
            self._finish(prediction_id, Status.CANCELED, "canceled before it started")
            self._dispatch(running.item.route)
        elif running is not None:
            node = self._nodes.get(running.node_id)
            if node is not None:
                asyncio.create_task(self._call(node, node.cancel([prediction_id])))

    def _unsend(self, running: _Running) -> bool:
        """Take a dispatched task back if it has not left for its node yet."""
        tasks = self._outgoing.get(running.node_id, [])
        for i, task in enumerate(tasks):
            if task.prediction_id == running.item.prediction_id:
                del tasks[i]
                return True
        return False

    # Dispatch

    def _dispatch(self, route: str) -> None:
        ids = self._by_route.get(route)
        if not ids or not self._queue_len.get(route):
            return
        while self._queue_len.get(route):
            choice = pick_instance([self._instances[i] for i in ids])
            if choice is None:
                break
            item = self._pop(route)
            if item is None:
                break
            if item.deadline_timer:
                item.deadline_timer.cancel()
            self._instances[choice.instance_id] = InstanceLoad(
                choice.instance_id, choice.node_id, choice.in_flight + 1, choice.max_concurrency)
            self._running[item.prediction_id] = _Running(item, choice.instance_id, choice.node_id)
            self._outgoing.setdefault(choice.node_id, []).append(
                Task(item.prediction_id, choice.instance_id, item.input))
            if choice.node_id not in self._senders:
                self._senders[choice.node_id] = asyncio.create_task(self._send_loop(choice.node_id))

    async def _send_loop(self, node_id: str) -> None:
        """Send a node its tasks, one submit at a time: what queues up while a submit is on its way goes
        in the next one, so the number of data plane messages per task falls as the load rises. Starts on
        the next turn of the loop, so everything dispatched in this turn shares the first submit."""
        try:
            while tasks := self._outgoing.pop(node_id, None):
                await self._send(node_id, tasks)
        finally:
            del self._senders[node_id]

    async def _send(self, node_id: str, tasks: list[Task]) -> None:
        node = self._nodes.get(node_id)
        try:
            if node is None:
                raise NodeLost(node_id)
            await node.submit(self.router_id, tasks)
        except Exception as err:
            reason = (f"node {node_id} was lost before the prediction started" if isinstance(err, NodeLost)
                      else f"could not send the prediction to node {node_id}: {err}")
            if not isinstance(err, NodeLost):
                log.exception("submit to node %s failed", node_id)
            for task in tasks:  # each ends once: the node's poller may have ended it already
                if self._release(task.prediction_id) is not None:
                    self._finish(task.prediction_id, Status.FAILED, reason)

    async def _call(self, node: NodeData, call) -> None:
        try:
            await call
        except NodeLost:
            pass  # the node's poller notices too, and fails what ran there

    def _release(self, prediction_id: str) -> _Running | None:
        running = self._running.pop(prediction_id, None)
        if running is not None:
            load = self._instances.get(running.instance_id)
            if load is not None:
                self._instances[running.instance_id] = InstanceLoad(
                    load.instance_id, load.node_id, load.in_flight - 1, load.max_concurrency)
            self._dirty_routes.add(running.item.route)
        return running

    # Events from nodes

    async def _poll(self, node: NodeData) -> None:
        while True:
            try:
                events = await node.poll(self.router_id, POLL_WAIT_S)
            except NodeLost:
                self._node_lost(node.node_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a transient transport error: log it, keep the node
                log.exception("polling node %s failed", node.node_id)
                await asyncio.sleep(0.5)
                continue
            for event in events:
                self._on_task_event(event.prediction_id, event.body)
            dirty, self._dirty_routes = self._dirty_routes, set()
            for route in dirty:
                self._dispatch(route)

    def _on_task_event(self, prediction_id: str, body: TaskEventBody) -> None:
        if isinstance(body, Rejected):
            running = self._release(prediction_id)
            if running is None:
                return
            item = running.item
            if body.instance_closed:  # its agent let it go before our table did: send it nothing more
                self._close_instance(running.instance_id)
            item.rejections += 1
            if item.rejections >= MAX_REJECTIONS:
                self._finish(prediction_id, Status.FAILED, f"no instance would take it: {body.reason}")
            else:
                self._push(item)
            return
        if isinstance(body, Finished):
            if self._release(prediction_id) is None:
                return
        elif prediction_id not in self._running:
            return
        self._on_event(prediction_id, body)

    def _node_lost(self, node_id: str) -> None:
        log.warning("node %s was lost", node_id)
        self._nodes.pop(node_id, None)
        self._pollers.pop(node_id, None)
        for iid in [i for i, load in self._instances.items() if load.node_id == node_id]:
            self._close_instance(iid)
        for pid in [p for p, r in self._running.items() if r.node_id == node_id]:
            self._release(pid)
            self._finish(pid, Status.FAILED, f"node {node_id} was lost while running the prediction")

    async def close(self) -> None:
        tasks = list(self._pollers.values()) + list(self._senders.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pollers.clear()
