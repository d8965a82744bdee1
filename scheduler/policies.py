"""Pure scheduling policies: functions over plain snapshots, no I/O, no clock of their own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


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
