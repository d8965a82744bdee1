"""Pure scheduling policies: functions over plain snapshots, no I/O, no clock of their own.

Two choices the router makes for each prediction it dispatches: which instance (``pick_instance``), and
whether the account whose turn it is may take a slot of the route at all (``admits``): the last slots of
instances with many keep *headroom* for accounts under their share, so that an account's first prediction
finds a free slot at once however busy another account keeps the route (``Headroom``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

HEADROOM_ONE_IN = 16  # of an instance's slots, one in every 16 is headroom (an account alone loses <= 1/16)


@dataclass(frozen=True)
class InstanceLoad:
    """An instance as the router sees it when choosing where to send one prediction."""

    instance_id: str
    node_id: str
    in_flight: int
    max_concurrency: int

    @property
    def free_slots(self) -> int:
        return self.max_concurrency - self.in_flight


def pick_instance(candidates: Sequence[InstanceLoad]) -> InstanceLoad | None:
    """The instance with a free slot and the lowest load ratio (ties: most free slots, then id).

    Guarantees: never returns an instance without a free slot; returns None only when none has one.
    """
    best: InstanceLoad | None = None
    best_key: tuple[float, int, str] | None = None
    for c in candidates:
        if c.free_slots <= 0:
            continue
        key = (c.in_flight / c.max_concurrency, -c.free_slots, c.instance_id)
        if best_key is None or key < best_key:
            best, best_key = c, key
    return best


@dataclass(frozen=True, slots=True)
class Headroom:
    """How many of an instance's slots are *headroom*: slots that only an account under its share of
    the route may take (``admits``). One slot in every ``one_in`` (rounded down), so an instance of
    fewer than ``one_in`` slots has none and behaves as it would without (a one-slot instance always),
    and an account alone on a route loses at most ``1 / one_in`` of its slots. ``one_in`` 0: none."""

    one_in: int = HEADROOM_ONE_IN

    def __post_init__(self) -> None:
        if self.one_in < 0 or self.one_in == 1:
            raise ValueError(f"Headroom.one_in must be 0 (none) or at least 2, not {self.one_in}")

    def of(self, max_concurrency: int) -> int:
        """The headroom of an instance of ``max_concurrency`` slots: never all of them (one_in >= 2)."""
        return max(0, max_concurrency) // self.one_in if self.one_in else 0


NO_HEADROOM = Headroom(0)


@dataclass(frozen=True, slots=True)
class RouteSlots:
    """A route's slots, as one router counts them, on the instances it may send to now."""

    slots: int  # the instances' max_concurrency, summed
    headroom: int  # their headroom (``Headroom.of``), summed: always less than ``slots`` when slots > 0
    free: int  # slots without a prediction of this router's

    @property
    def open(self) -> int:
        """The slots anyone may take: those free beyond the headroom."""
        return max(0, self.free - self.headroom)


def route_slots(loads: Iterable[InstanceLoad], headroom: Headroom) -> RouteSlots:
    slots = reserved = free = 0
    for load in loads:
        slots += load.max_concurrency
        reserved += headroom.of(load.max_concurrency)
        free += max(0, load.free_slots)
    return RouteSlots(slots, reserved, free)


def admits(slots: RouteSlots, held: int, holders: int) -> bool:
    """Whether an account whose predictions hold ``held`` of the route's slots (``holders``: accounts
    holding some, it among them if ``held``) may take a free one now.

    While more than the headroom is free, anyone may (the fair queue says whose turn it is). Within the
    headroom, only an account that holds nothing, or that would hold no more than its fair share of the
    rest once it took one: ``(held + 1) * holders <= slots - headroom``. So an account alone fills all but
    the headroom and stops there; a second account's first prediction takes a headroom slot at once, and
    its second too while it holds less than half; several floods that hold their shares leave the
    headroom alone; an account holding nothing is always admitted (no account starves); and the rule
    never keeps more than the headroom idle while work waits.
    """
    if slots.free <= 0:
        return False
    if slots.free > slots.headroom or held == 0:
        return True
    return (held + 1) * holders <= slots.slots - slots.headroom
