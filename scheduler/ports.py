"""The interfaces the router and controller use to reach node agents and each other, without naming Ray.

A node agent has two ports: ``NodeControl`` for the controller (instances in and out, the node's facts)
and ``NodeData`` for the router (tasks, cancellations, events).

``scheduler.ray_adapter`` implements them over Ray actors; tests implement them with fakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from warmfleet.domain import DrainStatus, InstanceInfo, RouteSpec, NodeInfo, Task, TaskEvent


class NodeLost(Exception):
    """The node agent is gone (its process or machine died, or it was removed)."""


class NodeControl(Protocol):
    """A node agent as the controller uses it: loading, unloading and listing instances, and the node's
    facts. These are control calls (Ray's, in ``scheduler.ray_adapter``); no prediction passes here."""

    node_id: str

    async def load_instance(self, instance_id: str, spec: RouteSpec) -> InstanceInfo: ...

    async def unload_instance(self, instance_id: str) -> None: ...

    async def instances(self) -> list[InstanceInfo]: ...

    async def info(self) -> NodeInfo: ...


class NodeData(Protocol):
    """A node agent as the router uses it: the data plane (``warmfleet.dataplane``). Tasks go out in
    batches, cancellations by prediction id, and the events of a router's tasks come back by ``poll``.

    ``data_address``: where its data plane listens. An agent that replaced a dead one on the same node
    has the same ``node_id`` and another address: the router takes it for a new agent."""

    node_id: str
    data_address: str

    async def attach(self, router_id: str) -> dict[str, str]:
        """Open ``router_id``'s session with the agent (the router's first call) and say what the agent
        holds of that router's predictions: prediction id -> the instance running it, or "" for one that
        ended and whose events are still to come. Empty but for a router that restarted (its earlier
        process's predictions). Raises ``NodeLost`` when the agent cannot be reached."""
        ...

    async def submit(self, router_id: str, tasks: list[Task]) -> None: ...

    async def cancel(self, prediction_ids: list[str]) -> None: ...

    async def poll(self, router_id: str, max_wait_s: float) -> list[TaskEvent]:
        """The events for ``router_id``'s tasks since its last poll, waiting up to ``max_wait_s`` for
        the first; raises ``NodeLost`` once the agent is gone."""
        ...


class NodeHandle(NodeControl, NodeData, Protocol):
    """A node agent with both ports: what the provisioner gives the controller, and what the routing
    table carries to the routers (each uses its own port of it)."""


@dataclass
class RoutingTable:
    """What the router may dispatch to: ready instances and the nodes hosting them.

    ``revision`` grows with every change, so a router can ask only for newer tables.
    """

    revision: int
    instances: list[InstanceInfo] = field(default_factory=list)
    # The data plane of every node in the cluster, by node id: what the router submits to and polls.
    nodes: dict[str, NodeData] = field(default_factory=dict)
    # Models whose last instance load failed, with the error: a prediction waiting for one of them with
    # no instance to go to fails with that reason instead of waiting for a boot that is not coming.
    load_failures: dict[str, str] = field(default_factory=dict)
    # Every route (model or deployment) served, when the controller sends them: the gateway's catalog
    # follows it, and predictions still queued for a route that is gone fail.
    models: list[RouteSpec] | None = None


class ControllerClient(Protocol):
    """A handle on the controller, as the gateway uses it."""

    async def start(self) -> None:
        """Start the controller (agents, instances, its turns): by the gateway that created it; again is
        harmless. A controller that restarted starts itself."""

    async def shutdown(self) -> None:
        """Stop the agents and the controller for good: by the gateway that created it, at its end."""

    def kill(self) -> None:
        """Stop the controller alone; its agents keep serving, and a new controller takes them in."""

    async def models(self) -> list[RouteSpec]: ...

    async def routing_table(self, since_revision: int, max_wait_s: float) -> RoutingTable: ...

    async def nodes(self) -> list[NodeInfo]: ...

    async def instances(self) -> list[InstanceInfo]: ...

    async def scaling(self) -> dict[str, int]:
        """Each model's instance target, as the autoscaler last decided it."""

    async def report_load(self, router_id: str, ongoing: dict[str, int]) -> None: ...

    async def put_route(self, spec: RouteSpec, new: bool = False) -> RouteSpec:
        """Serve ``spec``; with ``new``, refuse a name already served (``AlreadyExists``)."""

    async def delete_route(self, name: str) -> RouteSpec | None: ...

    async def version(self, version_id: str) -> RouteSpec | None: ...

    async def drain_node(self, node_id: str, wait: bool = True) -> DrainStatus: ...

    async def publish_bundle(self, digest: str, path: Path) -> None:
        """Make a pushed bundle (the file at ``path``) fetchable by every agent of the cluster."""


class NodeProvisioner(Protocol):
    """Starts node agents where the cluster has room for them, and says when their nodes leave.

    The controller calls ``provision`` and ``departed`` every membership turn, so both are cheap when
    nothing changed.
    """

    async def provision(self) -> list[NodeHandle]:
        """Agents for every node (one per GPU, or one per host without one) not yet provisioned."""
        ...

    async def departed(self) -> set[str]:
        """The ids of provisioned agents whose node has left the cluster (until ``release``d)."""
        ...

    async def release(self, node_id: str) -> None:
        """Let go of an agent that is gone or given up on: stop it if it still runs, and forget it, so a
        later ``provision`` may start a new one on its node if that node is still in the cluster."""
        ...
