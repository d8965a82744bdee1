"""The controller: the cluster's control plane. It knows the routes to serve, the node agents and the
instances on them, places instances, and publishes the routing table the gateways dispatch with.

It runs as one named, detached Ray actor (see ``scheduler.ray_adapter``); this class knows nothing of Ray.
No prediction payload passes through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any, Awaitable, Callable, Iterable

from scheduler.autoscaling import LoadReports, decide
from scheduler.drain import Drains
from scheduler.fleet import LIVE_STATES, Fleet
from scheduler.placement import NoCapacity
from scheduler.ports import NodeControl, NodeLost, NodeProvisioner, RoutingTable
from scheduler.route_journal import RouteJournal
from scheduler.routes import Route, Routes
from warmfleet.domain import DrainStatus, InstanceInfo, InstanceState, RouteSpec, NodeInfo
from warmfleet.tasks import Tasks, repeat, wait_notified

log = logging.getLogger(__name__)

NODE_INFO_REFRESH_S = 5.0
AUTOSCALE_INTERVAL_S = 0.5
# A router's load report counts for this long; a gateway that stopped reporting stops counting.
LOAD_REPORT_TTL_S = 3.0
MEMBERSHIP_INTERVAL_S = 1.0  # how often the controller looks for nodes that joined or left


class Controller:
    def __init__(self, models: list[RouteSpec], provisioner: NodeProvisioner,
                 clock: Callable[[], float] = time.monotonic,
                 autoscale_interval_s: float = AUTOSCALE_INTERVAL_S,
                 membership_interval_s: float | None = MEMBERSHIP_INTERVAL_S,
                 journal: RouteJournal | None = None) -> None:
        """``membership_interval_s``: how often to look for nodes that joined or left; None, never.
        ``journal``: where changes made through the API are kept, and laid over ``models`` here."""
        self._routes = Routes(models, journal)  # refuses bad knobs at once
        self._fleet = Fleet()
        self._provisioner = provisioner
        self._clock = clock
        self._interval_s = autoscale_interval_s
        self._membership_interval_s = membership_interval_s
        # Revisions start at the wall clock's milliseconds, so a restarted controller's tables are newer
        # than any its previous life sent (routers take only newer ones).
        self._revision = time.time_ns() // 1_000_000
        self._started: asyncio.Future | None = None
        self._changed = asyncio.Condition()
        self._loads = LoadReports(LOAD_REPORT_TTL_S)
        self._kick = asyncio.Event()
        self._drains = Drains(self._fleet, self._routes, remove=self._remove, ask_agents=self._ask_agents,
                              wait_changed=partial(wait_notified, self._changed), kick=self._kick.set, clock=clock)
        self._node_info_at = float("-inf")
        self._tasks = Tasks("controller")  # its loops, and the loads and removals under way

    async def start(self) -> None:
        """Provision agents, take in the instances they already run (a controller that restarted finds
        its agents, which outlive it, still serving), then load what each route lacks of its minimum;
        returns when those are warm. Idempotent: a second call waits for the first."""
        if self._started is None or (self._started.done() and self._started.exception() is not None):
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        for node in await self._provisioner.provision():
            self._fleet.nodes[node.node_id] = node
        if not self._fleet.nodes:
            raise RuntimeError("no node could host an agent")
        await self._fleet.refresh_node_info()
        self._node_info_at = self._clock()
        await self._adopt()
        await self._bump()  # routers that took this life's first (empty) table learn of what it found
        loads = []
        for route in self._routes:
            try:
                missing = route.spec.min_instances - len(self._fleet.live(route.name))
                loads += [self._start_load(route.spec) for _ in range(missing)]
            except NoCapacity as err:  # the cluster still starts; the route says why it has no instance
                log.error("%s: %s", route.name, err)
                route.failed(str(err), self._clock())
        await asyncio.gather(*loads)
        self._tasks.spawn(repeat(self.autoscale_once, self._interval_s, "autoscaling", self._kick), "autoscaler")
        if self._membership_interval_s is not None:
            self._tasks.spawn(repeat(self.membership_once, self._membership_interval_s, "membership"),
                              "membership")

    async def _adopt(self) -> None:
        """Book the instances the agents run already: each route's target becomes what it has (so none
        is unloaded for a minimum the autoscaler had raised); one whose route is gone is unloaded."""
        listed = await self._ask_agents(list(self._fleet.nodes), lambda node: node.instances())
        for info in (i for infos in listed.values() for i in infos):
            route = self._routes.get(info.model)
            if route is None or info.state not in LIVE_STATES:
                self._tasks.spawn(self._fleet.nodes[info.node_id].unload_instance(info.id), f"unload-{info.id}")
                continue
            self._fleet.adopt(info)
            route.target = route.config.clamp(len(self._fleet.live(route.name)))
        if self._fleet.instances:
            log.info("took in %d running instance(s): %s", len(self._fleet.instances),
                     ", ".join(sorted(self._fleet.instances)))

    # Autoscaling

    async def report_load(self, router_id: str, ongoing: dict[str, int]) -> None:
        """A router's ongoing predictions (queued + in flight) per route. A route with load and no
        instance is scaled from zero at once, not at the next tick."""
        self._loads.report(router_id, ongoing, self._clock())
        if any(n and (r := self._routes.get(name)) is not None and r.target == 0 for name, n in ongoing.items()):
            self._kick.set()

    async def autoscale_once(self) -> None:
        """One autoscaling decision per route, then instances loaded or removed to match."""
        now = self._clock()
        ongoing = self._loads.total(now)
        self._routes.mark_busy(ongoing, now)
        if now - self._node_info_at >= NODE_INFO_REFRESH_S or set(self._fleet.nodes) - set(self._fleet.node_info):
            await self._fleet.refresh_node_info()
            self._node_info_at = now
        for route in self._routes:
            if self._routes.get(route.name) is not route:
                continue  # deleted during this turn; the next turn sees the new state
            target, route.scaling = decide(route.config, route.target, ongoing[route.name], route.scaling, now)
            if target != route.target:
                log.info("autoscaler: %s from %d to %d instances (%d ongoing)", route.name, route.target,
                         target, ongoing[route.name])
                route.target = target
            await self._reconcile(route)

    async def _reconcile(self, route: Route) -> None:
        """Bring the route to its target of instances of its current version. Instances of an older
        version (the route was updated) keep serving until as many of the new one are ready, then drain:
        a rolling update that never leaves the route without an instance it had."""
        spec, target = route.spec, route.target
        live = self._fleet.live(spec.name)
        current = [i for i in live if i.version == spec.version]
        stale = [i for i in live if i.version != spec.version and i.state != InstanceState.STARTING]
        if len(current) < target and self._clock() >= route.retry_at:
            try:
                for _ in range(target - len(current)):
                    self._start_load(spec)
            except NoCapacity as err:  # predictions waiting for it fail with this, not wait forever
                route.failed(str(err), self._clock())
                await self._bump()
        ready = [i for i in current if i.state != InstanceState.STARTING]  # a loading one is left to finish
        if stale and len(ready) >= target:
            for info in stale:
                self._tasks.spawn(self._remove(info), f"remove-{info.id}")
        if len(current) > target and ready:
            for info in (await self._removal_order(ready))[: len(current) - target]:
                self._tasks.spawn(self._remove(info), f"remove-{info.id}")

    async def _removal_order(self, ready: list[InstanceInfo]) -> list[InstanceInfo]:
        """Instances to remove first: the least busy, by the agents' own figures."""
        answers = await self._ask_agents({i.node_id for i in ready}, lambda node: node.instances())
        fresh = {i.id: i for per_node in answers.values() for i in per_node}
        return sorted(ready, key=lambda i: (fresh.get(i.id, i).in_flight, i.id))

    async def _remove(self, info: InstanceInfo) -> None:
        """Take the instance out of the routing table, let its work finish, unload it."""
        self._fleet.mark_removing(info)
        await self._bump()
        try:
            await self._fleet.nodes[info.node_id].unload_instance(info.id)
        except Exception as err:  # noqa: BLE001 - a node that is gone took the instance with it
            log.warning("unloading %s on %s failed: %s", info.id, info.node_id, err)
        finally:
            self._fleet.removed(info.id)
            await self._bump()

    async def stop(self) -> None:
        self._tasks.cancel()
        self._drains.stop()

    async def stop_agents(self) -> None:
        """Stop every agent (they outlive the controller otherwise): the cluster is going down."""
        for node_id in list(self._fleet.nodes):
            self._fleet.forget_node(node_id)
            await self._provisioner.release(node_id)

    def _start_load(self, spec: RouteSpec) -> asyncio.Task:
        """Book the new instance as starting now (so the next decision counts it), load it in a task.
        Raises NoCapacity (naming the hardware and memory) when no node can take it."""
        placement = self._fleet.place(spec, self._routes, self._clock())
        for victim in placement.evict:  # least recently used idle instances above their minimum
            info = self._fleet.instances[victim]
            owner = self._routes.get(info.model)
            if owner is not None:  # one fewer for its route, so it is not loaded again at once
                owner.target = max(owner.target - 1, owner.spec.min_instances)
            log.info("evicting %s (%s) from %s to make room for %s", victim, info.model, info.node_id, spec.name)
            self._tasks.spawn(self._remove(info), f"evict-{victim}")
        info = self._fleet.book(spec, placement.node_id)
        node = self._fleet.nodes[placement.node_id]
        return self._tasks.spawn(self._complete_load(spec, node, info.id), f"load-{info.id}")

    async def _complete_load(self, spec: RouteSpec, node: NodeControl, instance_id: str) -> None:
        route = self._routes.get(spec.name)
        try:
            info = await node.load_instance(instance_id, spec)
        except NodeLost as err:  # the node's fault, not the route's: no back-off, the autoscaler places it again
            await self._lose_node(node.node_id, f"lost while loading {instance_id}: {err}")
            return
        except Exception as err:
            log.error("instance %s of %s failed to load on %s: %s", instance_id, spec.name, node.node_id, err)
            info = InstanceInfo(instance_id, spec.name, spec.version, node.node_id, InstanceState.FAILED, 1)
            if route is not None:
                route.failed(f"{type(err).__name__}: {err}", self._clock())
        else:
            if route is not None:
                route.loaded()
        if self._fleet.nodes.get(node.node_id) is not node:
            return  # its node left while it loaded, and took the instance with it
        self._fleet.instances[instance_id] = info
        await self._bump()

    async def _bump(self) -> None:
        async with self._changed:
            self._revision += 1
            self._changed.notify_all()

    async def routing_table(self, since_revision: int, max_wait_s: float) -> RoutingTable:
        """The routing table, once its revision is not ``since_revision`` (or ``max_wait_s`` passed): a
        router that knew another life of the controller gets this one's at once."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._revision != since_revision), max_wait_s)
            except TimeoutError:
                pass
            return RoutingTable(self._revision, list(self._fleet.instances.values()), dict(self._fleet.nodes),
                                self._routes.load_failures(), models=self._routes.specs())

    # The desired state: routes (models and deployments) and their versions

    async def put_route(self, spec: RouteSpec, new: bool = False) -> RouteSpec:
        """Serve ``spec`` under its name: a new route, or an update of one (a new version rolls out, a new
        size is scaled to). The answer carries the release number (deployments count their updates).
        With ``new``, a name already served is refused (``AlreadyExists``): the controller is the one
        owner of the routes, so two gateways creating one name cannot both succeed."""
        route = self._routes.put(spec, new)
        await self._bump()
        self._kick.set()
        return route.spec

    async def delete_route(self, name: str) -> RouteSpec | None:
        """Stop serving ``name``: its instances drain and unload; predictions still queued for it fail."""
        spec = self._routes.delete(name)
        if spec is None:
            return None
        for info in self._fleet.live(name):
            if info.state != InstanceState.STARTING:
                self._tasks.spawn(self._remove(info), f"remove-{info.id}")
        await self._bump()
        return spec

    async def version(self, version_id: str) -> RouteSpec | None:
        """A version this controller has served, by id (versions are immutable)."""
        return self._routes.version(version_id)

    async def models(self) -> list[RouteSpec]:
        return self._routes.specs()

    async def nodes(self) -> list[NodeInfo]:
        return list((await self._ask_agents(list(self._fleet.nodes), lambda node: node.info())).values())

    async def instances(self) -> list[InstanceInfo]:
        """Live instance figures from the agents, plus any that are still starting or failed to load."""
        answers = await self._ask_agents(list(self._fleet.nodes), lambda node: node.instances())
        live = {i.id: i for per_node in answers.values() for i in per_node}
        return [live.get(i.id, i) for i in self._fleet.instances.values()]

    async def scaling(self) -> dict[str, int]:
        """Each route's instance target, as the autoscaler last decided it."""
        return {route.name: route.target for route in self._routes}

    # Membership: a node that joins gets its agents; a node that leaves is removed with its instances

    async def membership_once(self) -> None:
        """Remove the nodes that left the cluster, then take in agents on the nodes that joined it."""
        for node_id in await self._provisioner.departed():
            await self._lose_node(node_id, "its agent died, or its node left the cluster")
        joined = [n for n in await self._provisioner.provision() if n.node_id not in self._fleet.nodes]
        for node in joined:
            self._fleet.nodes[node.node_id] = node
        if joined:
            log.info("node(s) joined: %s", ", ".join(n.node_id for n in joined))
            await self._bump()
            self._kick.set()  # a route short of instances is placed now, not at the next tick

    async def _lose_node(self, node_id: str, reason: str) -> None:
        """Forget a node that is gone. Its instances leave the routing table, so routers send it nothing
        more (each router fails what was running there when its own stream to the node breaks), and the
        autoscaler, kicked, starts as many on the nodes that remain. Idempotent."""
        node, lost = self._fleet.forget_node(node_id)
        self._drains.forget(node_id)
        await self._provisioner.release(node_id)
        if node is None:
            return
        log.warning("node %s is gone (%s); its instances went with it: %s",
                    node_id, reason, ", ".join(i.id for i in lost) or "none")
        await self._bump()
        self._kick.set()

    async def _ask_agents(self, node_ids: Iterable[str],
                          ask: Callable[[NodeControl], Awaitable[Any]]) -> dict[str, Any]:
        """``ask`` these agents at once; answers by node id. An agent found gone is removed (see
        ``_lose_node``) and left out, so one lost node fails no caller."""
        nodes = [self._fleet.nodes[n] for n in node_ids if n in self._fleet.nodes]
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

    # Draining (``scheduler.drain``)

    async def drain_node(self, node_id: str, wait: bool = True) -> DrainStatus:
        """Move every instance off ``node_id``, finishing the predictions they run, and place nothing new
        there (see ``Drains.drain``)."""
        return await self._drains.drain(node_id, wait)
