"""Draining a node: every instance moves off it, finishing the predictions it runs, and the node takes
no new one. The controller owns the ``Drains`` and hands it what a drain needs of it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterable

from scheduler.fleet import Fleet
from scheduler.ports import NodeControl
from scheduler.routes import Routes
from warmfleet.domain import DrainStatus, InstanceInfo, InstanceState
from warmfleet.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.2  # how often a drain re-checks what it waits for

AskAgents = Callable[[Iterable[str], Callable[[NodeControl], Awaitable[Any]]], Awaitable[dict[str, Any]]]


class Drains:
    def __init__(self, fleet: Fleet, routes: Routes, *, remove: Callable[[InstanceInfo], Awaitable[None]],
                 ask_agents: AskAgents, wait_changed: Callable[[float], Awaitable[None]],
                 kick: Callable[[], None], clock: Callable[[], float]) -> None:
        """``remove``: take an instance out of the routing table and unload it; ``ask_agents``: ask these
        agents at once (a lost one is left out); ``wait_changed``: until the routing table changes or the
        time passes; ``kick``: wake the autoscaler."""
        self._fleet = fleet
        self._routes = routes
        self._remove = remove
        self._ask_agents = ask_agents
        self._wait_changed = wait_changed
        self._kick = kick
        self._clock = clock
        self._tasks: dict[str, asyncio.Task] = {}  # node id -> its drain (kept when done: it stays drained)

    async def drain(self, node_id: str, wait: bool) -> DrainStatus:
        """Move every instance off ``node_id`` and place nothing new there.

        The node's instances keep serving while the autoscaler, which no longer counts them, starts
        their replacements on other nodes; once every route they serve has its target of ready instances
        elsewhere, they leave the routing table and unload, each after its last prediction. So capacity
        does not dip while a replacement boots, and no prediction is lost. With ``wait``, returns when
        the node is empty; else at once. Asking again reports (or waits for) the same drain; the node
        stays drained until it leaves the cluster.
        """
        fleet = self._fleet
        if node_id not in fleet.nodes:
            raise NotFound(f"node {node_id} is not in the cluster")
        if node_id not in self._tasks:
            if not [n for n in fleet.nodes if n != node_id and n not in fleet.draining]:
                raise FailedPrecondition(f"node {node_id} is the last node that takes instances: its own "
                                         "would have nowhere to go, nor would new ones; add a node first")
            fleet.draining.add(node_id)
            self._tasks[node_id] = asyncio.create_task(self._drain(node_id), name=f"drain-{node_id}")
            self._kick()  # the replacements start now
        task = self._tasks[node_id]
        if wait:
            await asyncio.shield(task)  # a caller that gives up does not stop the drain
        return await self._status(node_id)

    def forget(self, node_id: str) -> None:
        """The node left the cluster: its drain, if any, is over."""
        self._tasks.pop(node_id, None)

    def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def _drain(self, node_id: str) -> None:
        started = self._clock()
        log.info("draining node %s: %d instance(s) to move", node_id, len(self._fleet.on(node_id)))
        while not (node_id not in self._fleet.nodes or self._replaced(node_id)):
            await self._wait_changed(DRAIN_POLL_S)  # the autoscaler's targets change without a new table
        await asyncio.gather(*(self._remove(info) for info in self._fleet.on(node_id)))
        # An unloaded instance stays on its agent until its last prediction ends.
        while (await self._ask_agents([node_id], lambda node: node.instances())).get(node_id):
            await asyncio.sleep(DRAIN_POLL_S)
        log.info("node %s drained in %.1f s", node_id, self._clock() - started)

    def _replaced(self, node_id: str) -> bool:
        """Whether the node's instances may go now: none of them is still loading, and every route they
        serve has its target of ready instances on other nodes."""
        here = self._fleet.on(node_id)
        if any(i.state == InstanceState.STARTING for i in here):
            return False
        return all(sum(i.state != InstanceState.STARTING for i in self._fleet.live(name)) >= self._target(name)
                   for name in {i.model for i in here})

    def _target(self, name: str) -> int:
        route = self._routes.get(name)
        return route.target if route else 0

    async def _status(self, node_id: str) -> DrainStatus:
        task = self._tasks.get(node_id)
        if task is None:  # the node left the cluster (during its drain or before): nothing is left on it
            return DrainStatus(node_id, 0, True)
        on_agent = (await self._ask_agents([node_id], lambda node: node.instances())).get(node_id, [])
        left = {i.id for i in self._fleet.on(node_id)} | {i.id for i in on_agent}
        return DrainStatus(node_id, len(left), task.done())
