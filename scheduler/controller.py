"""The controller: the cluster's control plane. It knows the models to serve, the node agents and the
instances on them, places instances, and publishes the routing table the gateways dispatch with.

It runs as one named, detached Ray actor (see ``scheduler.ray_adapter``); this class knows nothing of Ray.
No prediction payload passes through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import replace
from typing import Callable

from scheduler.autoscaling import AutoscalingConfig, ScalingState, decide
from scheduler.ports import NodeClient, NodeProvisioner, RoutingTable
from warmfleet.domain import InstanceInfo, ModelSpec, NodeInfo

log = logging.getLogger(__name__)

LIVE_STATES = ("starting", "idle", "processing")
AUTOSCALE_INTERVAL_S = 0.5
# A router's load report counts for this long; a gateway that stopped reporting stops counting.
LOAD_REPORT_TTL_S = 3.0


def scaling_config(spec: ModelSpec) -> AutoscalingConfig:
    """The autoscaler's settings for a model: its min and max instances and its other knobs."""
    maximum = spec.max_instances if spec.max_instances is not None else max(1, spec.min_instances)
    return AutoscalingConfig(min_instances=spec.min_instances, max_instances=maximum, **spec.autoscaling)


class Controller:
    def __init__(self, models: list[ModelSpec], provisioner: NodeProvisioner,
                 clock: Callable[[], float] = time.monotonic,
                 autoscale_interval_s: float = AUTOSCALE_INTERVAL_S) -> None:
        self._models = {m.name: m for m in models}
        self._scaling_configs = {m.name: scaling_config(m) for m in models}  # refuses bad knobs at once
        self._provisioner = provisioner
        self._clock = clock
        self._interval_s = autoscale_interval_s
        self._nodes: dict[str, NodeClient] = {}
        self._instances: dict[str, InstanceInfo] = {}
        self._revision = 0
        self._changed = asyncio.Condition()
        self._serial = Counter()
        self._targets = {m.name: m.min_instances for m in models}  # the autoscaler's current decisions
        self._scaling_states = {m.name: ScalingState() for m in models}
        self._loads: dict[str, tuple[float, dict[str, int]]] = {}  # router id -> (reported at, ongoing)
        self._kick = asyncio.Event()
        self._autoscaler: asyncio.Task | None = None
        self._removing: set[str] = set()
        self._failures: dict[str, tuple[int, str]] = {}  # model -> (loads failed in a row, last error)
        self._retry_at: dict[str, float] = {}  # model -> no new load before (backoff after failures)

    async def start(self) -> None:
        """Provision agents, then load every model's minimum instances; returns when they are warm."""
        for node in await self._provisioner.provision():
            self._nodes[node.node_id] = node
        if not self._nodes:
            raise RuntimeError("no node could host an agent")
        await asyncio.gather(*(self._load(spec) for spec in self._models.values()
                               for _ in range(spec.min_instances)))
        self._autoscaler = asyncio.create_task(self._autoscale_loop(), name="autoscaler")

    # Autoscaling

    async def report_load(self, router_id: str, ongoing: dict[str, int]) -> None:
        """A router's ongoing predictions (queued + in flight) per model. A model with load and no
        instance is scaled from zero at once, not at the next tick."""
        self._loads[router_id] = (self._clock(), dict(ongoing))
        if any(n and self._targets.get(m) == 0 for m, n in ongoing.items()):
            self._kick.set()

    def _ongoing(self, now: float) -> Counter:
        total: Counter = Counter()
        for router_id, (at, loads) in list(self._loads.items()):
            if now - at > LOAD_REPORT_TTL_S:
                del self._loads[router_id]
                continue
            total.update(loads)
        return total

    async def _autoscale_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), self._interval_s)
            except TimeoutError:
                pass
            self._kick.clear()
            try:
                await self.autoscale_once()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad turn; the next retries
                log.exception("autoscaling turn failed")

    async def autoscale_once(self) -> None:
        """One autoscaling decision per model, then instances loaded or removed to match."""
        now = self._clock()
        ongoing = self._ongoing(now)
        for name, spec in self._models.items():
            target, self._scaling_states[name] = decide(
                self._scaling_configs[name], self._targets[name], ongoing[name], self._scaling_states[name], now)
            if target != self._targets[name]:
                log.info("autoscaler: %s from %d to %d instances (%d ongoing)", name, self._targets[name],
                         target, ongoing[name])
                self._targets[name] = target
            await self._reconcile(spec, target)

    def _live(self, name: str) -> list[InstanceInfo]:
        return [i for i in self._instances.values()
                if i.model == name and i.state in LIVE_STATES and i.id not in self._removing]

    async def _reconcile(self, spec: ModelSpec, target: int) -> None:
        live = self._live(spec.name)
        if len(live) < target and self._clock() >= self._retry_at.get(spec.name, 0.0):
            for _ in range(target - len(live)):
                self._start_load(spec)
        ready = [i for i in live if i.state != "starting"]  # a loading instance is left to finish
        if len(live) > target and ready:
            for info in (await self._removal_order(ready))[: len(live) - target]:
                asyncio.create_task(self._remove(info), name=f"remove-{info.id}")

    async def _removal_order(self, ready: list[InstanceInfo]) -> list[InstanceInfo]:
        """Instances to remove first: the least busy, by the agents' own figures."""
        nodes = {i.node_id for i in ready}
        fresh = {i.id: i for per_node in await asyncio.gather(*(self._nodes[n].instances() for n in nodes))
                 for i in per_node}
        return sorted(ready, key=lambda i: (fresh.get(i.id, i).in_flight, i.id))

    async def _remove(self, info: InstanceInfo) -> None:
        """Take the instance out of the routing table, let its work finish, unload it."""
        self._removing.add(info.id)
        self._instances[info.id] = replace(info, state="draining")
        await self._bump()
        try:
            await self._nodes[info.node_id].unload_instance(info.id)
        except Exception as err:  # noqa: BLE001 - a node that is gone took the instance with it
            log.warning("unloading %s on %s failed: %s", info.id, info.node_id, err)
        finally:
            self._instances.pop(info.id, None)
            self._removing.discard(info.id)
            await self._bump()

    async def stop(self) -> None:
        if self._autoscaler is not None:
            self._autoscaler.cancel()

    def _next_instance_id(self, spec: ModelSpec) -> str:
        self._serial[spec.name] += 1
        return f"{spec.name.replace('/', '.')}-{self._serial[spec.name]}"

    def _least_loaded_node(self) -> NodeClient:
        counts = Counter(i.node_id for i in self._instances.values())
        return min(self._nodes.values(), key=lambda n: (counts[n.node_id], n.node_id))

    async def _load(self, spec: ModelSpec) -> None:
        await self._start_load(spec)

    def _start_load(self, spec: ModelSpec) -> asyncio.Task:
        """Book the new instance as starting now (so the next decision counts it), load it in a task."""
        node = self._least_loaded_node()
        instance_id = self._next_instance_id(spec)
        self._instances[instance_id] = InstanceInfo(
            instance_id, spec.name, spec.version, node.node_id, "starting", 1)
        return asyncio.create_task(self._complete_load(spec, node, instance_id), name=f"load-{instance_id}")

    async def _complete_load(self, spec: ModelSpec, node: NodeClient, instance_id: str) -> None:
        try:
            info = await node.load_instance(instance_id, spec)
        except Exception as err:
            log.error("instance %s of %s failed to load on %s: %s", instance_id, spec.name, node.node_id, err)
            info = InstanceInfo(instance_id, spec.name, spec.version, node.node_id, "failed", 1)
            self._failures[spec.name] = (self._failures.get(spec.name, (0, ""))[0] + 1,
                                         f"{type(err).__name__}: {err}")
            self._retry_at[spec.name] = self._clock() + min(60.0, 2.0 ** self._failures[spec.name][0])
        else:
            self._failures.pop(spec.name, None)
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
            return RoutingTable(self._revision, list(self._instances.values()), dict(self._nodes),
                                {m: err for m, (_, err) in self._failures.items()})

    async def models(self) -> list[ModelSpec]:
        return list(self._models.values())

    async def nodes(self) -> list[NodeInfo]:
        return list(await asyncio.gather(*(n.info() for n in self._nodes.values())))

    async def instances(self) -> list[InstanceInfo]:
        """Live instance figures from the agents, plus any that are still starting or failed to load."""
        live = {i.id: i for per_node in await asyncio.gather(*(n.instances() for n in self._nodes.values()))
                for i in per_node}
        return [live.get(i.id, i) for i in self._instances.values()]

    async def scaling(self) -> dict[str, int]:
        """Each model's instance target, as the autoscaler last decided it."""
        return dict(self._targets)

    async def ready(self) -> bool:
        return True
