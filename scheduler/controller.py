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
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Iterable

from scheduler.autoscaling import ScalingState, decide, scaling_config
from scheduler.placement import (
    InstanceSnapshot, NoCapacity, NodeSnapshot, Placement, PlacementRequest, estimate_memory_bytes,
    hardware_matches, place,
)
from scheduler.ports import NodeClient, NodeLost, NodeProvisioner, RoutingTable
from scheduler.route_journal import RouteJournal
from warmfleet.domain import InstanceInfo, ModelSpec, NodeInfo
from warmfleet.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable

log = logging.getLogger(__name__)

LIVE_STATES = ("starting", "idle", "processing")
NODE_INFO_REFRESH_S = 5.0
# Of a node's memory, the share instances may be booked on (the rest: CUDA context, activations, the OS).
MEMORY_FRACTION = 0.9
AUTOSCALE_INTERVAL_S = 0.5
# A router's load report counts for this long; a gateway that stopped reporting stops counting.
LOAD_REPORT_TTL_S = 3.0
MEMBERSHIP_INTERVAL_S = 1.0  # how often the controller looks for nodes that joined or left
DRAIN_POLL_S = 0.2  # how often a drain re-checks what it waits for


@dataclass(frozen=True)
class DrainStatus:
    """How far the drain of a node has come."""

    node_id: str
    instances_left: int  # on the node still: waiting for their replacements, or finishing their predictions
    done: bool  # every instance has left; the node stays, and takes no new one


class Controller:
    def __init__(self, models: list[ModelSpec], provisioner: NodeProvisioner,
                 clock: Callable[[], float] = time.monotonic,
                 autoscale_interval_s: float = AUTOSCALE_INTERVAL_S,
                 membership_interval_s: float | None = MEMBERSHIP_INTERVAL_S,
                 journal: RouteJournal | None = None) -> None:
        """``membership_interval_s``: how often to look for nodes that joined or left; None, never.
        ``journal``: where changes made through the API are kept, and laid over ``models`` here."""
        self._journal = journal
        if journal is not None:
            models = journal.apply(models)
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
        self._membership_interval_s = membership_interval_s
        self._membership: asyncio.Task | None = None
        self._drains: dict[str, asyncio.Task] = {}  # node id -> its drain (kept when done: it stays drained)
        self._removing: set[str] = set()
        self._failures: dict[str, tuple[int, str]] = {}  # model -> (loads failed in a row, last error)
        self._retry_at: dict[str, float] = {}  # model -> no new load before (backoff after failures)
        self._versions = {m.version: m for m in models}  # every version served, by id
        self._node_info: dict[str, NodeInfo] = {}  # what each agent last said it is (hardware, memory)
        self._node_info_at = float("-inf")
        self._memory_estimates: dict[str, int] = {}  # version -> bytes an instance takes
        self._measured_memory: dict[str, int] = {}  # version -> most an instance of it was measured using
        self._last_busy: dict[str, float] = {}  # route -> when it last had ongoing predictions
        self._bundles: dict[str, Any] = {}  # digest -> where a pushed bundle is (the seam's handles)
        self._tasks: set[asyncio.Task] = set()  # loads and removals under way (see _spawn)

    async def start(self) -> None:
        """Provision agents, then load every model's minimum instances; returns when they are warm."""
        for node in await self._provisioner.provision():
            self._nodes[node.node_id] = node
        if not self._nodes:
            raise RuntimeError("no node could host an agent")
        await self._refresh_node_info()
        self._node_info_at = self._clock()
        loads = []
        for spec in self._models.values():
            try:
                loads += [self._start_load(spec) for _ in range(spec.min_instances)]
            except NoCapacity as err:  # the cluster still starts; the model says why it has no instance
                log.error("%s: %s", spec.name, err)
                self._record_failure(spec.name, str(err))
        await asyncio.gather(*loads)
        self._autoscaler = asyncio.create_task(self._autoscale_loop(), name="autoscaler")
        if self._membership_interval_s is not None:
            self._membership = asyncio.create_task(self._membership_loop(), name="membership")

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
        for route, count in ongoing.items():
            if count:
                self._last_busy[route] = now
        if now - self._node_info_at >= NODE_INFO_REFRESH_S or set(self._nodes) - set(self._node_info):
            await self._refresh_node_info()
            self._node_info_at = now
        for name, spec in list(self._models.items()):
            if self._models.get(name) is not spec:
                continue  # deleted or updated during this turn; the next turn sees the new state
            target, self._scaling_states[name] = decide(
                self._scaling_configs[name], self._targets[name], ongoing[name], self._scaling_states[name], now)
            if target != self._targets[name]:
                log.info("autoscaler: %s from %d to %d instances (%d ongoing)", name, self._targets[name],
                         target, ongoing[name])
                self._targets[name] = target
            await self._reconcile(spec, target)

    def _live(self, name: str) -> list[InstanceInfo]:
        """The model's instances that count towards its target. One on a draining node does not: the
        autoscaler starts its replacement elsewhere, and the drain removes it once that is ready."""
        return [i for i in self._instances.values()
                if i.model == name and i.state in LIVE_STATES and i.id not in self._removing
                and i.node_id not in self._drains]

    async def _reconcile(self, spec: ModelSpec, target: int) -> None:
        """Bring the route to ``target`` instances of its current version. Instances of an older version
        (the route was updated) keep serving until as many of the new one are ready, then drain: a
        rolling update that never leaves the route without an instance it had."""
        live = self._live(spec.name)
        current = [i for i in live if i.version == spec.version]
        stale = [i for i in live if i.version != spec.version and i.state != "starting"]
        if len(current) < target and self._clock() >= self._retry_at.get(spec.name, 0.0):
            try:
                for _ in range(target - len(current)):
                    self._start_load(spec)
            except NoCapacity as err:  # predictions waiting for it fail with this, not wait forever
                self._record_failure(spec.name, str(err))
                await self._bump()
        ready = [i for i in current if i.state != "starting"]  # a loading instance is left to finish
        if stale and len(ready) >= target:
            for info in stale:
                self._spawn(self._remove(info), f"remove-{info.id}")
        if len(current) > target and ready:
            for info in (await self._removal_order(ready))[: len(current) - target]:
                self._spawn(self._remove(info), f"remove-{info.id}")

    async def _removal_order(self, ready: list[InstanceInfo]) -> list[InstanceInfo]:
        """Instances to remove first: the least busy, by the agents' own figures."""
        answers = await self._ask_agents({i.node_id for i in ready}, lambda node: node.instances())
        fresh = {i.id: i for per_node in answers.values() for i in per_node}
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

    def _spawn(self, work: Awaitable[None], name: str) -> asyncio.Task:
        """Run ``work`` in a task the controller keeps until it ends, and whose failure is logged (a task
        nobody holds may be collected mid-way, and its exception is lost)."""
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("controller task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self) -> None:
        for task in (self._autoscaler, self._membership, *self._drains.values()):
            if task is not None:
                task.cancel()

    def _next_instance_id(self, spec: ModelSpec) -> str:
        self._serial[spec.name] += 1
        return f"{spec.name.replace('/', '.')}-{self._serial[spec.name]}"

    def _least_loaded_node(self) -> NodeClient:
        """The node with the fewest instances, of those not draining (a node that left is already gone)."""
        counts = Counter(i.node_id for i in self._instances.values())
        open_nodes = [n for n in self._nodes.values() if n.node_id not in self._drains]
        if not open_nodes:
            raise Unavailable("no node can take a new instance: every node is draining")
        return min(open_nodes, key=lambda n: (counts[n.node_id], n.node_id))

    def _place(self, spec: ModelSpec) -> Placement:
        """Where a new instance of ``spec`` goes (``scheduler.placement.place``), over the controller's own
        accounting: each node's memory (NVML's, or the host's) against the estimates of the instances
        booked on it. A node whose figures are not known yet is placed on as if it were empty."""
        if not any(n in self._node_info for n in self._nodes):
            return Placement(self._least_loaded_node().node_id)
        hardware = spec.hardware or "any"
        booked: Counter = Counter()
        snapshots = []
        live_by_route: dict[str, list[InstanceInfo]] = {}
        for info in self._instances.values():
            if info.state in LIVE_STATES or info.state == "draining":
                booked[info.node_id] += self._memory_of(info.model)
            if info.state in LIVE_STATES and info.id not in self._removing:
                live_by_route.setdefault(info.model, []).append(info)
        for node_id in self._nodes:
            node = self._node_info.get(node_id)
            total = node.memory_total_bytes if node else 0
            if spec.hardware and (node is None or not hardware_matches(spec.hardware, node.hardware)):
                continue
            snapshots.append(NodeSnapshot(node_id, hardware, int(total * MEMORY_FRACTION) if node else 2**62,
                                          booked[node_id], node_id in self._drains))
        instances = []
        for route, infos in live_by_route.items():
            minimum = self._models[route].min_instances if route in self._models else 0
            spare = len(infos) - minimum  # only what is above the route's minimum may be evicted
            oldest_first = sorted(infos, key=lambda i: (self._last_busy.get(route, 0.0), i.id))
            for k, info in enumerate(oldest_first):
                instances.append(InstanceSnapshot(
                    info.id, info.node_id, route, self._memory_of(route),
                    info.state if info.state in ("starting", "idle", "processing") else "draining",
                    self._last_busy.get(route, 0.0), evictable=k < spare))
        return place(PlacementRequest(spec.name, hardware, self._memory_of(spec.name, spec)), snapshots,
                     instances, self._clock())

    def _memory_of(self, route: str, spec: ModelSpec | None = None) -> int:
        """What an instance of the route is booked for: what its instances were measured to use, once
        one was, else the estimate (``estimate_memory_bytes``)."""
        spec = spec or self._models.get(route)
        if spec is None:
            return 0
        if spec.version in self._measured_memory:
            return self._measured_memory[spec.version]
        if spec.version not in self._memory_estimates:
            self._memory_estimates[spec.version] = estimate_memory_bytes(spec)
        return self._memory_estimates[spec.version]

    def _start_load(self, spec: ModelSpec) -> asyncio.Task:
        """Book the new instance as starting now (so the next decision counts it), load it in a task.
        Raises NoCapacity (naming the hardware and memory) when no node can take it."""
        placement = self._place(spec)
        for victim in placement.evict:  # least recently used idle instances above their minimum
            info = self._instances[victim]
            minimum = self._models[info.model].min_instances if info.model in self._models else 0
            self._targets[info.model] = max(self._targets.get(info.model, 1) - 1, minimum)  # no reload
            log.info("evicting %s (%s) from %s to make room for %s", victim, info.model, info.node_id, spec.name)
            self._spawn(self._remove(info), f"evict-{victim}")
        node = self._nodes[placement.node_id]
        instance_id = self._next_instance_id(spec)
        self._instances[instance_id] = InstanceInfo(
            instance_id, spec.name, spec.version, node.node_id, "starting", 1)
        return self._spawn(self._complete_load(spec, node, instance_id), f"load-{instance_id}")

    async def _complete_load(self, spec: ModelSpec, node: NodeClient, instance_id: str) -> None:
        try:
            info = await node.load_instance(instance_id, spec)
        except NodeLost as err:  # the node's fault, not the model's: no backoff, the autoscaler places it again
            await self._lose_node(node.node_id, f"lost while loading {instance_id}: {err}")
            return
        except Exception as err:
            log.error("instance %s of %s failed to load on %s: %s", instance_id, spec.name, node.node_id, err)
            info = InstanceInfo(instance_id, spec.name, spec.version, node.node_id, "failed", 1)
            self._record_failure(spec.name, f"{type(err).__name__}: {err}")
        else:
            self._failures.pop(spec.name, None)
        if self._nodes.get(node.node_id) is not node:
            return  # its node left while it loaded, and took the instance with it
        self._instances[instance_id] = info
        await self._bump()

    async def _refresh_node_info(self) -> None:
        """What each agent says of its node, and what the instances that run in processes of their own
        (pushed Cog models) were measured to use: placement books that instead of the estimate."""
        nodes = list(self._nodes.values())
        answers = await asyncio.gather(*(n.info() for n in nodes), return_exceptions=True)
        self._node_info = {n.node_id: a for n, a in zip(nodes, answers) if isinstance(a, NodeInfo)}
        listed = await asyncio.gather(*(n.instances() for n in nodes), return_exceptions=True)
        measured: dict[str, int] = {}
        for infos in listed:
            for info in infos if isinstance(infos, list) else ():
                if info.memory_bytes:
                    measured[info.version] = max(measured.get(info.version, 0), info.memory_bytes)
        self._measured_memory.update(measured)

    def _record_failure(self, route: str, error: str) -> None:
        """A route could not get an instance: say why (to its waiting predictions), and back off."""
        failures = self._failures.get(route, (0, ""))[0] + 1
        self._failures[route] = (failures, error)
        self._retry_at[route] = self._clock() + min(60.0, 2.0 ** failures)

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
                                {m: err for m, (_, err) in self._failures.items()},
                                models=list(self._models.values()))

    # The desired state: routes (models and deployments) and their versions

    async def put_route(self, spec: ModelSpec, new: bool = False) -> ModelSpec:
        """Serve ``spec`` under its name: a new route, or an update of one (a new version rolls out, a new
        size is scaled to). The answer carries the release number (deployments count their updates).
        With ``new``, a name already served is refused (``AlreadyExists``): the controller is the one
        owner of the routes, so two gateways creating one name cannot both succeed."""
        config = scaling_config(spec)  # ValueError naming a bad knob, before anything changes
        previous = self._models.get(spec.name)
        if previous is not None and (new or previous.is_deployment != spec.is_deployment):
            kind = "a deployment" if previous.is_deployment else "a model"
            raise AlreadyExists(f"{spec.name!r} is taken (by {kind})")
        if spec.is_deployment:
            spec = replace(spec, release=previous.release + 1 if previous else 1)
        self._models[spec.name] = spec
        self._versions[spec.version] = spec
        if self._journal is not None:
            self._journal.put(spec)
        self._scaling_configs[spec.name] = config
        self._targets[spec.name] = config.clamp(self._targets.get(spec.name, spec.min_instances))
        self._scaling_states.setdefault(spec.name, ScalingState())
        if previous is None or previous.version != spec.version:
            self._failures.pop(spec.name, None)
            self._retry_at.pop(spec.name, None)
        await self._bump()
        self._kick.set()
        return spec

    async def delete_route(self, name: str) -> ModelSpec | None:
        """Stop serving ``name``: its instances drain and unload; predictions still queued for it fail."""
        spec = self._models.pop(name, None)
        if spec is None:
            return None
        if self._journal is not None:
            self._journal.delete(name)
        for key in (self._scaling_configs, self._targets, self._scaling_states, self._failures, self._retry_at):
            key.pop(name, None)
        for info in self._live(name):
            if info.state != "starting":
                self._spawn(self._remove(info), f"remove-{info.id}")
        await self._bump()
        return spec

    async def version(self, version_id: str) -> ModelSpec | None:
        """A version this controller has served, by id (versions are immutable)."""
        return self._versions.get(version_id)

    async def models(self) -> list[ModelSpec]:
        return list(self._models.values())

    # Pushed bundles: the controller holds what the seam stored them as, for agents to fetch

    async def put_bundle(self, digest: str, handles: Any) -> None:
        self._bundles[digest] = handles

    async def bundle(self, digest: str) -> Any:
        return self._bundles.get(digest)

    async def has_bundle(self, digest: str) -> bool:
        return digest in self._bundles

    async def nodes(self) -> list[NodeInfo]:
        return list((await self._ask_agents(list(self._nodes), lambda node: node.info())).values())

    async def instances(self) -> list[InstanceInfo]:
        """Live instance figures from the agents, plus any that are still starting or failed to load."""
        answers = await self._ask_agents(list(self._nodes), lambda node: node.instances())
        live = {i.id: i for per_node in answers.values() for i in per_node}
        return [live.get(i.id, i) for i in self._instances.values()]

    async def scaling(self) -> dict[str, int]:
        """Each model's instance target, as the autoscaler last decided it."""
        return dict(self._targets)

    # Membership: a node that joins gets its agents; a node that leaves is removed with its instances

    async def _membership_loop(self) -> None:
        while True:
            await asyncio.sleep(self._membership_interval_s)
            try:
                await self.membership_once()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad turn; the next retries
                log.exception("membership turn failed")

    async def membership_once(self) -> None:
        """Remove the nodes that left the cluster, then take in agents on the nodes that joined it."""
        for node_id in await self._provisioner.departed():
            await self._lose_node(node_id, "its node left the cluster")
        joined = [n for n in await self._provisioner.provision() if n.node_id not in self._nodes]
        for node in joined:
            self._nodes[node.node_id] = node
        if joined:
            log.info("node(s) joined: %s", ", ".join(n.node_id for n in joined))
            await self._bump()
            self._kick.set()  # a model short of instances is placed now, not at the next tick

    async def _lose_node(self, node_id: str, reason: str) -> None:
        """Forget a node that is gone. Its instances leave the routing table, so routers send it nothing
        more (each router fails what was running there when its own stream to the node breaks), and the
        autoscaler, kicked, starts as many on the nodes that remain. Idempotent."""
        node = self._nodes.pop(node_id, None)
        self._drains.pop(node_id, None)
        lost = [i for i in self._instances.values() if i.node_id == node_id]
        for info in lost:
            del self._instances[info.id]
            self._removing.discard(info.id)
        await self._provisioner.release(node_id)
        if node is None:
            return
        log.warning("node %s is gone (%s); its instances went with it: %s",
                    node_id, reason, ", ".join(i.id for i in lost) or "none")
        await self._bump()
        self._kick.set()

    async def _ask_agents(self, node_ids: Iterable[str],
                          ask: Callable[[NodeClient], Awaitable[Any]]) -> dict[str, Any]:
        """``ask`` these agents at once; answers by node id. An agent found gone is removed (see
        ``_lose_node``) and left out, so one lost node fails no caller."""
        nodes = [self._nodes[n] for n in node_ids if n in self._nodes]
        answers = await asyncio.gather(*(ask(node) for node in nodes), return_exceptions=True)
        result: dict[str, Any] = {}
        for node, answer in zip(nodes, answers):
            if isinstance(answer, NodeLost):
                await self._lose_node(node.node_id, f"it did not answer: {answer}")
            elif isinstance(answer, BaseException):
                raise answer
            else:
                result[node.node_id] = answer
        return result

    # Draining: every instance moves off a node, which then takes no new one

    async def drain_node(self, node_id: str, wait: bool = True) -> DrainStatus:
        """Move every instance off ``node_id``, finishing the predictions they run, and place nothing new
        there.

        The node's instances keep serving while the autoscaler, which no longer counts them, starts
        their replacements on other nodes; once every model they serve has its target of ready instances
        elsewhere, they leave the routing table and unload, each after its last prediction. So capacity
        does not dip while a replacement boots, and no prediction is lost. With ``wait``, returns when
        the node is empty; else at once. Asking again reports (or waits for) the same drain; the node
        stays drained until it leaves the cluster.
        """
        if node_id not in self._nodes:
            raise NotFound(f"node {node_id} is not in the cluster")
        if node_id not in self._drains:
            if not [n for n in self._nodes if n != node_id and n not in self._drains]:
                raise FailedPrecondition(f"node {node_id} is the last node that takes instances: its own "
                                         "would have nowhere to go, nor would new ones; add a node first")
            self._drains[node_id] = asyncio.create_task(self._drain(node_id), name=f"drain-{node_id}")
            self._kick.set()  # the replacements start now
        drain = self._drains[node_id]
        if wait:
            await asyncio.shield(drain)  # a caller that gives up does not stop the drain
        return await self._drain_status(node_id)

    def _on(self, node_id: str) -> list[InstanceInfo]:
        """The node's instances that are not being removed already."""
        return [i for i in self._instances.values() if i.node_id == node_id and i.id not in self._removing]

    async def _drain(self, node_id: str) -> None:
        started = self._clock()
        log.info("draining node %s: %d instance(s) to move", node_id, len(self._on(node_id)))
        await self._until(lambda: node_id not in self._nodes or self._replaced(node_id))
        await asyncio.gather(*(self._remove(info) for info in self._on(node_id)))
        # An unloaded instance stays on its agent until its last prediction ends.
        while (await self._ask_agents([node_id], lambda node: node.instances())).get(node_id):
            await asyncio.sleep(DRAIN_POLL_S)
        log.info("node %s drained in %.1f s", node_id, self._clock() - started)

    def _replaced(self, node_id: str) -> bool:
        """Whether the node's instances may go now: none of them is still loading, and every model they
        serve has its target of ready instances on other nodes."""
        here = self._on(node_id)
        if any(i.state == "starting" for i in here):
            return False
        return all(sum(i.state != "starting" for i in self._live(model)) >= self._targets.get(model, 0)
                   for model in {i.model for i in here})

    async def _until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds: checked at every change of the routing table, and every
        ``DRAIN_POLL_S`` (the autoscaler's targets change without one)."""
        while not predicate():
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), DRAIN_POLL_S)
                except TimeoutError:
                    pass

    async def _drain_status(self, node_id: str) -> DrainStatus:
        drain = self._drains.get(node_id)
        if drain is None:  # the node left the cluster (during its drain or before): nothing is left on it
            return DrainStatus(node_id, 0, True)
        on_agent = (await self._ask_agents([node_id], lambda node: node.instances())).get(node_id, [])
        left = {i.id for i in self._on(node_id)} | {i.id for i in on_agent}
        return DrainStatus(node_id, len(left), drain.done())
