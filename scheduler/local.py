"""In-process implementations of the scheduler's ports: agents called directly, without Ray.

``warmfleet up --no-ray`` is not a thing; these exist so that the gateway, router and controller are
exercised end to end in fast unit tests, with real agents and real runners but no actor transport.
"""

from __future__ import annotations

from node.agent import NodeAgent
from warmfleet.domain import InstanceInfo, ModelSpec, NodeInfo, Task, TaskEvent


class LocalNodeClient:
    """A ``NodeClient`` over a ``NodeAgent`` in this process."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self.node_id = agent.node_id

    async def submit(self, router_id: str, tasks: list[Task]) -> None:
        await self.agent.submit(router_id, tasks)

    async def cancel(self, prediction_ids: list[str]) -> None:
        await self.agent.cancel(prediction_ids)

    async def poll(self, router_id: str, max_wait_s: float) -> list[TaskEvent]:
        return await self.agent.poll(router_id, max_wait_s)

    async def load_instance(self, instance_id: str, spec: ModelSpec) -> InstanceInfo:
        return await self.agent.load_instance(instance_id, spec)

    async def unload_instance(self, instance_id: str) -> None:
        await self.agent.unload_instance(instance_id)

    async def instances(self) -> list[InstanceInfo]:
        return await self.agent.instances()

    async def info(self) -> NodeInfo:
        return await self.agent.info()


class LocalProvisioner:
    """Provisions ``count`` in-process CPU agents."""

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self.clients: list[LocalNodeClient] = []

    async def provision(self) -> list[LocalNodeClient]:
        if not self.clients:
            self.clients = [LocalNodeClient(NodeAgent(f"local-{i}")) for i in range(self.count)]
        return list(self.clients)
