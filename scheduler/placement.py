"""Where a new instance of a route goes: a pure policy over a snapshot of the cluster.

``place(request, nodes, instances, now)`` reads frozen snapshots and returns a ``Placement`` (a node,
and the instances to unload from it first); it does no I/O, calls no Ray and reads no clock.

Guarantees of ``place``:

1. Eligibility. The chosen node has exactly the requested hardware SKU and is not draining.
2. No over-commit. The node's free memory (total - used) plus the memory of the instances it evicts
   is at least the request's memory estimate.
3. Spread first. No eligible node that could host the instance (by free memory, or by evicting what
   rule 6 allows) holds fewer live (not draining) instances of the same route than the chosen one.
   So a route is spread across nodes before any node gets a second copy, even at the price of
   evicting an idle, surplus instance of another route.
4. Free room before eviction. Among nodes equal by rule 3, a node that fits without eviction is chosen
   over one that needs evictions, and then nothing is evicted.
5. Most headroom. Among nodes that fit without eviction (and are equal by rule 3), the one with the
   most free memory after placement wins. Free memory is the resource placement is bound by, so this
   keeps the most room for the next placement without eviction; an instance count is a poor proxy when
   instances range from a few hundred megabytes to tens of gigabytes.
6. What may be evicted. Only instances on the chosen node that are idle (``state == "idle"``),
   ``evictable``, of another route (evicting a copy of the same route to load another copy
   is pointless churn), and idle for at least ``min_idle_s`` before ``now``. Never a ``starting``,
   ``processing`` or ``draining`` one. On a node, candidates are taken least recently used first
   (``last_used_at`` ascending, then id), and no more are taken than needed: ``evict`` is that shortest
   LRU prefix, in the order to unload.
7. Least eviction. Among nodes that need evictions (and are equal by rule 3), the one needing the
   fewest wins; then the one whose most recently used victim is the stalest; then the most free memory
   after placement.
8. Determinism. Remaining ties go to the smallest ``node_id``; the answer does not depend on the order
   of ``nodes`` or ``instances``.
9. Refusal only when there is no room. ``NoCapacity`` is raised if and only if no eligible node has
   free memory plus evictable memory (rule 6) at least the request. Its message names the hardware,
   the memory asked, the most any node could offer, and how many nodes of that hardware exist.

``evictable`` is the caller's word that an instance may go: its route is above its minimum. Mark
at most (count - minimum) instances of a route evictable (say, its least recently used idle ones),
since ``place`` may evict every marked instance on one node.

Cost: one pass groups instances by node, one pass scores nodes; a node's eviction candidates are
sorted only when it does not fit without eviction. Hundreds of nodes and thousands of instances take
milliseconds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from warmfleet.domain import InstanceInfo, InstanceState, RouteSpec
from warmfleet.errors import Unavailable

INSTANCE_STATES = frozenset({InstanceState.STARTING, InstanceState.IDLE, InstanceState.PROCESSING,
                             InstanceState.DRAINING})


@dataclass(frozen=True)
class NodeSnapshot:
    """A node as placement sees it: its hardware SKU and its memory for instances."""

    node_id: str
    hardware: str  # a SKU such as "cpu" or "gpu-nvidia-h100-80gb"
    memory_total_bytes: int
    memory_used_bytes: int
    draining: bool = False

    @property
    def memory_free_bytes(self) -> int:
        return self.memory_total_bytes - self.memory_used_bytes


@dataclass(frozen=True)
class InstanceSnapshot:
    """A loaded (or loading) instance of a route on a node."""

    instance_id: str
    node_id: str
    route: str
    memory_bytes: int
    state: InstanceState  # starting, idle, processing or draining
    last_used_at: float  # seconds, on the same clock as ``now``
    evictable: bool  # its route is above its minimum, so it may be removed

    def __post_init__(self) -> None:
        if self.state not in INSTANCE_STATES:
            raise ValueError(f"state: must be one of {sorted(INSTANCE_STATES)}, got {self.state!r}")


@dataclass(frozen=True)
class PlacementRequest:
    """One new instance to place: its route, the hardware it needs, its memory estimate."""

    route: str
    hardware: str
    memory_bytes: int

    def __post_init__(self) -> None:
        if self.memory_bytes < 0:
            raise ValueError(f"memory_bytes: must be >= 0, got {self.memory_bytes}")


@dataclass(frozen=True)
class Placement:
    """The node to start the instance on, and the instances to unload from it first (LRU order)."""

    node_id: str
    evict: tuple[str, ...] = ()


class NoCapacity(Unavailable):
    """No eligible node has room for the instance, even after evicting what may be evicted.

    A kind of ``Unavailable``: the cluster cannot serve this now, so it shares that status row.
    """

    def __init__(self, message: str, *, hardware: str, requested_bytes: int,
                 best_offer_bytes: int | None, nodes_with_hardware: int) -> None:
        super().__init__(message)
        self.hardware = hardware
        self.requested_bytes = requested_bytes
        self.best_offer_bytes = best_offer_bytes  # None when no eligible node exists
        self.nodes_with_hardware = nodes_with_hardware


@dataclass(frozen=True)
class _Option:
    """A node that can host the request, with its rank (smaller is better) and its victims."""

    key: tuple
    node_id: str
    evict: tuple[str, ...]


def place(request: PlacementRequest, nodes: Sequence[NodeSnapshot],
          instances: Iterable[InstanceSnapshot], now: float, *, min_idle_s: float = 0.0) -> Placement:
    """The node for one new instance of ``request.route``, and what to evict there first.

    ``now`` is the snapshot's time; with ``min_idle_s`` > 0 an instance used less than ``min_idle_s``
    before ``now`` is not evicted (a guard against thrashing). See the module docstring for the rules.
    Raises ``NoCapacity`` when no eligible node has room.
    """
    eligible = [n for n in nodes if n.hardware == request.hardware and not n.draining]
    if not eligible:
        raise _no_eligible_node(request, nodes)
    by_node = _group_by_node(instances, {n.node_id for n in eligible})
    best: _Option | None = None
    best_offer = None
    for node in eligible:
        option, offer = _score(request, node, by_node.get(node.node_id, ()), now, min_idle_s)
        best_offer = offer if best_offer is None else max(best_offer, offer)
        if option is not None and (best is None or option.key < best.key):
            best = option
    if best is None:
        raise _no_room(request, nodes, best_offer)
    return Placement(node_id=best.node_id, evict=best.evict)


def _group_by_node(instances: Iterable[InstanceSnapshot],
                   node_ids: set[str]) -> dict[str, list[InstanceSnapshot]]:
    by_node: dict[str, list[InstanceSnapshot]] = defaultdict(list)
    for inst in instances:
        if inst.node_id in node_ids:
            by_node[inst.node_id].append(inst)
    return by_node


def _score(request: PlacementRequest, node: NodeSnapshot, on_node: Sequence[InstanceSnapshot],
           now: float, min_idle_s: float) -> tuple[_Option | None, int]:
    """The node's option (None if it cannot host the request) and the most memory it could offer."""
    same = sum(1 for i in on_node if i.route == request.route and i.state != "draining")
    free = node.memory_free_bytes
    need = request.memory_bytes
    victims = [i for i in on_node if _may_evict(i, request, now, min_idle_s)]
    offer = free + sum(i.memory_bytes for i in victims)
    if free >= need:
        # Rank: spread, no eviction, (no victims), most free memory after placement, node id.
        return _Option((same, 0, 0, 0.0, -(free - need), node.node_id), node.node_id, ()), offer
    if offer < need:
        return None, offer
    victims.sort(key=lambda i: (i.last_used_at, i.instance_id))
    taken: list[InstanceSnapshot] = []
    for victim in victims:
        taken.append(victim)
        free += victim.memory_bytes
        if free >= need:
            break
    # Rank: spread, eviction, fewest victims, stalest newest victim, most free after, node id.
    key = (same, 1, len(taken), taken[-1].last_used_at, -(free - need), node.node_id)
    return _Option(key, node.node_id, tuple(i.instance_id for i in taken)), offer


def _may_evict(inst: InstanceSnapshot, request: PlacementRequest, now: float, min_idle_s: float) -> bool:
    if inst.state != "idle" or not inst.evictable or inst.route == request.route:
        return False
    return min_idle_s <= 0 or now - inst.last_used_at >= min_idle_s


def _no_eligible_node(request: PlacementRequest, nodes: Sequence[NodeSnapshot]) -> NoCapacity:
    with_hw = [n for n in nodes if n.hardware == request.hardware]
    if with_hw:
        message = (f"cannot place {request.route!r}: all {len(with_hw)} node(s) with "
                   f"hardware {request.hardware!r} are draining")
    else:
        present = ", ".join(sorted({n.hardware for n in nodes})) or "none"
        message = (f"cannot place {request.route!r}: no node has hardware "
                   f"{request.hardware!r}; present: {present}")
    return NoCapacity(message, hardware=request.hardware, requested_bytes=request.memory_bytes,
                      best_offer_bytes=None, nodes_with_hardware=len(with_hw))


def _no_room(request: PlacementRequest, nodes: Sequence[NodeSnapshot], best_offer: int | None) -> NoCapacity:
    with_hw = [n for n in nodes if n.hardware == request.hardware]
    draining = sum(1 for n in with_hw if n.draining)
    offer = max(best_offer or 0, 0)
    message = (f"cannot place {request.route!r}: it needs {_gib(request.memory_bytes)} on "
               f"hardware {request.hardware!r}, and the most any node offers is {_gib(offer)} "
               f"(free + evictable); {len(with_hw)} node(s) have that hardware"
               + (f", {draining} of them draining" if draining else ""))
    return NoCapacity(message, hardware=request.hardware, requested_bytes=request.memory_bytes,
                      best_offer_bytes=offer, nodes_with_hardware=len(with_hw))


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n} bytes)"


# Weights on disk to memory in use: activations, caches and allocator slack on top of the weights.
WEIGHTS_OVERHEAD = 1.2


def hardware_matches(wanted: str, node_hardware: str) -> bool:
    """Whether a node of ``node_hardware`` may host an instance asking for ``wanted``: the same SKU, or
    any GPU for "gpu" (a Cog model's ``build.gpu``)."""
    return wanted == node_hardware or (wanted == "gpu" and node_hardware.startswith("gpu-"))


def estimate_memory_bytes(spec: RouteSpec) -> int:
    """The memory an instance of ``spec`` is booked for: the option ``memory_bytes`` when given, else its
    weight files' size on disk times ``WEIGHTS_OVERHEAD`` (0 for a runner without weights, or weights
    this host cannot see)."""
    if "memory_bytes" in spec.options:
        return int(spec.options["memory_bytes"])
    path = Path(spec.weights) if spec.weights else None
    if path is None or not path.exists():
        return 0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return int(sum(f.stat().st_size for f in files) * WEIGHTS_OVERHEAD)


class MemoryBook:
    """What an instance of each version is booked for: the most one of its instances was measured using
    (an instance in a process of its own, a pushed Cog model), else the estimate (``estimate_memory_bytes``,
    computed once per version)."""

    def __init__(self) -> None:
        self._estimates: dict[str, int] = {}
        self._measured: dict[str, int] = {}

    def of(self, spec: RouteSpec | None) -> int:
        if spec is None:
            return 0
        if spec.version in self._measured:
            return self._measured[spec.version]
        if spec.version not in self._estimates:
            self._estimates[spec.version] = estimate_memory_bytes(spec)
        return self._estimates[spec.version]

    def measured(self, instances: Iterable[InstanceInfo]) -> None:
        """Take in what the agents said their instances use: per version, the most of this listing."""
        latest: dict[str, int] = {}
        for info in instances:
            if info.memory_bytes:
                latest[info.version] = max(latest.get(info.version, 0), info.memory_bytes)
        self._measured.update(latest)
