"""The router: one queue per route, dispatch to instances with a free slot, cancellation, backpressure.

It lives in the gateway process. Dispatch is batched per node: each node has at most one ``submit`` on
its way, and whatever becomes dispatchable meanwhile goes in the next one; one ``poll`` per node brings
back the events of many predictions. So under load the messages per prediction fall well below one.
The router knows nodes only through the ``NodeData`` port: in the cluster, a gRPC stream to each agent
(``scheduler.data_channel``, frames in ``warmfleet.dataplane``); in tests, a fake.

Every prediction the router accepts ends with exactly one ``Finished`` delivered to ``on_event``:
succeeded, failed (with a reason), canceled or aborted. None is dropped.

A route's queue (``scheduler.fair_queue``) serves higher priorities first, and within a priority shares
the route's instances between accounts by the compute each was served: the predict time its finished
predictions report, so one account's burst of a thousand cannot starve another's interactive traffic.
And since nothing running is preempted, instances of many slots keep *headroom*: one slot in 16 goes only
to an account under its share of the route (``scheduler.policies.admits``), so that another account's
first prediction finds a free slot at once; an account alone fills all but those (``InstancePool``).

A run lost to the infrastructure (its node was lost while it ran, or the gateway restarted and no node
still runs it) is run once more, from its place in the queue, announced by a ``Requeued`` event; it
fails only when it was a re-run already, or its route is not ``retryable``. A router that restarts (the
same router id, a new process) takes up what its earlier process left (``recover``): each node says at
its session's start which of the router's predictions it holds (``NodeData.attach``), those are followed
again where they run, and the rest are queued once every node of the first routing table has answered.

A deadline covers a prediction's whole life: one that has not started by then is aborted; one running
then is canceled on its node and ends canceled with a reason naming the deadline (the node's verdict,
or the router's own when the node has not confirmed within ``cancel_grace_s``). A task an agent rejects
for want of a free slot (other routers share the instance) goes back to its place in the queue, and
that instance gets nothing more from this router until a backoff passes or a task of ours there ends:
sharing never fails a prediction, and never spins.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable

from scheduler.fair_queue import FairQueues
from scheduler.instance_pool import InstancePool, next_dispatch
from scheduler.node_links import NodeLinks
from scheduler.policies import Headroom
from scheduler.ports import NodeLost, RoutingTable
from warmfleet.domain import (
    Finished, Rejected, Requeued, Started, Status, Task, TaskEvent, TaskEventBody,
)
from warmfleet.errors import QueueFull

log = logging.getLogger(__name__)

EventSink = Callable[[str, TaskEventBody], None]

MAX_ATTEMPTS = 2  # runs of a prediction: the first, and one re-run after an infrastructure failure
MAX_REJECTIONS = 5  # a prediction bounced this often by closed instances fails rather than loop forever
CANCEL_GRACE_S = 15.0  # how long the node has to confirm a cancel at the deadline (its own grace is 10 s)
FULL_BACKOFF_S = 0.02  # how long a full instance first gets nothing; it doubles while it stays full
FULL_BACKOFF_MAX_S = 1.0
DEADLINE_QUEUED = "its deadline passed before it started"
DEADLINE_RUNNING = "its deadline passed while it was running"


@dataclass(slots=True)
class _Queued:
    prediction_id: str
    route: str
    input: dict[str, Any]
    priority: int
    seq: int  # its place among its account's equal priorities, kept when it comes back to the queue
    account: str = ""  # whose it is: the route is shared fairly between accounts (``FairQueues``)
    deadline_at: float | None = None
    deadline_timer: asyncio.TimerHandle | None = None  # armed once, for its whole life
    rejections: int = 0  # by closed instances
    attempt: int = 1  # 2 once re-run (``MAX_ATTEMPTS``)


@dataclass(frozen=True, slots=True)
class Unfinished:
    """A prediction an earlier process of this router left unfinished, as the gateway's store kept it:
    to be taken up again (``Router.recover``). ``started``: it had begun to run."""

    prediction_id: str
    route: str
    input: dict[str, Any]
    priority: int = 0
    deadline_at: float | None = None
    started: bool = False
    attempt: int = 1
    account: str = ""


@dataclass(slots=True)
class _Takeover:
    """A restarted router's predictions not yet found on a node, and the first table's nodes that have
    not said yet what they hold (None until that table comes)."""

    unclaimed: dict[str, Unfinished]
    waiting: set[str] | None = None

    def answer(self, node_id: str, held: dict[str, str], running: dict[str, Any]
               ) -> tuple[list[tuple[Unfinished, str]], list[str], list[Unfinished] | None]:
        """``node_id`` holds ``held`` (``NodeData.attach``): the predictions it takes up again (with the
        instance running each), the runs there that no one waits for any more (neither unclaimed nor
        in ``running``: to cancel), and, once the last node of the first table has answered, the
        predictions no node holds (else None)."""
        claimed, orphans = [], []
        for pid, instance_id in held.items():
            if (found := self.unclaimed.pop(pid, None)) is not None:
                claimed.append((found, instance_id))
            elif instance_id and pid not in running:
                orphans.append(pid)
        if self.waiting is None:
            return claimed, orphans, None
        self.waiting.discard(node_id)
        return claimed, orphans, None if self.waiting else list(self.unclaimed.values())


def _refusal(item: _Queued, reason: str, now: float, not_retryable: set[str]) -> tuple[Status, str] | None:
    """Why a prediction whose run was lost may not run again (its deadline passed, it was a re-run
    already, or its route is not retryable), as its end; None when it may."""
    if item.deadline_at is not None and item.deadline_at <= now:
        return Status.ABORTED, f"{reason}; {DEADLINE_QUEUED} again"
    if item.attempt >= MAX_ATTEMPTS:
        return Status.FAILED, f"{reason}; not run again: it was a re-run already"
    if item.route in not_retryable:
        return Status.FAILED, f"{reason}; not run again: {item.route} is not retryable"
    return None


@dataclass(slots=True)
class _Running:
    item: _Queued
    instance_id: str
    node_id: str
    expired: bool = False  # its deadline passed while it ran: canceled on its node
    give_up: asyncio.TimerHandle | None = None  # when the router ends it itself, if the node has not


class Router:
    def __init__(self, router_id: str, on_event: EventSink, max_queue_per_model: int,
                 clock: Callable[[], float] = time.time, cancel_grace_s: float = CANCEL_GRACE_S,
                 full_backoff_s: float = FULL_BACKOFF_S, full_backoff_max_s: float = FULL_BACKOFF_MAX_S,
                 headroom: Headroom = Headroom()) -> None:
        self.router_id = router_id
        self._on_event = on_event
        self._max_queue = max_queue_per_model
        self._clock = clock
        self._cancel_grace_s = cancel_grace_s
        self._seq = itertools.count()
        self._queue: FairQueues[_Queued] = FairQueues()
        self._running: dict[str, _Running] = {}
        self._pool = InstancePool(self._instance_free, full_backoff_s, full_backoff_max_s, headroom)
        self._links = NodeLinks(router_id, self._answered, self._events, self._node_lost, self._unsent)
        self._dirty_routes: set[str] = set()
        self._not_retryable: set[str] = set()  # routes whose lost runs are not run again
        self._takeover: _Takeover | None = None
        self.revision = -1

    # The routing table

    def update_table(self, table: RoutingTable) -> None:
        """Adopt a newer routing table: new instances take work, removed ones take no more."""
        if table.revision <= self.revision:
            return
        self.revision = table.revision
        for node_id in [n for n, client in table.nodes.items() if self._links.replaced(n, client)]:
            self._node_lost(node_id)  # a new agent on the node: the one before it is gone
        self._pool.adopt(table.instances)
        if table.models is not None:
            self._not_retryable = {m.name for m in table.models if not m.retryable}
        if self._takeover is not None and self._takeover.waiting is None:
            self._takeover.waiting = set(table.nodes)
            self._answered("", {})  # a table of no nodes: nothing runs anywhere
        for node_id, client in table.nodes.items():
            self._links.add(node_id, client)
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
        if (route := self._pool.route_of.get(instance_id)) is not None:
            self._dispatch(route)

    def _fail_queued(self, route: str, reason: str) -> None:
        """End every prediction queued for ``route``, with ``reason``."""
        for item in self._queue.drain(route):
            self._finish(item, Status.FAILED, reason)

    def ongoing(self) -> dict[str, int]:
        """Predictions per route that are queued or in flight here: what the autoscaler scales on."""
        counts = Counter(self._queue.counts())
        counts.update(running.item.route for running in self._running.values())
        return dict(counts)

    def has_instances(self, route: str) -> bool:
        """Whether any ready instance serves ``route``."""
        return route in self._pool.by_route

    # Queueing

    def enqueue(self, prediction_id: str, route: str, input: dict[str, Any], priority: int = 0,
                deadline_at: float | None = None, account: str = "") -> None:
        """Queue ``account``'s prediction; raises QueueFull when the route's queue is at its bound."""
        if self._queue.length(route) >= self._max_queue:
            raise QueueFull(f"the queue of {route} is full ({self._max_queue} predictions); retry later")
        self._queue.push(self._item(prediction_id, route, input, priority, deadline_at, account))
        self._dispatch(route)

    def _item(self, prediction_id: str, route: str, input: dict[str, Any], priority: int,
              deadline_at: float | None, account: str, attempt: int = 1) -> _Queued:
        """A prediction's entry, its deadline armed for its whole life."""
        item = _Queued(prediction_id, route, input, priority, next(self._seq), account, deadline_at,
                       attempt=attempt)
        if deadline_at is not None:
            delay = max(0.0, deadline_at - self._clock())
            item.deadline_timer = asyncio.get_running_loop().call_later(delay, self._deadline, prediction_id)
        return item

    def _rerun(self, item: _Queued, reason: str) -> None:
        """Its run was lost to the infrastructure: queue it to run again in its place (the caller
        dispatches), unless it may not (``_refusal``)."""
        if (end := _refusal(item, reason, self._clock(), self._not_retryable)) is not None:
            self._finish(item, *end)
        else:
            item.attempt += 1
            self._on_event(item.prediction_id, Requeued(reason, item.attempt))
            self._queue.push(item)

    # Taking over from an earlier process of this router

    def recover(self, unfinished: list[Unfinished]) -> None:
        """Take up what an earlier process of this router left unfinished; before the first table. Each
        is followed again where a node still runs it (or holds its end); once every node of the first
        table has answered, the rest are queued: to run if they had not started, else re-run."""
        self._takeover = _Takeover({u.prediction_id: u for u in unfinished})

    def _answered(self, node_id: str, held: dict[str, str]) -> None:
        """A node said what it holds of this router's predictions (``NodeData.attach``)."""
        claimed, orphans, rest = (self._takeover or _Takeover({})).answer(node_id, held, self._running)
        for found, instance_id in claimed:
            self._running[found.prediction_id] = _Running(self._item_of(found), instance_id, node_id)
            self._pool.occupy(instance_id, found)
        if orphans:
            self._links.cancel(node_id, orphans)
        if rest is None:
            return
        self._takeover = None
        for found in rest:
            if found.started:
                self._rerun(self._item_of(found), "the gateway restarted while it ran; no node still runs it")
            else:
                self._queue.push(self._item_of(found))
        for route in {found.route for found in rest}:
            self._dispatch(route)

    def _item_of(self, found: Unfinished) -> _Queued:
        return self._item(found.prediction_id, found.route, found.input, found.priority, found.deadline_at,
                          found.account, found.attempt)

    def queue_length(self, route: str) -> int:
        return self._queue.length(route)

    def _finish(self, item: _Queued, status: Status, error: str) -> None:
        """End a prediction the router holds no more (queued or running), with the router's verdict."""
        _cancel(item.deadline_timer)
        self._on_event(item.prediction_id, Finished(status, None, self._clock(), error=error))

    def footprint(self) -> dict[str, int]:
        """The sizes of what the router holds per prediction: all 0 once every prediction has ended."""
        return {**self._queue.footprint(), "running": len(self._running), "outgoing": self._links.outgoing(),
                **self._pool.footprint(), "dirty_routes": len(self._dirty_routes)}

    # Cancellation and deadlines

    def cancel(self, prediction_id: str) -> None:
        """Cancel a queued prediction at once, or ask its node to stop a running one."""
        if self._takeover is not None and self._takeover.unclaimed.pop(prediction_id, None):
            # Not found on a node yet: one that still runs it hears of the cancel as it answers.
            self._on_event(prediction_id, Finished(Status.CANCELED, None, self._clock(), error="canceled"))
            return
        item = self._queue.remove(prediction_id)
        if item is not None:
            self._finish(item, Status.CANCELED, "canceled while queued")
            return
        running = self._running.get(prediction_id)
        if running is not None and self._links.take_back(running.node_id, prediction_id):
            self._release(prediction_id)
            self._finish(running.item, Status.CANCELED, "canceled before it started")
            self._dispatch(running.item.route)
        elif running is not None:
            self._links.cancel(running.node_id, [prediction_id])

    def _deadline(self, prediction_id: str) -> None:
        """A prediction's deadline passed: abort it if queued, cancel it on its node if running."""
        item = self._queue.remove(prediction_id)
        if item is not None:
            self._finish(item, Status.ABORTED, DEADLINE_QUEUED)
            return
        running = self._running.get(prediction_id)
        if running is None or running.expired:
            return
        if self._links.take_back(running.node_id, prediction_id):  # it had not left for its node yet
            self._release(prediction_id)
            self._finish(running.item, Status.ABORTED, DEADLINE_QUEUED)
            self._dispatch(running.item.route)
            return
        running.expired = True
        self._links.cancel(running.node_id, [prediction_id])
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

    # Dispatch

    def _dispatch(self, route: str) -> None:
        queue, pool, queued = self._queue, self._pool, self._queue.lengths
        while queued.get(route):
            if (taken := next_dispatch(queue, pool, route)) is None:
                break
            item, choice = taken
            self._running[item.prediction_id] = _Running(item, choice.instance_id, choice.node_id)
            self._links.send(choice.node_id, Task(item.prediction_id, choice.instance_id, item.input))

    def _unsent(self, node_id: str, tasks: list[Task], err: Exception) -> None:
        """A submit failed. When the node was gone, its tasks never reached it: they are queued again,
        for instances on other nodes; otherwise they fail, naming the error."""
        lost = isinstance(err, NodeLost)
        if lost:
            for iid in self._pool.on_node(node_id):
                self._pool.close(iid)
        # Each once: the node's poller may have dealt with it already.
        released = [r for r in map(self._release, (t.prediction_id for t in tasks)) if r is not None]
        for running in released:
            if lost:
                self._queue.push(running.item)
            else:
                self._finish(running.item, Status.FAILED, f"could not send it to node {node_id}: {err}")
        for route in {running.item.route for running in released}:
            self._dispatch(route)

    def _release(self, prediction_id: str) -> _Running | None:
        """Free a running prediction's slot, refunding its account's charge unless its end settled it
        (``_on_task_event``); the caller ends it or queues it again."""
        running = self._running.pop(prediction_id, None)
        self._queue.refund(prediction_id)
        if running is not None:
            self._pool.vacate(running.instance_id, running.item)
            _cancel(running.give_up)
            self._dirty_routes.add(running.item.route)
        return running

    # Events from nodes

    def _events(self, events: list[TaskEvent]) -> None:
        """A node's events; then the routes whose slots they freed take their next predictions."""
        for event in events:
            self._on_task_event(event.prediction_id, event.body)
        dirty, self._dirty_routes = self._dirty_routes, set()
        for route in dirty:
            self._dispatch(route)

    def _on_task_event(self, prediction_id: str, body: TaskEventBody) -> None:
        if isinstance(body, Finished):
            self._queue.done(prediction_id, body.metrics.predict_time_s)  # its account is charged what it ran
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
        self._pool.refused(running.instance_id, body.instance_closed)
        item.rejections += body.instance_closed  # a full one is never a reason to fail: others share it
        if item.rejections >= MAX_REJECTIONS:
            self._finish(item, Status.FAILED, f"no instance would take it: {body.reason}")
        else:
            self._queue.push(item)

    def _node_lost(self, node_id: str) -> None:
        log.warning("node %s was lost", node_id)
        self._links.drop(node_id)
        for iid in self._pool.on_node(node_id):
            self._pool.close(iid)
        routes = set()
        for pid in [p for p, r in self._running.items() if r.node_id == node_id]:
            running = self._release(pid)
            routes.add(running.item.route)
            self._rerun(running.item, f"node {node_id} was lost while it ran")
        for route in routes:
            self._dispatch(route)

    async def close(self) -> None:
        await self._links.close()
        for item in self._queue.items() + [r.item for r in self._running.values()]:
            _cancel(item.deadline_timer)
        for running in self._running.values():
            _cancel(running.give_up)
        self._pool.full.keep_only(set())


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()
