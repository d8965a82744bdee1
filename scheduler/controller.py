"""The controller: the cluster's control plane. It knows the models to serve, the node agents and the
instances on them, places instances, and publishes the routing table the gateways dispatch with.

It runs as one named, detached Ray actor (see ``scheduler.ray_adapter``); this class knows nothing of Ray.
No prediction payload passes through it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from scheduler.ports import NodeClient, NodeProvisioner, RoutingTable
from warmfleet.domain import InstanceInfo, ModelSpec, NodeInfo

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, models: list[ModelSpec], provisioner: NodeProvisioner) -> None:
        self._models = {m.name: m for m in models}
        self._provisioner = provisioner
        self._nodes: dict[str, NodeClient] = {}
        self._instances: dict[str, InstanceInfo] = {}
        self._revision = 0
        self._changed = asyncio.Condition()
        self._serial = Counter()

    async def start(self) -> None:
        """Provision agents, then load every model's minimum instances; returns when they are warm."""
        for node in await self._provisioner.provision():
            self._nodes[node.node_id] = node
        if not self._nodes:
            raise RuntimeError("no node could host an agent")
        await asyncio.gather(*(self._load(spec) for spec in self._models.values()
                               for _ in range(spec.min_instances)))

    def _next_instance_id(self, spec: ModelSpec) -> str:
        self._serial[spec.name] += 1
        return f"{spec.name.replace('/', '.')}-{self._serial[spec.name]}"

    def _least_loaded_node(self) -> NodeClient:
        counts = Counter(i.node_id for i in self._instances.values())
        return min(self._nodes.values(), key=lambda n: (counts[n.node_id], n.node_id))

    async def _load(self, spec: ModelSpec) -> None:
        node = self._least_loaded_node()
        instance_id = self._next_instance_id(spec)
        self._instances[instance_id] = InstanceInfo(
            instance_id, spec.name, spec.version, node.node_id, "starting", 1)
        try:
            info = await node.load_instance(instance_id, spec)
        except Exception as err:
            log.error("instance %s of %s failed to load on %s: %s", instance_id, spec.name, node.node_id, err)
            info = InstanceInfo(instance_id, spec.name, spec.version, node.node_id, "failed", 1)
        self._instances[instance_id] = info
        await self._bump()

    async def _bump(self) -> None:
        async with self._changed:
            self._revision += 1
            self._changed.notify_all()

    async def routing_table(self, since_revision: int, max_wait_s: float) -> RoutingTable:
        """The routing table, once its revision is newer than ``since_revision`` (or ``max_wait_s`` passed)."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._revision > since_revision), max_wait_s)
            except TimeoutError:
                pass
            return RoutingTable(self._revision, list(self._instances.values()), dict(self._nodes))

    async def models(self) -> list[ModelSpec]:
        return list(self._models.values())

    async def nodes(self) -> list[NodeInfo]:
        return list(await asyncio.gather(*(n.info() for n in self._nodes.values())))

    async def instances(self) -> list[InstanceInfo]:
        """Live instance figures from the agents, plus any that are still starting or failed to load."""
        live = {i.id: i for per_node in await asyncio.gather(*(n.instances() for n in self._nodes.values()))
                for i in per_node}
        return [live.get(i.id, i) for i in self._instances.values()]

    async def ready(self) -> bool:
        return True
