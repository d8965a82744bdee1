"""The router's view of the instances it dispatches to: by route, the load it put on each, the slots each
account's predictions hold, and the instances an agent said were full.

``next_dispatch`` is one step of the router's dispatch: the instance (``pick_instance``) and the
prediction (the fair queue's next, among the accounts ``admits`` lets take a slot: the headroom rule of
``scheduler.policies``), both booked. Pure but for the full instances' backoff timers, which need a
running event loop only once an agent has said an instance is full.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Callable, Protocol, TypeVar

from scheduler.fair_queue import FairQueues, Queueable
from scheduler.policies import Headroom, InstanceLoad, admits, pick_instance, route_slots
from warmfleet.domain import InstanceInfo, InstanceState

# The states in which an instance takes predictions: the router dispatches to no other.
SERVING_STATES = frozenset({InstanceState.IDLE, InstanceState.PROCESSING})


class Holder(Protocol):
    """What the pool reads of a prediction that holds a slot: whose it is, and of which route."""

    @property
    def route(self) -> str: ...

    @property
    def account(self) -> str: ...


T = TypeVar("T", bound=Queueable)


class InstancePool:
    """The ready instances the router dispatches to, by route, with the load the router put on each, the
    slots each account holds per route (for the headroom rule), and those an agent said were full
    (``_FullInstances``)."""

    def __init__(self, on_free: Callable[[str], None], full_backoff_s: float,
                 full_backoff_max_s: float, headroom: Headroom = Headroom()) -> None:
        self.loads: dict[str, InstanceLoad] = {}
        self.by_route: dict[str, list[str]] = {}
        self.route_of: dict[str, str] = {}
        self.full = _FullInstances(on_free, full_backoff_s, full_backoff_max_s)
        self.headroom = headroom
        # route -> account -> slots its predictions hold there (this router's), kept by prediction, not
        # by instance: a closed instance's predictions still hold theirs until they are released.
        self.held: dict[str, Counter[str]] = {}

    def adopt(self, instances: list[InstanceInfo]) -> None:
        """A routing table's instances: those serving take work, keeping the load counted on each."""
        old = self.loads
        self.loads, self.by_route, self.route_of = {}, {}, {}
        for info in instances:
            if info.state not in SERVING_STATES:
                continue
            prev = old.get(info.id)
            self.loads[info.id] = InstanceLoad(
                info.id, info.node_id, prev.in_flight if prev else 0, info.max_concurrency)
            self.by_route.setdefault(info.model, []).append(info.id)
            self.route_of[info.id] = info.model
        self.full.keep_only(self.loads)

    def close(self, instance_id: str) -> None:
        """Dispatch nothing more to an instance until a routing table lists it again."""
        self.loads.pop(instance_id, None)
        self.full.forget(instance_id)
        route = self.route_of.pop(instance_id, None)
        if route is not None and instance_id in self.by_route.get(route, []):
            self.by_route[route].remove(instance_id)
            if not self.by_route[route]:
                del self.by_route[route]

    def on_node(self, node_id: str) -> list[str]:
        return [i for i, load in self.loads.items() if load.node_id == node_id]

    def _open(self, route: str) -> list[InstanceLoad]:
        """The instances of ``route`` that may be sent to now: none that an agent said was full."""
        ids = self.by_route.get(route, ())
        blocked, loads = self.full.blocked, self.loads
        if blocked:
            return [loads[i] for i in ids if i not in blocked]
        return [loads[i] for i in ids]

    def pick(self, route: str) -> InstanceLoad | None:
        """Where the next prediction of ``route`` goes (``pick_instance``), but to no full instance."""
        return pick_instance(self._open(route)) if route in self.by_route else None

    def admits(self, route: str) -> Callable[[str], bool] | None:
        """Which accounts may take a free slot of ``route`` now (the headroom rule, ``policies.admits``);
        None when any may: more than the headroom is free, or the route's instances have none."""
        slots = route_slots(self._open(route), self.headroom)
        if slots.free > slots.headroom:
            return None
        held = self.held.get(route) or Counter()
        holders = len(held)
        return lambda account: admits(slots, held[account], holders)

    def occupy(self, instance_id: str, holder: Holder) -> None:
        """``holder``'s prediction takes a slot of the instance (one the pool may not list: a prediction
        a restarted router found running there still holds its account's slot)."""
        load = self.loads.get(instance_id)
        if load is not None:
            self.loads[instance_id] = InstanceLoad(
                load.instance_id, load.node_id, load.in_flight + 1, load.max_concurrency)
        self.held.setdefault(holder.route, Counter())[holder.account] += 1

    def refused(self, instance_id: str, closed: bool) -> None:
        """An agent refused a task for the instance: full (others' work fills it: a backoff), or closed
        (its agent let it go before a routing table said so: it takes nothing more from us)."""
        if closed:
            self.close(instance_id)
        elif instance_id in self.loads:
            self.full.full(instance_id)

    def vacate(self, instance_id: str, holder: Holder) -> None:
        """``holder``'s prediction there ended (or never ran): that slot is free, whoever else is there."""
        load = self.loads.get(instance_id)
        if load is not None:
            self.loads[instance_id] = InstanceLoad(
                load.instance_id, load.node_id, load.in_flight - 1, load.max_concurrency)
        if self.full.blocked:
            self.full.freed(instance_id)
        held = self.held.get(holder.route)
        if held is not None and held[holder.account] > 0:
            held[holder.account] -= 1
            if not held[holder.account]:
                del held[holder.account]
                if not held:
                    del self.held[holder.route]

    def footprint(self) -> dict[str, int]:
        """What it holds per prediction: 0 each once none is running."""
        return {"full_instances": len(self.full), "slot_holders": sum(map(len, self.held.values()))}


def next_dispatch(queue: FairQueues[T], pool: InstancePool, route: str) -> tuple[T, InstanceLoad] | None:
    """One step of dispatch for ``route``: the instance with a free slot (``pick``) and the prediction to
    run there (the queue's next among the accounts the headroom rule admits), the slot booked to it;
    None when no instance has a free slot, or no queued prediction's account may take one."""
    choice = pool.pick(route)
    if choice is None:
        return None
    item = queue.pop(route, pool.admits(route))
    if item is None:
        return None
    pool.occupy(choice.instance_id, item)
    return item, choice


class _FullInstances:
    """Instances whose agent said they had no free slot (other routers' work fills them): each gets
    nothing until its backoff passes (``on_free`` is called then), doubling while it stays full, or one
    of this router's tasks on it ends. One that takes a task again starts over at the first backoff."""

    def __init__(self, on_free: Callable[[str], None], first_s: float, max_s: float) -> None:
        self._on_free = on_free
        self._first_s, self._max_s = first_s, max_s
        self.blocked: dict[str, asyncio.TimerHandle] = {}  # instance id -> the end of its wait
        self.backoff: dict[str, float] = {}  # instance id -> its last wait, while it has not taken work since

    def __len__(self) -> int:
        return len(self.backoff)

    def full(self, instance_id: str) -> None:
        wait = min(self.backoff.get(instance_id, self._first_s / 2) * 2, self._max_s)
        self.backoff[instance_id] = wait
        self.freed(instance_id)
        self.blocked[instance_id] = asyncio.get_running_loop().call_later(wait, self._expire, instance_id)

    def _expire(self, instance_id: str) -> None:
        del self.blocked[instance_id]
        self._on_free(instance_id)

    def freed(self, instance_id: str) -> None:
        timer = self.blocked.pop(instance_id, None)
        if timer is not None:
            timer.cancel()

    def started(self, instance_id: str) -> None:
        self.backoff.pop(instance_id, None)

    def forget(self, instance_id: str) -> None:
        self.freed(instance_id)
        self.backoff.pop(instance_id, None)

    def keep_only(self, instance_ids: set[str] | dict[str, Any]) -> None:
        for iid in [i for i in self.backoff if i not in instance_ids]:
            self.forget(iid)
