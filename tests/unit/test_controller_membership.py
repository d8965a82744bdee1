"""The controller's membership and drain, with fake agents and a fake provisioner: no Ray, no clock.

A node that joins gets the next instance the autoscaler needs; a node that leaves (the provisioner says
so, or one of its agent's calls raises NodeLost) leaves the routing table with its instances, which the
autoscaler replaces on the nodes that remain; a drain starts replacements elsewhere before it unloads
the node's instances, and leaves the node empty and closed to new ones.
"""

from __future__ import annotations

import asyncio

import pytest

from scheduler.controller import Controller
from scheduler.ports import NodeLost
from tests.unit.fakes import FakeNodeControl, settle
from warmfleet.domain import InstanceInfo, RouteSpec
from warmfleet.errors import FailedPrecondition, NotFound

ECHO = "acme/echo"


class FakeAgentNode(FakeNodeControl):
    """A fake agent that loads and unloads instances. A load waits while ``hold_loads`` is set to an
    unset Event; an unloaded instance stays (draining) while ``busy`` names it, as a real agent keeps an
    instance until its last prediction ends; ``lost`` makes every control call raise NodeLost."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.loaded: dict[str, InstanceInfo] = {}
        self.load_calls: list[str] = []
        self.unload_calls: list[str] = []
        self.hold_loads: asyncio.Event | None = None
        self.busy: set[str] = set()
        self.lost = False

    def _check(self) -> None:
        if self.lost:
            raise NodeLost(self.node_id)

    async def load_instance(self, instance_id: str, spec: RouteSpec) -> InstanceInfo:
        self.load_calls.append(instance_id)
        if self.hold_loads is not None:
            await self.hold_loads.wait()
        self._check()
        info = InstanceInfo(instance_id, spec.name, spec.version, self.node_id, "idle", 4)
        self.loaded[instance_id] = info
        return info

    async def unload_instance(self, instance_id: str) -> None:
        self._check()
        self.unload_calls.append(instance_id)
        if instance_id in self.busy:
            self.loaded[instance_id] = InstanceInfo(instance_id, ECHO, "v", self.node_id, "draining", 4, 1)
        else:
            self.loaded.pop(instance_id, None)

    def finish_work(self) -> None:
        """The predictions still running on draining instances end; those instances unload."""
        for instance_id in list(self.busy):
            self.busy.discard(instance_id)
            if instance_id in self.unload_calls:
                self.loaded.pop(instance_id, None)

    async def instances(self) -> list[InstanceInfo]:
        self._check()
        return list(self.loaded.values())

    async def info(self):
        self._check()
        return await super().info()


class FakeProvisioner:
    """Hands out the nodes the test makes join; reports the ones it makes leave until released."""

    def __init__(self, *nodes: FakeAgentNode) -> None:
        self.waiting = list(nodes)
        self.gone: set[str] = set()
        self.released: list[str] = []

    def join(self, node: FakeAgentNode) -> None:
        self.waiting.append(node)

    def leave(self, node: FakeAgentNode) -> None:
        node.lost = True
        self.gone.add(node.node_id)

    async def provision(self) -> list[FakeAgentNode]:
        joined, self.waiting = self.waiting, []
        return joined

    async def departed(self) -> set[str]:
        return set(self.gone)

    async def release(self, node_id: str) -> None:
        self.gone.discard(node_id)
        self.released.append(node_id)


async def started(provisioner: FakeProvisioner, *models: RouteSpec) -> Controller:
    """A controller with no background loops: the test turns membership and autoscaling itself."""
    controller = Controller(list(models) or [RouteSpec(ECHO, "echo", min_instances=2)], provisioner,
                            clock=lambda: 100.0, autoscale_interval_s=3600, membership_interval_s=None)
    await controller.start()
    return controller


async def placed(controller: Controller) -> dict[str, list[str]]:
    """Node id -> ids of the live instances the routing table places there (draining ones left out)."""
    table = await controller.routing_table(-1, 0.0)
    where: dict[str, list[str]] = {node_id: [] for node_id in table.nodes}
    for info in table.instances:
        if info.state in ("starting", "idle", "processing"):
            where.setdefault(info.node_id, []).append(info.id)
    return where


async def loaded_everywhere(controller: Controller) -> None:
    """Let the loads the controller started finish (the fake agents answer at once)."""
    await settle()
    table = await controller.routing_table(-1, 0.0)
    assert all(i.state != "starting" for i in table.instances), table.instances


async def test_a_node_that_joins_gets_its_agent_and_takes_the_next_instance():
    a, b = FakeAgentNode("a"), FakeAgentNode("b")
    provisioner = FakeProvisioner(a)
    model = RouteSpec(ECHO, "echo", min_instances=1, max_instances=2,
                      autoscaling={"target_ongoing_requests": 1, "upscale_delay_s": 0})
    controller = await started(provisioner, model)
    before = (await controller.routing_table(-1, 0.0)).revision

    provisioner.join(b)
    await controller.membership_once()
    table = await controller.routing_table(-1, 0.0)
    assert set(table.nodes) == {"a", "b"} and table.revision > before  # routers learn of it at once

    await controller.report_load("router-1", {ECHO: 2})
    await controller.autoscale_once()
    await loaded_everywhere(controller)
    assert {n: len(ids) for n, ids in (await placed(controller)).items()} == {"a": 1, "b": 1}
    assert b.load_calls  # the new instance landed on the node that joined


async def test_a_node_that_leaves_goes_with_its_instances_and_they_are_replaced_on_the_others():
    a, b = FakeAgentNode("a"), FakeAgentNode("b")
    provisioner = FakeProvisioner(a, b)
    controller = await started(provisioner)
    [lost_instance] = (await placed(controller))["b"]
    before = (await controller.routing_table(-1, 0.0)).revision

    provisioner.leave(b)
    await controller.membership_once()
    table = await controller.routing_table(-1, 0.0)
    assert "b" not in table.nodes and table.revision > before
    assert lost_instance not in {i.id for i in table.instances}
    assert provisioner.released == ["b"]  # forgotten, so it is not reported again

    await controller.autoscale_once()
    await loaded_everywhere(controller)
    assert {n: len(ids) for n, ids in (await placed(controller)).items()} == {"a": 2}
    assert not (await controller.routing_table(-1, 0.0)).load_failures


async def test_an_agent_that_raises_node_lost_is_removed_and_the_others_still_answer():
    a, b = FakeAgentNode("a"), FakeAgentNode("b")
    controller = await started(FakeProvisioner(a, b))
    b.lost = True  # its process died; Ray still lists its node as alive

    assert [n.id for n in await controller.nodes()] == ["a"]
    assert {i.node_id for i in await controller.instances()} == {"a"}
    assert "b" not in (await controller.routing_table(-1, 0.0)).nodes


async def test_a_node_lost_while_loading_is_no_failure_of_the_model_and_the_instance_goes_elsewhere():
    a, b = FakeAgentNode("a"), FakeAgentNode("b")
    provisioner = FakeProvisioner(a)
    model = RouteSpec(ECHO, "echo", min_instances=1, max_instances=2,
                      autoscaling={"target_ongoing_requests": 1, "upscale_delay_s": 0})
    controller = await started(provisioner, model)
    provisioner.join(b)
    await controller.membership_once()
    b.hold_loads = asyncio.Event()
    await controller.report_load("router-1", {ECHO: 2})
    await controller.autoscale_once()  # the second instance goes to b, the least loaded
    await settle()
    assert b.load_calls

    b.lost = True
    b.hold_loads.set()
    await settle()
    table = await controller.routing_table(-1, 0.0)
    assert "b" not in table.nodes and not table.load_failures  # no backoff, no failed predictions
    await controller.autoscale_once()  # replaced at once on the node that remains
    await loaded_everywhere(controller)
    assert {n: len(ids) for n, ids in (await placed(controller)).items()} == {"a": 2}


async def test_an_instance_whose_node_left_while_it_loaded_does_not_come_back():
    a, b = FakeAgentNode("a"), FakeAgentNode("b")
    provisioner = FakeProvisioner(a)
    model = RouteSpec(ECHO, "echo", min_instances=1, max_instances=2,
                      autoscaling={"target_ongoing_requests": 1, "upscale_delay_s": 0})
    controller = await started(provisioner, model)
    provisioner.join(b)
    await controller.membership_once()
    b.hold_loads = asyncio.Event()
    await controller.report_load("router-1", {ECHO: 2})
    await controller.autoscale_once()
    await settle()
    [loading] = b.load_calls

    provisioner.leave(b)
    await controller.membership_once()
    b.lost = False  # the agent's answer was on its way when the node left
    b.hold_loads.set()
    await settle()
    assert loading not in {i.id for i in (await controller.routing_table(-1, 0.0)).instances}


async def test_a_drain_readies_replacements_before_it_unloads_and_ends_with_the_node_empty():
    a, b, c = FakeAgentNode("a"), FakeAgentNode("b"), FakeAgentNode("c")
    provisioner = FakeProvisioner(a, b)
    controller = await started(provisioner)  # one instance on a, one on b
    provisioner.join(c)
    await controller.membership_once()
    [moving] = (await placed(controller))["b"]
    b.busy.add(moving)  # a prediction is running on it
    c.hold_loads = asyncio.Event()

    status = await controller.drain_node("b", wait=False)
    assert (status.instances_left, status.done) == (1, False)
    await controller.autoscale_once()
    await settle()
    assert c.load_calls and not b.unload_calls  # the replacement boots on c; b's instance still serves
    assert moving in (await placed(controller))["b"]

    c.hold_loads.set()  # the replacement is ready: b's instance leaves the table and unloads
    await settle()
    assert b.unload_calls == [moving] and moving not in {i.id for i in (await controller.routing_table(-1, 0)).instances}
    status = await controller.drain_node("b", wait=False)
    assert (status.instances_left, status.done) == (1, False)  # still finishing its prediction

    b.finish_work()
    status = await asyncio.wait_for(controller.drain_node("b", wait=True), 2.0)
    assert (status.instances_left, status.done) == (0, True)
    assert {n: len(ids) for n, ids in (await placed(controller)).items()} == {"a": 1, "b": 0, "c": 1}


async def test_a_drained_node_takes_no_new_instance():
    a, b = FakeAgentNode("a"), FakeAgentNode("b")
    model = RouteSpec(ECHO, "echo", min_instances=1, max_instances=3,
                      autoscaling={"target_ongoing_requests": 1, "upscale_delay_s": 0})
    controller = await started(FakeProvisioner(a, b), model)  # its one instance on a
    assert (await asyncio.wait_for(controller.drain_node("b"), 2.0)).done  # nothing to move

    await controller.report_load("router-1", {ECHO: 3})
    await controller.autoscale_once()
    await loaded_everywhere(controller)
    assert {n: len(ids) for n, ids in (await placed(controller)).items()} == {"a": 3, "b": 0}
    assert not b.load_calls


async def test_a_node_that_leaves_mid_drain_ends_its_drain():
    a, b = FakeAgentNode("a"), FakeAgentNode("b")
    provisioner = FakeProvisioner(a, b)
    controller = await started(provisioner)
    a.hold_loads = asyncio.Event()  # the replacement never gets ready
    waiting = asyncio.create_task(controller.drain_node("b", wait=True))
    await controller.autoscale_once()
    await settle()
    assert not waiting.done()

    provisioner.leave(b)
    await controller.membership_once()
    status = await asyncio.wait_for(waiting, 2.0)
    assert (status.node_id, status.instances_left, status.done) == ("b", 0, True)


async def test_draining_an_unknown_node_or_the_only_one_is_refused():
    a = FakeAgentNode("a")
    controller = await started(FakeProvisioner(a))
    with pytest.raises(NotFound, match="node z"):
        await controller.drain_node("z")
    with pytest.raises(FailedPrecondition, match="last node that takes instances"):
        await controller.drain_node("a")
    assert not a.unload_calls and len((await placed(controller))["a"]) == 2
