"""A controller that starts over agents already serving (its previous process died; the agents outlived it)
takes their instances in instead of loading new ones, keeps them warm, and books new ids past theirs."""

from __future__ import annotations

import asyncio

from scheduler.controller import Controller
from tests.unit.test_controller_membership import ECHO, FakeAgentNode, FakeProvisioner
from warmfleet.domain import InstanceInfo, InstanceState, RouteSpec

SPEC = RouteSpec(ECHO, "echo", min_instances=1, max_instances=4)


def serving(node: FakeAgentNode, *ids: str, spec: RouteSpec = SPEC) -> None:
    for instance_id in ids:
        node.loaded[instance_id] = InstanceInfo(instance_id, spec.name, spec.version, node.node_id,
                                                InstanceState.IDLE, 4)


def controller(node: FakeAgentNode, *specs: RouteSpec) -> Controller:
    return Controller(list(specs) or [SPEC], FakeProvisioner(node), clock=lambda: 100.0,
                      autoscale_interval_s=3600, membership_interval_s=None)


async def test_a_restarted_controller_takes_in_the_running_instances_and_loads_nothing_new():
    node = FakeAgentNode("a")
    serving(node, "acme.echo-1", "acme.echo-3")  # the autoscaler of the previous life had raised it to 2
    restarted = controller(node)
    await restarted.start()
    await restarted.autoscale_once()
    assert node.load_calls == [] and node.unload_calls == []
    assert {i.id for i in await restarted.instances()} == {"acme.echo-1", "acme.echo-3"}
    assert (await restarted.scaling()) == {ECHO: 2}  # its target is what it has, not the minimum
    table = await restarted.routing_table(-1, 0.0)
    assert {i.id for i in table.instances} == {"acme.echo-1", "acme.echo-3"} and set(table.nodes) == {"a"}


async def test_new_instances_get_ids_past_the_ones_taken_in():
    node = FakeAgentNode("a")
    serving(node, "acme.echo-7")
    restarted = controller(node, RouteSpec(ECHO, "echo", min_instances=2, max_instances=4))
    await restarted.start()
    assert node.load_calls == ["acme.echo-8"]  # one more for the minimum of 2, never a reused id


async def test_an_instance_of_a_route_gone_meanwhile_is_unloaded():
    node = FakeAgentNode("a")
    old = RouteSpec("acme/old", "echo")
    serving(node, "acme.old-1", spec=old)
    restarted = controller(node)
    await restarted.start()
    assert "acme.old-1" not in node.loaded and "acme.old-1" not in {i.id for i in await restarted.instances()}
    assert node.load_calls == ["acme.echo-1"]  # and the route it serves gets its minimum


async def test_start_twice_is_one_start():
    node = FakeAgentNode("a")
    c = controller(node)
    await c.start()
    await c.start()
    assert node.load_calls == ["acme.echo-1"]


async def test_a_router_that_knew_another_life_gets_this_ones_table_at_once():
    node = FakeAgentNode("a")
    c = controller(node)
    await c.start()
    mine = (await c.routing_table(-1, 0.0)).revision
    # A revision this life never had: answered at once, not after the 30 s a router would wait.
    table = await asyncio.wait_for(c.routing_table(mine + 10**9, 30.0), 5.0)
    assert table.revision == mine


async def test_a_router_that_asked_while_it_recovered_learns_of_the_instances_it_took_in():
    node = FakeAgentNode("a")
    serving(node, "acme.echo-1")  # nothing to load: taking it in is the only change
    restarted = controller(node)
    early = await restarted.routing_table(-1, 0.0)  # asked before the recovery ended: no instance yet
    assert early.instances == []
    await restarted.start()
    table = await asyncio.wait_for(restarted.routing_table(early.revision, 30.0), 5.0)
    assert table.revision > early.revision and [i.id for i in table.instances] == ["acme.echo-1"]
