"""The router: one queue per route, dispatch to instances with a free slot, cancellation, backpressure.

It lives in the gateway process. Dispatch is batched per node: each node has at most one ``submit`` on
its way, and whatever becomes dispatchable meanwhile goes in the next one; one ``poll`` per node brings
back the events of many predictions. So under load the messages per prediction fall well below one.
The router knows nodes only through the ``NodeData`` port: in the cluster, a gRPC stream to each agent
(``scheduler.data_channel``, frames in ``warmfleet.dataplane``); in tests, a fake.

Every prediction the router accepts ends with exactly one ``Finished`` delivered to ``on_event``:
succeeded, failed (with a reason), canceled or aborted. None is dropped.

A deadline covers a prediction's whole life: one that has not started by then is aborted; one running
then is canceled on its node and ends canceled with a reason naming the deadline (the node's verdict,
or the router's own when the node has not confirmed within ``cancel_grace_s``). A task an agent rejects
for want of a free slot (other routers share the instance) goes back to its place in the queue, and
that instance gets nothing more from this router until a backoff passes or a task of ours there ends:
sharing never fails a prediction, and never spins.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable

from scheduler.policies import InstanceLoad, pick_instance
from scheduler.ports import NodeData, NodeLost, RoutingTable
from warmfleet.domain import (
    Finished, InstanceInfo, InstanceState, Rejected, Started, Status, Task, TaskEventBody,
)
from warmfleet.errors import QueueFull

log = logging.getLogger(__name__)

EventSink = Callable[[str, TaskEventBody], None]

MAX_REJECTIONS = 5  # a prediction bounced this often by closed instances fails rather than loop forever
POLL_WAIT_S = 5.0
CANCEL_GRACE_S = 15.0  # how long the node has to confirm a cancel at the deadline (its own grace is 10 s)
FULL_BACKOFF_S = 0.02  # how long a full instance first gets nothing; it doubles while it stays full
FULL_BACKOFF_MAX_S = 1.0
DEADLINE_QUEUED = "its deadline passed before it started"
DEADLINE_RUNNING = "its deadline passed while it was running"
# The states in which an instance takes predictions: the router dispatches to no other.
SERVING_STATES = frozenset({InstanceState.IDLE, InstanceState.PROCESSING})


@dataclass(slots=True)
class _Queued:
    prediction_id: str
    route: str
    input: dict[str, Any]
    priority: int
    seq: int  # its place among equal priorities, kept when it comes back to the queue
    deadline_at: float | None = None
    deadline_timer: asyncio.TimerHandle | None = None  # armed once, for its whole life
    rejections: int = 0  # by closed instances


@dataclass(slots=True)
class _Running:
    item: _Queued
    instance_id: str
    node_id: str
    expired: bool = False  # its deadline passed while it ran: canceled on its node
    give_up: asyncio.TimerHandle | None = None  # when the router ends it itself, if the node has not


class RouteQueues:
    """The queued predictions of every route: a heap each, by priority, then arrival.

    An entry whose prediction left the queue other than by ``pop`` (canceled, aborted) stays in its heap
    until popped, counted as dead; once the dead are over half of a heap it is rebuilt without them, and
    a heap with nothing queued in it is emptied: memory follows what is queued, not what was. (A route
    keeps its empty heap until ``forget``: creating it anew for every burst would cost the hot path.)
    """

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[int, int, str]]] = {}
        self._items: dict[str, _Queued] = {}
        self.lengths: dict[str, int] = {}  # route -> predictions queued (read on the hot path)
        self._dead: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def length(self, route: str) -> int:
        return self.lengths.get(route, 0)

    def routes(self) -> list[str]:
        return list(self._heaps)

    def counts(self) -> dict[str, int]:
        return {route: n for route, n in self.lengths.items() if n}

    def entries(self) -> int:
        """Heap entries, live and dead."""
        return sum(len(heap) for heap in self._heaps.values())

    def push(self, item: _Queued) -> None:
        self._items[item.prediction_id] = item
        heapq.heappush(self._heaps.setdefault(item.route, []), (-item.priority, item.seq, item.prediction_id))
        self.lengths[item.route] = self.lengths.get(item.route, 0) + 1

    def pop(self, route: str) -> _Queued | None:
        """The first queued prediction of ``route``, out of the queue; None when none is queued."""
        heap = self._heaps.get(route)
        while heap:
            _, seq, pid = heapq.heappop(heap)
            item = self._items.get(pid)
            if item is not None and item.seq == seq:
                del self._items[pid]
                self.lengths[route] -= 1
                return item
            self._dead[route] -= 1  # canceled or aborted while queued
        return None

    def remove(self, prediction_id: str) -> _Queued | None:
        """Take a prediction out of the queue, wherever it is in it; None if it is not queued."""
        item = self._items.pop(prediction_id, None)
        if item is None:
            return None
        route = item.route
        self.lengths[route] -= 1
        dead = self._dead[route] = self._dead.get(route, 0) + 1
        heap = self._heaps[route]
        if not self.lengths[route]:  # all that is left is dead
            heap.clear()
            self._dead[route] = 0
        elif dead * 2 > len(heap):
            heap[:] = [e for e in heap if (it := self._items.get(e[2])) is not None and it.seq == e[1]]
            heapq.heapify(heap)
            self._dead[route] = 0
        return item

    def forget(self, route: str) -> None:
        """Drop the heap of a route with nothing queued (one that is gone, or failed)."""
        if not self.lengths.get(route):
            self._heaps.pop(route, None)
            self.lengths.pop(route, None)
            self._dead.pop(route, None)

    def items(self) -> list[_Queued]:
        return list(self._items.values())


class InstancePool:
    """The ready instances the router dispatches to, by route, with the load the router put on each, and
    those an agent said were full (``_FullInstances``)."""

    def __init__(self, on_free: Callable[[str], None], full_backoff_s: float,
                 full_backoff_max_s: float) -> None:
        self.loads: dict[str, InstanceLoad] = {}
        self.by_route: dict[str, list[str]] = {}
        self.route_of: dict[str, str] = {}
        self.full = _FullInstances(on_free, full_backoff_s, full_backoff_max_s)

    def adopt(self, instances: list[InstanceInfo]) -> None:
        """A routing table's instances: those serving take work, keeping the load counted on each."""
        old = self.loads
        self.loads, self.by_route, self.route_of = {}, {}, {}
        for info in instances:
            if info.state not in SERVING_STATES:
                continue
            prev = old.get(info.id)
            self.loads[info.id] = InstanceLoad(
                info.id, info.node_id, prev.in_flight if prev else 0, info.max_concurrency)
            self.by_route.setdefault(info.model, []).append(info.id)
            self.route_of[info.id] = info.model
        self.full.keep_only(self.loads)

    def close(self, instance_id: str) -> None:
        """Dispatch nothing more to an instance until a routing table lists it again."""
        self.loads.pop(instance_id, None)
        self.full.forget(instance_id)
        route = self.route_of.pop(instance_id, None)
        if route is not None and instance_id in self.by_route.get(route, []):
            self.by_route[route].remove(instance_id)
            if not self.by_route[route]:
                del self.by_route[route]

    def on_node(self, node_id: str) -> list[str]:
        return [i for i, load in self.loads.items() if load.node_id == node_id]

    def pick(self, route: str) -> InstanceLoad | None:
        """Where the next prediction of ``route`` goes (``pick_instance``), but to no full instance."""
        ids = self.by_route.get(route)
        if not ids:
            return None
        blocked, loads = self.full.blocked, self.loads
        if blocked:
            return pick_instance([loads[i] for i in ids if i not in blocked])
        return pick_instance([loads[i] for i in ids])

    def occupy(self, load: InstanceLoad) -> None:
        self.loads[load.instance_id] = InstanceLoad(
            load.instance_id, load.node_id, load.in_flight + 1, load.max_concurrency)

    def mark_full(self, instance_id: str) -> None:
        if instance_id in self.loads:
            self.full.full(instance_id)

    def vacate(self, instance_id: str) -> None:
        """A task of ours there ended: that slot is free, whoever else is there."""
        load = self.loads.get(instance_id)
        if load is not None:
            self.loads[instance_id] = InstanceLoad(
                load.instance_id, load.node_id, load.in_flight - 1, load.max_concurrency)
        if self.full.blocked:
            self.full.freed(instance_id)


class _FullInstances:
    """Instances whose agent said they had no free slot (other routers' work fills them): each gets
    nothing until its backoff passes (``on_free`` is called then), doubling while it stays full, or one
    of this router's tasks on it ends. One that takes a task again starts over at the first backoff."""

    def __init__(self, on_free: Callable[[str], None], first_s: float, max_s: float) -> None:
        self._on_free = on_free
        self._first_s, self._max_s = first_s, max_s
        self.blocked: dict[str, asyncio.TimerHandle] = {}  # instance id -> the end of its wait
        self.backoff: dict[str, float] = {}  # instance id -> its last wait, while it has not taken work since

    def __len__(self) -> int:
        return len(self.backoff)

    def full(self, instance_id: str) -> None:
        wait = min(self.backoff.get(instance_id, self._first_s / 2) * 2, self._max_s)
        self.backoff[instance_id] = wait
        self.freed(instance_id)
        self.blocked[instance_id] = asyncio.get_running_loop().call_later(wait, self._expire, instance_id)

    def _expire(self, instance_id: str) -> None:
        del self.blocked[instance_id]
        self._on_free(instance_id)

    def freed(self, instance_id: str) -> None:
        timer = self.blocked.pop(instance_id, None)
        if timer is not None:
            timer.cancel()

    def started(self, instance_id: str) -> None:
        self.backoff.pop(instance_id, None)

    def forget(self, instance_id: str) -> None:
        self.freed(instance_id)
        self.backoff.pop(instance_id, None)

    def keep_only(self, instance_ids: set[str] | dict[str, Any]) -> None:
        for iid in [i for i in self.backoff if i not in instance_ids]:
            self.forget(iid)


class Router:
    def __init__(self, router_id: str, on_event: EventSink, max_queue_per_model: int,
                 clock: Callable[[], float] = time.time, cancel_grace_s: float = CANCEL_GRACE_S,
                 full_backoff_s: float = FULL_BACKOFF_S, full_backoff_max_s: float = FULL_BACKOFF_MAX_S
                 ) -> None:
        self.router_id = router_id
        self._on_event = on_event
        self._max_queue = max_queue_per_model
        self._clock = clock
        self._cancel_grace_s = cancel_grace_s
        self._seq = itertools.count()
        self._queue = RouteQueues()
        self._running: dict[str, _Running] = {}
        self._pool = InstancePool(self._instance_free, full_backoff_s, full_backoff_max_s)
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
        self._pool.adopt(table.instances)
        for node_id, client in table.nodes.items():
            if node_id in self._nodes:
                continue  # keep the client (and its open stream) the pollers already use
            self._nodes[node_id] = client
            if node_id not in self._pollers:
                self._pollers[node_id] = asyncio.create_task(self._poll(client), name=f"poll-{node_id}")
        for route in self._queue.routes():
            self._dispatch(route)
        for route, error in table.load_failures.items():
            if route not in self._pool.by_route:
                self._fail_queued(route, f"no instance of {route} could be loaded: {error}")
        if table.models is not None:
            served = {m.name for m in table.models}
            for route in [r for r in self._queue.counts() if r not in served]:
                self._fail_queued(route, f"{route} is no longer served (it was deleted)")

    def _instance_free(self, instance_id: str) -> None:
        route = self._pool.route_of.get(instance_id)
        if route is not None:
            self._dispatch(route)

    def _fail_queued(self, route: str, reason: str) -> None:
        """End every prediction queued for ``route``, with ``reason``."""
        while (item := self._queue.pop(route)) is not None:
            self._finish(item, Status.FAILED, reason)
        self._queue.forget(route)

    def ongoing(self) -> dict[str, int]:
        """Predictions per route that are queued or in flight here: what the autoscaler scales on."""
        counts = self._queue.counts()
        for running in self._running.values():
            counts[running.item.route] = counts.get(running.item.route, 0) + 1
        return counts

    def models_with_instances(self) -> set[str]:
        return set(self._pool.by_route)

    def has_instances(self, route: str) -> bool:
        """Whether any ready instance serves ``route``."""
        return route in self._pool.by_route

    # Queueing

    def enqueue(self, prediction_id: str, route: str, input: dict[str, Any], priority: int = 0,
                deadline_at: float | None = None) -> None:
        """Queue a prediction; raises QueueFull when the route's queue is at its bound."""
        if self._queue.length(route) >= self._max_queue:
            raise QueueFull(f"the queue of {route} is full ({self._max_queue} predictions); retry later")
        item = _Queued(prediction_id, route, input, priority, next(self._seq), deadline_at)
        if deadline_at is not None:
            delay = max(0.0, deadline_at - self._clock())
            item.deadline_timer = asyncio.get_running_loop().call_later(delay, self._deadline, prediction_id)
        self._queue.push(item)
        self._dispatch(route)

    def queue_length(self, route: str) -> int:
        return self._queue.length(route)

    def in_flight(self) -> int:
        return len(self._running)

    def _finish(self, item: _Queued, status: Status, error: str) -> None:
        """End a prediction the router holds no more (queued or running), with the router's verdict."""
        _cancel(item.deadline_timer)
        self._on_event(item.prediction_id, Finished(status, None, self._clock(), error=error))

    def footprint(self) -> dict[str, int]:
        """The sizes of what the router holds per prediction: all 0 once every prediction has ended."""
        return {"queued": len(self._queue), "heap_entries": self._queue.entries(),
                "running": len(self._running), "outgoing": sum(map(len, self._outgoing.values())),
                "full_instances": len(self._pool.full), "dirty_routes": len(self._dirty_routes)}

    # Cancellation and deadlines

    def cancel(self, prediction_id: str) -> None:
        """Cancel a queued prediction at once, or ask its node to stop a running one."""
        item = self._queue.remove(prediction_id)
        if item is not None:
            self._finish(item, Status.CANCELED, "canceled while queued")
            return
        running = self._running.get(prediction_id)
        if running is not None and self._unsend(running):
            self._release(prediction_id)
            self._finish(running.item, Status.CANCELED, "canceled before it started")
            self._dispatch(running.item.route)
        elif running is not None:
            self._cancel_on_node(running)

    def _cancel_on_node(self, running: _Running) -> None:
        node = self._nodes.get(running.node_id)
        if node is not None:
            asyncio.create_task(_unless_lost(node.cancel([running.item.prediction_id])))

    def _deadline(self, prediction_id: str) -> None:
        """A prediction's deadline passed: abort it if queued, cancel it on its node if running."""
        item = self._queue.remove(prediction_id)
        if item is not None:
            self._finish(item, Status.ABORTED, DEADLINE_QUEUED)
            return
        running = self._running.get(prediction_id)
        if running is None or running.expired:
            return
        if self._unsend(running):
            self._release(prediction_id)
            self._finish(running.item, Status.ABORTED, DEADLINE_QUEUED)
            self._dispatch(running.item.route)
            return
        running.expired = True
        self._cancel_on_node(running)
        loop = asyncio.get_running_loop()
        running.give_up = loop.call_later(self._cancel_grace_s, self._give_up, prediction_id)

    def _give_up(self, prediction_id: str) -> None:
        """The node has not confirmed the cancel of an expired prediction: end it here."""
        running = self._release(prediction_id)
        if running is None:
            return
        log.warning("node %s did not confirm the cancel of %s at its deadline", running.node_id,
                    prediction_id)
        self._finish(running.item, Status.CANCELED, f"{DEADLINE_RUNNING}; node {running.node_id} did not "
                     f"confirm its cancel within {self._cancel_grace_s:g} s")
        self._dispatch(running.item.route)

    def _unsend(self, running: _Running) -> bool:
        """Take a dispatched task back if it has not left for its node yet."""
        return _take_back(self._outgoing.get(running.node_id, []), running.item.prediction_id)

    # Dispatch

    def _dispatch(self, route: str) -> None:
        queue, pool, queued = self._queue, self._pool, self._queue.lengths
        while queued.get(route):
            choice = pool.pick(route)
            if choice is None:
                break
            item = queue.pop(route)
            if item is None:
                break
            pool.occupy(choice)
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
                if (running := self._release(task.prediction_id)) is not None:
                    self._finish(running.item, Status.FAILED, reason)

    def _release(self, prediction_id: str) -> _Running | None:
        """Free a running prediction's slot; the caller ends it or queues it again."""
        running = self._running.pop(prediction_id, None)
        if running is not None:
            self._pool.vacate(running.instance_id)
            _cancel(running.give_up)
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
        if isinstance(body, Finished):
            running = self._release(prediction_id)
            if running is None:
                return
            _cancel(running.item.deadline_timer)
            if running.expired and body.status is Status.CANCELED:
                body = replace(body, error=f"{DEADLINE_RUNNING}; {body.error}" if body.error
                               else DEADLINE_RUNNING)
        elif isinstance(body, Rejected):
            running = self._release(prediction_id)
            if running is not None:
                self._rejected(running, body)
            return
        else:
            running = self._running.get(prediction_id)
            if running is None:
                return
            if isinstance(body, Started) and self._pool.full.backoff:
                self._pool.full.started(running.instance_id)
        self._on_event(prediction_id, body)

    def _rejected(self, running: _Running, body: Rejected) -> None:
        """An agent could not start the task: queue it again in its place, or end it if it cannot wait."""
        item = running.item
        if running.expired or (item.deadline_at is not None and item.deadline_at <= self._clock()):
            self._finish(item, Status.ABORTED, DEADLINE_QUEUED)
            return
        if not body.instance_closed:  # full: others share it; never a reason to fail
            self._pool.mark_full(running.instance_id)
        else:  # its agent let it go before our table did: send it nothing more
            self._pool.close(running.instance_id)
            item.rejections += 1
            if item.rejections >= MAX_REJECTIONS:
                self._finish(item, Status.FAILED, f"no instance would take it: {body.reason}")
                return
        self._queue.push(item)

    def _node_lost(self, node_id: str) -> None:
        log.warning("node %s was lost", node_id)
        self._nodes.pop(node_id, None)
        self._pollers.pop(node_id, None)
        for iid in self._pool.on_node(node_id):
            self._pool.close(iid)
        for pid in [p for p, r in self._running.items() if r.node_id == node_id]:
            running = self._release(pid)
            self._finish(running.item, Status.FAILED, f"node {node_id} was lost while running the prediction")

    async def close(self) -> None:
        tasks = list(self._pollers.values()) + list(self._senders.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pollers.clear()
        for item in self._queue.items() + [r.item for r in self._running.values()]:
            _cancel(item.deadline_timer)
        for running in self._running.values():
            _cancel(running.give_up)
        self._pool.full.keep_only(set())


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def _take_back(tasks: list[Task], prediction_id: str) -> bool:
    """Remove the task of ``prediction_id`` from ``tasks``; whether it was there."""
    for i, task in enumerate(tasks):
        if task.prediction_id == prediction_id:
            del tasks[i]
            return True
    return False


async def _unless_lost(call: Awaitable[None]) -> None:
    try:
        await call
    except NodeLost:
        pass  # the node's poller notices too, and fails what ran there
