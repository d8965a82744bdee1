"""The actual state: the node agents, the instances the controller booked on them, and what each node
said of itself. The controller changes it; ``place`` turns it into ``scheduler.placement``'s snapshots.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

from scheduler.placement import (
    InstanceSnapshot, MemoryBook, NodeSnapshot, Placement, PlacementRequest, hardware_matches, place,
)
from scheduler.ports import NodeHandle
from scheduler.routes import Routes
from warmfleet.domain import InstanceInfo, InstanceState, RouteSpec, NodeInfo
from warmfleet.errors import Unavailable

# The states of an instance that counts towards its route's target.
LIVE_STATES = frozenset({InstanceState.STARTING, InstanceState.IDLE, InstanceState.PROCESSING})
# Of a node's memory, the share instances may be booked on (the rest: CUDA context, activations, the OS).
MEMORY_FRACTION = 0.9
UNKNOWN_NODE_MEMORY = 2**62  # a node whose figures are not known yet is placed on as if it were empty


class Fleet:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeHandle] = {}
        self.instances: dict[str, InstanceInfo] = {}
        self.removing: set[str] = set()  # instances on their way out (out of the routing table)
        self.draining: set[str] = set()  # nodes that take no new instance
        self.node_info: dict[str, NodeInfo] = {}  # what each agent last said it is (hardware, memory)
        self.memory = MemoryBook()
        self._serial: Counter = Counter()

    def live(self, route: str) -> list[InstanceInfo]:
        """The route's instances that count towards its target. One on a draining node does not: the
        autoscaler starts its replacement elsewhere, and the drain removes it once that is ready."""
        return [i for i in self.instances.values()
                if i.model == route and i.state in LIVE_STATES and i.id not in self.removing
                and i.node_id not in self.draining]

    def on(self, node_id: str) -> list[InstanceInfo]:
        """The node's instances that are not being removed already."""
        return [i for i in self.instances.values() if i.node_id == node_id and i.id not in self.removing]

    def book(self, spec: RouteSpec, node_id: str) -> InstanceInfo:
        """A new instance of ``spec`` on the node, booked as starting (so the next decision counts it)."""
        self._serial[spec.name] += 1
        instance_id = f"{spec.name.replace('/', '.')}-{self._serial[spec.name]}"
        info = self.instances[instance_id] = InstanceInfo(
            instance_id, spec.name, spec.version, node_id, InstanceState.STARTING, 1)
        return info

    def adopt(self, info: InstanceInfo) -> None:
        """Book an instance an agent already runs (found by a controller that restarted); ids booked
        later do not reuse its serial."""
        self.instances[info.id] = info
        serial = info.id.rpartition("-")[2]
        if serial.isdigit():
            self._serial[info.model] = max(self._serial[info.model], int(serial))

    def mark_removing(self, info: InstanceInfo) -> None:
        self.removing.add(info.id)
        self.instances[info.id] = replace(info, state=InstanceState.DRAINING)

    def removed(self, instance_id: str) -> None:
        self.instances.pop(instance_id, None)
        self.removing.discard(instance_id)

    def forget_node(self, node_id: str) -> tuple[NodeHandle | None, list[InstanceInfo]]:
        """Drop a node and the instances booked on it; returns its handle (None if it was not known) and
        those instances."""
        node = self.nodes.pop(node_id, None)
        self.draining.discard(node_id)
        lost = [i for i in self.instances.values() if i.node_id == node_id]
        for info in lost:
            self.removed(info.id)
        return node, lost

    async def refresh_node_info(self) -> None:
        """What each agent says of its node, and what the instances that run in processes of their own
        (pushed Cog models) were measured to use: placement books that instead of the estimate. An agent
        that does not answer keeps no figures (it is placed on as if unknown)."""
        nodes = list(self.nodes.values())
        answers = await asyncio.gather(*(n.info() for n in nodes), return_exceptions=True)
        self.node_info = {n.node_id: a for n, a in zip(nodes, answers) if isinstance(a, NodeInfo)}
        listed = await asyncio.gather(*(n.instances() for n in nodes), return_exceptions=True)
        self.memory.measured(i for infos in listed if isinstance(infos, list) for i in infos)

    def place(self, spec: RouteSpec, routes: Routes, now: float) -> Placement:
        """Where a new instance of ``spec`` goes (``scheduler.placement.place``), over the controller's own
        accounting: each node's memory (NVML's, or the host's) against what the instances booked on it are
        booked for. Raises NoCapacity naming the hardware and memory when no node can take it."""
        if not any(n in self.node_info for n in self.nodes):
            return Placement(self._least_loaded_node().node_id)
        hardware = spec.hardware or "any"
        booked: Counter = Counter()
        live_by_route: dict[str, list[InstanceInfo]] = {}
        for info in self.instances.values():
            if info.state in LIVE_STATES or info.state == InstanceState.DRAINING:
                booked[info.node_id] += self._memory_of(info.model, routes)
            if info.state in LIVE_STATES and info.id not in self.removing:
                live_by_route.setdefault(info.model, []).append(info)
        nodes = [self._snapshot(node_id, spec.hardware, hardware, booked[node_id]) for node_id in self.nodes]
        instances = [snapshot for name, infos in live_by_route.items()
                     for snapshot in self._instance_snapshots(name, infos, routes)]
        request = PlacementRequest(spec.name, hardware, self.memory.of(spec))
        return place(request, [n for n in nodes if n is not None], instances, now)

    def _snapshot(self, node_id: str, wanted: str | None, hardware: str, booked: int) -> NodeSnapshot | None:
        """The node as placement sees it; None for one that cannot host ``wanted`` hardware (or whose
        hardware is not known yet, when the route asks for some)."""
        node = self.node_info.get(node_id)
        if wanted and (node is None or not hardware_matches(wanted, node.hardware)):
            return None
        total = int(node.memory_total_bytes * MEMORY_FRACTION) if node else UNKNOWN_NODE_MEMORY
        return NodeSnapshot(node_id, hardware, total, booked, node_id in self.draining)

    def _instance_snapshots(self, name: str, infos: list[InstanceInfo], routes: Routes) -> list[InstanceSnapshot]:
        """Only what is above the route's minimum may be evicted: its least recently used first."""
        route = routes.get(name)
        last_busy = route.last_busy if route else 0.0
        spare = len(infos) - routes.minimum(name)
        oldest_first = sorted(infos, key=lambda i: i.id)
        return [InstanceSnapshot(info.id, info.node_id, name, self._memory_of(name, routes), info.state,
                                 last_busy, evictable=k < spare)
                for k, info in enumerate(oldest_first)]

    def _memory_of(self, name: str, routes: Routes) -> int:
        route = routes.get(name)
        return self.memory.of(route.spec if route else None)

    def _least_loaded_node(self) -> NodeHandle:
        """The node with the fewest instances, of those not draining (a node that left is already gone)."""
        counts = Counter(i.node_id for i in self.instances.values())
        open_nodes = [n for n in self.nodes.values() if n.node_id not in self.draining]
        if not open_nodes:
            raise Unavailable("no node can take a new instance: every node is draining")
        return min(open_nodes, key=lambda n: (counts[n.node_id], n.node_id))
