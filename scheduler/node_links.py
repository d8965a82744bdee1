"""The router's link to each node's data plane (``NodeData``): a poller that opens the router's session
with the node and brings its events back, and a sender that batches the tasks dispatched to it.

The links are plumbing: what they learn goes to the router's callbacks (what a node holds as its session
opens, its events, its loss, tasks that could not be sent), and the router decides what it means.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from scheduler.ports import NodeData, NodeLost
from warmfleet.domain import Task, TaskEvent

log = logging.getLogger(__name__)

POLL_WAIT_S = 5.0


class NodeLinks:
    """One poller and at most one sender per node, for router ``router_id``.

    ``attached(node_id, held)``: the node's session opened and it holds ``held`` of the router's
    predictions (``NodeData.attach``; {} when it could not say). ``events(events)``: a poll's events.
    ``lost(node_id)``: the node is gone; its link is dropped first. ``unsent(node_id, tasks, error)``:
    a submit failed (``NodeLost`` when the node was gone before it)."""

    def __init__(self, router_id: str, attached: Callable[[str, dict[str, str]], None],
                 events: Callable[[list[TaskEvent]], None], lost: Callable[[str], None],
                 unsent: Callable[[str, list[Task], Exception], None]) -> None:
        self._router_id = router_id
        self._attached, self._events, self._lost, self._unsent = attached, events, lost, unsent
        self.nodes: dict[str, NodeData] = {}
        self._pollers: dict[str, asyncio.Task] = {}
        self._outgoing: dict[str, list[Task]] = {}
        self._senders: dict[str, asyncio.Task] = {}

    def add(self, node_id: str, node: NodeData) -> None:
        """Link a node (once: a node already linked keeps its client and its open stream)."""
        if node_id in self.nodes:
            return
        self.nodes[node_id] = node
        if node_id not in self._pollers:
            self._pollers[node_id] = asyncio.create_task(self._poll(node), name=f"poll-{node_id}")

    def replaced(self, node_id: str, node: NodeData) -> bool:
        """Whether ``node`` is another agent than the one linked under ``node_id`` (a dead one's
        replacement, listening elsewhere): the old one is then to be taken for lost (``drop``)."""
        old = self.nodes.get(node_id)
        return old is not None and old.data_address != node.data_address

    def drop(self, node_id: str) -> None:
        """Unlink a node; its poller stops (unless it is the caller: it returns by itself)."""
        self.nodes.pop(node_id, None)
        poller = self._pollers.pop(node_id, None)
        if poller is not None and poller is not asyncio.current_task():
            poller.cancel()

    # Sending

    def send(self, node_id: str, task: Task) -> None:
        """Send ``task`` with whatever else is dispatched to the node before its sender's next submit."""
        self._outgoing.setdefault(node_id, []).append(task)
        if node_id not in self._senders:
            self._senders[node_id] = asyncio.create_task(self._send_loop(node_id))

    def take_back(self, node_id: str, prediction_id: str) -> bool:
        """Remove a task that has not left for its node yet; whether it was still here."""
        tasks = self._outgoing.get(node_id, [])
        for i, task in enumerate(tasks):
            if task.prediction_id == prediction_id:
                del tasks[i]
                return True
        return False

    def cancel(self, node_id: str, prediction_ids: list[str]) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            asyncio.create_task(_unless_lost(node.cancel(prediction_ids)))

    def outgoing(self) -> int:
        return sum(map(len, self._outgoing.values()))

    async def _send_loop(self, node_id: str) -> None:
        """Send a node its tasks, one submit at a time: what queues up while a submit is on its way goes
        in the next one, so the number of data plane messages per task falls as the load rises. Starts on
        the next turn of the loop, so everything dispatched in this turn shares the first submit."""
        try:
            while tasks := self._outgoing.pop(node_id, None):
                node = self.nodes.get(node_id)
                try:
                    if node is None:
                        raise NodeLost(node_id)
                    await node.submit(self._router_id, tasks)
                except Exception as err:  # noqa: BLE001 - the router decides what becomes of them
                    if not isinstance(err, NodeLost):
                        log.exception("submit to node %s failed", node_id)
                    self._unsent(node_id, tasks, err)
        finally:
            del self._senders[node_id]

    # Polling

    async def _poll(self, node: NodeData) -> None:
        try:
            held = await node.attach(self._router_id)
        except NodeLost:  # lost first: what the answer queues must not go to its instances
            self.drop(node.node_id)
            self._lost(node.node_id)
            self._attached(node.node_id, {})
            return
        except Exception:  # noqa: BLE001 - the first poll opens the session as well
            log.exception("opening the session with node %s failed", node.node_id)
            held = {}
        self._attached(node.node_id, held)
        while True:
            try:
                events = await node.poll(self._router_id, POLL_WAIT_S)
            except NodeLost:
                self.drop(node.node_id)
                self._lost(node.node_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a transient transport error: log it, keep the node
                log.exception("polling node %s failed", node.node_id)
                await asyncio.sleep(0.5)
                continue
            self._events(events)

    async def close(self) -> None:
        tasks = list(self._pollers.values()) + list(self._senders.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pollers.clear()


async def _unless_lost(call: Awaitable[None]) -> None:
    try:
        await call
    except NodeLost:
        pass  # the node's poller notices too, and the router deals with what ran there
