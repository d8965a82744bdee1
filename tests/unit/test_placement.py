"""``place``: where a new instance of a route goes. One test per rule, properties, a scenario."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scheduler.placement import (
    InstanceSnapshot,
    NoCapacity,
    NodeSnapshot,
    Placement,
    PlacementRequest,
    place,
)
from warmfleet.errors import Unavailable, status_for

GIB = 2**30
H100 = "gpu-nvidia-h100-80gb"
NOW = 1000.0


def node(node_id: str, *, free_gib: float, total_gib: float = 80, hardware: str = H100,
         draining: bool = False) -> NodeSnapshot:
    total = int(total_gib * GIB)
    return NodeSnapshot(node_id, hardware, total, total - int(free_gib * GIB), draining)


def inst(instance_id: str, node_id: str, route: str = "other", *, gib: float = 10,
         state: str = "idle", last_used_at: float = 0.0, evictable: bool = True) -> InstanceSnapshot:
    return InstanceSnapshot(instance_id, node_id, route, int(gib * GIB), state, last_used_at, evictable)


def want(gib: float, route: str = "llama", hardware: str = H100) -> PlacementRequest:
    return PlacementRequest(route, hardware, int(gib * GIB))


# --- Rule 1: eligibility ------------------------------------------------------------------------------

def test_only_a_node_with_the_requested_hardware_that_is_not_draining_is_chosen():
    nodes = [node("a-cpu", free_gib=500, hardware="cpu"), node("b-draining", free_gib=80, draining=True),
             node("c", free_gib=20)]
    assert place(want(10), nodes, [], NOW) == Placement("c", ())


def test_no_node_of_the_hardware_names_the_hardware_and_what_is_present():
    nodes = [node("a", free_gib=64, hardware="cpu"), node("b", free_gib=24, hardware="gpu-nvidia-a10-24gb")]
    with pytest.raises(NoCapacity) as caught:
        place(want(10), nodes, [], NOW)
    message = str(caught.value)
    assert f"no node has hardware {H100!r}" in message
    assert "present: cpu, gpu-nvidia-a10-24gb" in message
    assert caught.value.nodes_with_hardware == 0 and caught.value.best_offer_bytes is None


def test_every_node_of_the_hardware_draining_is_refused_and_says_so():
    with pytest.raises(NoCapacity, match="all 2 node.s. with hardware .* are draining"):
        place(want(1), [node("a", free_gib=80, draining=True), node("b", free_gib=80, draining=True)], [], NOW)


# --- Rule 3: spread first -----------------------------------------------------------------------------

def test_a_route_spreads_to_a_node_without_a_copy_before_doubling_up():
    nodes = [node("a", free_gib=70), node("b", free_gib=20)]
    instances = [inst("llama-1", "a", "llama", state="processing")]
    assert place(want(10), nodes, instances, NOW).node_id == "b"  # a has far more room, but a copy


def test_spread_wins_over_free_room_so_it_may_evict_on_the_node_without_a_copy():
    nodes = [node("a", free_gib=70), node("b", free_gib=5)]
    instances = [inst("llama-1", "a", "llama"), inst("sd-1", "b", "sd", gib=30, last_used_at=5)]
    assert place(want(10), nodes, instances, NOW) == Placement("b", ("sd-1",))


def test_a_draining_copy_does_not_count_against_spread():
    nodes = [node("a", free_gib=20), node("b", free_gib=30)]
    instances = [inst("llama-old", "a", "llama", state="draining"), inst("llama-1", "b", "llama")]
    assert place(want(10), nodes, instances, NOW).node_id == "a"


# --- Rules 4, 5, 8: free room first, most headroom, node id -----------------------------------------------

def test_a_node_that_fits_without_eviction_wins_over_one_that_needs_eviction():
    nodes = [node("a", free_gib=5), node("b", free_gib=12)]
    instances = [inst("sd-1", "a", "sd", gib=60)]
    assert place(want(10), nodes, instances, NOW) == Placement("b", ())


def test_among_nodes_that_fit_the_most_free_memory_after_placement_wins():
    nodes = [node("a", free_gib=20), node("b", free_gib=50), node("c", free_gib=30)]
    assert place(want(10), nodes, [], NOW).node_id == "b"


def test_ties_go_to_the_smallest_node_id_whatever_the_input_order():
    nodes = [node("c", free_gib=30), node("a", free_gib=30), node("b", free_gib=30)]
    assert place(want(10), nodes, [], NOW).node_id == "a"
    assert place(want(10), list(reversed(nodes)), [], NOW).node_id == "a"


def test_a_node_exactly_full_after_placement_fits_without_eviction():
    assert place(want(10), [node("a", free_gib=10)], [inst("x", "a")], NOW) == Placement("a", ())


def test_an_overcommitted_node_has_negative_free_memory_and_must_evict_more():
    nodes = [NodeSnapshot("a", H100, 80 * GIB, 85 * GIB)]  # used > total: estimates were low
    instances = [inst("x", "a", gib=10, last_used_at=1), inst("y", "a", gib=10, last_used_at=2)]
    assert place(want(4), nodes, instances, NOW) == Placement("a", ("x",))
    assert place(want(6), nodes, instances, NOW) == Placement("a", ("x", "y"))


# --- Rule 6: what may be evicted -----------------------------------------------------------------------

def test_evicts_least_recently_used_first_and_stops_as_soon_as_it_fits():
    nodes = [node("a", free_gib=2)]
    instances = [inst("newest", "a", last_used_at=30), inst("oldest", "a", last_used_at=10),
                 inst("middle", "a", last_used_at=20)]
    assert place(want(20), nodes, instances, NOW) == Placement("a", ("oldest", "middle"))


@pytest.mark.parametrize("unevictable", [
    inst("v", "a", "sd", state="processing"),
    inst("v", "a", "sd", state="starting"),
    inst("v", "a", "sd", state="draining"),
    inst("v", "a", "sd", evictable=False),
    inst("v", "a", "llama"),  # the same route: evicting it to load another copy is churn
], ids=["processing", "starting", "draining", "not-evictable", "same-route"])
def test_never_evicts_a_busy_loading_draining_pinned_or_same_route_instance(unevictable):
    with pytest.raises(NoCapacity):
        place(want(10), [node("a", free_gib=5)], [unevictable], NOW)


def test_an_instance_used_within_min_idle_s_is_not_evicted():
    nodes = [node("a", free_gib=0)]
    instances = [inst("recent", "a", last_used_at=NOW - 5), inst("stale", "a", last_used_at=NOW - 120)]
    assert place(want(10), nodes, instances, NOW, min_idle_s=60) == Placement("a", ("stale",))
    with pytest.raises(NoCapacity):
        place(want(20), nodes, instances, NOW, min_idle_s=60)
    assert place(want(20), nodes, instances, NOW) == Placement("a", ("stale", "recent"))


# --- Rule 7: least eviction ------------------------------------------------------------------------------

def test_the_node_needing_the_fewest_evictions_wins():
    nodes = [node("a", free_gib=0), node("b", free_gib=0)]
    instances = [inst("a1", "a", gib=5, last_used_at=1), inst("a2", "a", gib=5, last_used_at=2),
                 inst("b1", "b", gib=10, last_used_at=50)]
    assert place(want(10), nodes, instances, NOW) == Placement("b", ("b1",))


def test_with_as_many_evictions_the_node_whose_victims_are_stalest_wins():
    nodes = [node("a", free_gib=0), node("b", free_gib=0)]
    instances = [inst("a1", "a", last_used_at=40), inst("b1", "b", last_used_at=30)]
    assert place(want(10), nodes, instances, NOW) == Placement("b", ("b1",))


def test_instances_on_nodes_not_in_the_snapshot_are_ignored():
    nodes = [node("a", free_gib=0)]
    with pytest.raises(NoCapacity):
        place(want(10), nodes, [inst("ghost", "gone", gib=70)], NOW)


# --- Rule 9: refusal, and its message --------------------------------------------------------------------

def test_refusal_names_the_hardware_the_request_the_best_offer_and_the_node_count():
    nodes = [node("a", free_gib=4), node("b", free_gib=6), node("c", free_gib=80, draining=True)]
    instances = [inst("a1", "a", gib=3), inst("b1", "b", state="processing")]
    with pytest.raises(NoCapacity) as caught:
        place(want(12), nodes, instances, NOW)
    err = caught.value
    message = str(err)
    assert H100 in message and "'llama'" in message
    assert "12.00 GiB" in message and f"{12 * GIB} bytes" in message
    assert "7.00 GiB" in message  # a: 4 free + 3 evictable beats b: 6 free (its instance is busy)
    assert "3 node(s) have that hardware, 1 of them draining" in message
    assert (err.requested_bytes, err.best_offer_bytes, err.nodes_with_hardware) == (12 * GIB, 7 * GIB, 3)


def test_no_capacity_is_unavailable_so_the_status_table_maps_it_to_503():
    assert issubclass(NoCapacity, Unavailable)
    err = NoCapacity("x", hardware=H100, requested_bytes=1, best_offer_bytes=0, nodes_with_hardware=1)
    assert status_for(err) == ("UNAVAILABLE", 503)


@pytest.mark.parametrize("field,build", [
    ("memory_bytes", lambda: PlacementRequest("d", H100, -1)),
    ("state", lambda: InstanceSnapshot("i", "n", "d", 1, "ready", 0.0, True)),
])
def test_snapshot_fields_are_checked_and_named(field, build):
    with pytest.raises(ValueError, match=f"^{field}:"):
        build()


# --- Properties over random clusters --------------------------------------------------------------------

def _may_evict(i: InstanceSnapshot, route: str) -> bool:
    return i.state == "idle" and i.evictable and i.route != route


def _evictions_needed(need: int, n: NodeSnapshot, on_node: list[InstanceSnapshot], route: str) -> int:
    """How many LRU victims a node needs (0 if it fits already); a large number if it cannot host."""
    free = n.memory_free_bytes
    count = 0
    for v in sorted((i for i in on_node if _may_evict(i, route)),
                    key=lambda i: (i.last_used_at, i.instance_id)):
        if free >= need:
            break
        free += v.memory_bytes
        count += 1
    return count if free >= need else 10**9


def check_guarantees(request, nodes, instances, outcome) -> None:
    """Every guarantee of ``place`` for one call, computed independently of the implementation."""
    eligible = {n.node_id: n for n in nodes if n.hardware == request.hardware and not n.draining}
    on: dict[str, list[InstanceSnapshot]] = {nid: [] for nid in eligible}
    for i in instances:
        if i.node_id in on:
            on[i.node_id].append(i)
    same = {nid: sum(i.route == request.route and i.state != "draining" for i in on[nid])
            for nid in eligible}
    needed = {nid: _evictions_needed(request.memory_bytes, eligible[nid], on[nid], request.route)
              for nid in eligible}
    hostable = [nid for nid in eligible if needed[nid] < 10**9]
    if isinstance(outcome, NoCapacity):
        assert not hostable, "refused though a node had room"
        return
    chosen, victims = eligible[outcome.node_id], outcome.evict
    by_id = {i.instance_id: i for i in on[chosen.node_id]}
    assert all(v in by_id and _may_evict(by_id[v], request.route) for v in victims)
    freed = [by_id[v].memory_bytes for v in victims]
    assert chosen.memory_free_bytes + sum(freed) >= request.memory_bytes, "over-commit"
    assert [by_id[v].last_used_at for v in victims] == sorted(by_id[v].last_used_at for v in victims)
    assert len(victims) == needed[chosen.node_id], "evicts more (or other) than the LRU prefix"
    fewest_copies = min(same[nid] for nid in hostable)
    tier = [nid for nid in hostable if same[nid] == fewest_copies]
    assert chosen.node_id in tier, "spread broken"
    fits = [nid for nid in tier if needed[nid] == 0]
    if fits:
        best_free = max(eligible[nid].memory_free_bytes for nid in fits)
        assert not victims and chosen.memory_free_bytes == best_free
        assert chosen.node_id == min(nid for nid in fits if eligible[nid].memory_free_bytes == best_free)
    else:
        assert len(victims) == min(needed[nid] for nid in tier)


def run_place(request, nodes, instances):
    try:
        return place(request, nodes, instances, NOW)
    except NoCapacity as err:
        return err


SKUS = ["cpu", "gpu-nvidia-a10-24gb", H100]
STATES = ["starting", "idle", "idle", "idle", "processing", "draining"]


@st.composite
def small_clusters(draw):
    """A few nodes and instances, drawn element by element so that failures shrink to a small case."""
    n_nodes = draw(st.integers(0, 6))
    nodes = [NodeSnapshot(f"n{k}", draw(st.sampled_from(SKUS[1:])), 16, draw(st.integers(0, 20)),
                          draw(st.booleans())) for k in range(n_nodes)]
    instances = [InstanceSnapshot(f"i{k}", f"n{draw(st.integers(0, max(n_nodes, 1)))}",
                                  draw(st.sampled_from("abc")), draw(st.integers(1, 10)),
                                  draw(st.sampled_from(STATES)), float(draw(st.integers(0, 5))),
                                  draw(st.booleans()))
                 for k in range(draw(st.integers(0, 20)))]
    request = PlacementRequest(draw(st.sampled_from("abc")), draw(st.sampled_from(SKUS[1:])),
                               draw(st.integers(0, 18)))
    return request, nodes, instances


def random_cluster(seed: int, n_nodes: int, n_instances: int):
    """A large cluster from a seed: Hypothesis picks the seed and sizes, ``random`` fills it in fast."""
    rng = random.Random(seed)
    nodes = []
    for k in range(n_nodes):
        total = rng.choice([24, 64, 80]) * GIB
        nodes.append(NodeSnapshot(f"node-{k:03d}", rng.choice(SKUS), total, 0, rng.random() < 0.05))
    used = {n.node_id: 0 for n in nodes}
    instances = []
    for k in range(n_instances):
        n = rng.choice(nodes)
        mem = rng.randint(1, 30) * GIB
        used[n.node_id] += mem
        instances.append(InstanceSnapshot(f"inst-{k:04d}", n.node_id, f"dep-{rng.randrange(40)}", mem,
                                          rng.choice(STATES), float(rng.randrange(500)), rng.random() < 0.7))
    nodes = [NodeSnapshot(n.node_id, n.hardware, n.memory_total_bytes, used[n.node_id], n.draining)
             for n in nodes]
    request = PlacementRequest(f"dep-{rng.randrange(40)}", rng.choice(SKUS), rng.randint(1, 40) * GIB)
    return request, nodes, instances


@given(small_clusters())
def test_every_guarantee_holds_on_small_random_clusters(case):
    request, nodes, instances = case
    check_guarantees(request, nodes, instances, run_place(request, nodes, instances))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 300), st.integers(0, 3000))
@example(seed=1, n_nodes=300, n_instances=3000)
@example(seed=2, n_nodes=300, n_instances=3000)
def test_every_guarantee_holds_on_large_random_clusters(seed, n_nodes, n_instances):
    request, nodes, instances = random_cluster(seed, n_nodes, n_instances)
    check_guarantees(request, nodes, instances, run_place(request, nodes, instances))


@settings(max_examples=30, deadline=None)
@given(small_clusters(), st.randoms(use_true_random=False))
def test_the_answer_does_not_depend_on_input_order(case, rnd):
    request, nodes, instances = case
    first = run_place(request, nodes, instances)
    rnd.shuffle(nodes)
    rnd.shuffle(instances)
    again = run_place(request, nodes, instances)
    assert type(first) is type(again)
    if isinstance(first, Placement):
        assert first == again
    else:
        assert str(first) == str(again)


# --- Scenario: 300 nodes, 3 SKUs, 1000 placements of 50 deployments ---------------------------------------

class FakeCluster:
    """Applies placements to a toy cluster: evictions free memory, new instances start, others churn."""

    MIN_INSTANCES = 3

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        # (node count, memory per node): the H100s are scarce, so that placements there get refused.
        sizes = {"cpu": (200, 64), "gpu-nvidia-a10-24gb": (80, 24), H100: (20, 80)}
        self.nodes = {f"{sku}-{k:03d}": NodeSnapshot(f"{sku}-{k:03d}", sku, gib * GIB, 0)
                      for sku, (count, gib) in sizes.items() for k in range(count)}
        self.instances: dict[str, InstanceSnapshot] = {}
        self.next_id = 0

    def snapshot(self) -> list[InstanceSnapshot]:
        """Instances, with the least recently used idle surplus of each route marked evictable."""
        by_dep: dict[str, list[InstanceSnapshot]] = {}
        for i in self.instances.values():
            by_dep.setdefault(i.route, []).append(i)
        out = []
        for group in by_dep.values():
            surplus = max(len(group) - self.MIN_INSTANCES, 0)
            idle = sorted((i for i in group if i.state == "idle"), key=lambda i: i.last_used_at)
            marked = {i.instance_id for i in idle[:surplus]}
            out += [i if i.evictable == (i.instance_id in marked) else self._with(i, evictable=not i.evictable)
                    for i in group]
        return out

    def apply(self, request: PlacementRequest, placement: Placement, now: float) -> None:
        for victim in placement.evict:
            gone = self.instances.pop(victim)
            self._use(gone.node_id, -gone.memory_bytes)
        self.next_id += 1
        new = InstanceSnapshot(f"i{self.next_id}", placement.node_id, request.route,
                               request.memory_bytes, "starting", now, False)
        self.instances[new.instance_id] = new
        self._use(placement.node_id, request.memory_bytes)

    def churn(self, now: float) -> None:
        """Instances finish loading, take and finish work."""
        for i in self.rng.sample(list(self.instances.values()), min(30, len(self.instances))):
            state = {"starting": "idle", "idle": "processing", "processing": "idle"}.get(i.state, i.state)
            self.instances[i.instance_id] = self._with(i, state=state, last_used_at=now)

    def _use(self, node_id: str, delta: int) -> None:
        n = self.nodes[node_id]
        self.nodes[node_id] = NodeSnapshot(n.node_id, n.hardware, n.memory_total_bytes,
                                           n.memory_used_bytes + delta, n.draining)

    @staticmethod
    def _with(i: InstanceSnapshot, **changes) -> InstanceSnapshot:
        return dataclasses.replace(i, **changes)


def test_scenario_300_nodes_1000_placements_spread_no_overcommit_refusals_only_when_full():
    rng = random.Random(7)
    cluster = FakeCluster(rng)
    memory_gib = {"cpu": (2, 16), "gpu-nvidia-a10-24gb": (4, 20), H100: (10, 70)}
    deployments = {}
    for k in range(50):
        sku = SKUS[k % 3]
        deployments[f"dep-{k:02d}"] = (sku, rng.randint(*memory_gib[sku]) * GIB)
    placed = evicted = refused = doubled = 0
    for step in range(1000):
        now = float(step)
        name = rng.choice(sorted(deployments))
        sku, memory = deployments[name]
        request = PlacementRequest(name, sku, memory)
        nodes, instances = list(cluster.nodes.values()), cluster.snapshot()
        outcome = run_place(request, nodes, instances)
        check_guarantees(request, nodes, instances, outcome)
        if isinstance(outcome, NoCapacity):
            refused += 1
        else:
            copies = {n.node_id: 0 for n in nodes if n.hardware == sku}
            for i in instances:
                if i.route == name and i.node_id in copies and i.state != "draining":
                    copies[i.node_id] += 1
            if copies[outcome.node_id] >= 1:  # doubling up: only if every node with room has a copy
                doubled += 1
                for n in nodes:
                    if n.hardware == sku and copies[n.node_id] == 0:
                        offer = n.memory_free_bytes + sum(i.memory_bytes for i in instances if
                                                          i.node_id == n.node_id and _may_evict(i, name))
                        assert offer < memory, f"{n.node_id} had room and no copy of {name}"
            cluster.apply(request, outcome, now)
            placed += 1
            evicted += len(outcome.evict)
        assert all(0 <= n.memory_used_bytes <= n.memory_total_bytes for n in cluster.nodes.values())
        cluster.churn(now)
    # The scenario exercises all three paths, so the checks above are not vacuous.
    assert placed > 500 and evicted > 0 and refused > 0 and doubled > 0, (placed, evicted, refused, doubled)


def test_an_agents_models_get_its_share_of_the_nodes_cpus():
    from scheduler.ray_adapter import runner_threads

    assert runner_threads(16, 0) == 16  # a CPU node: one agent, every CPU (Ray would leave it one)
    assert runner_threads(16, 8) == 2  # eight GPUs, eight agents
    assert runner_threads(2, 4) == 1 and runner_threads(0, 0) == 1  # never none
