"""How many instances a deployment should have: a pure autoscaling policy, after Ray Serve's.

Ray Serve scales a deployment on its ongoing requests (queued + in flight) against a target per
replica, and acts only once a decision has held for a delay. ``decide`` does the same over a
``ScalingState`` the caller keeps between calls, with the clock passed in as ``now``.

``current`` is the deployment's current target count: what the previous decision set (Ray Serve's
``curr_target_num_replicas``), not the number of instances that happen to be ready. The caller feeds
each decision back as the next call's ``current``.

Guarantees of ``decide`` (``raw`` = ceil(ongoing / target_ongoing_requests) clamped to [min, max]):

1. Bounds. The desired count is always within [min_instances, max_instances].
2. Cold boot. If ``current == 0`` and ``ongoing > 0``, the answer is ``raw`` (at least 1) at once.
3. Bound correction. A ``current`` outside [min, max] (the config changed) is clamped at once.
4. Upscale. Only after ``raw > current`` has held on every call for ``upscale_delay_s`` (measured from
   the first call that saw it); then the answer jumps to the ``raw`` of that call, not to current + 1.
5. Downscale. Only after ``raw < current`` has held on every call for ``downscale_delay_s``; then the
   answer is ``max(raw, 1)``: zero is reached through rule 6 only.
6. Scale to zero. To 0 only when ``raw == 0`` (so min is 0) and ``ongoing == 0`` has held on every call
   for ``scale_to_zero_delay_s`` (``downscale_delay_s`` if None). This idle timer spans earlier
   downscale decisions: load gone at t, delays (down 600 s, zero 900 s) give 1 at t+600 and 0 at t+900.
7. Resets. A call that sees the other direction, or ``raw == current``, drops the pending timer; a
   call with ``ongoing > 0`` drops the idle timer; every change of count drops the pending timer, so
   the next change waits a full delay again.
8. Never 0 while there is load: if ``ongoing > 0`` the answer is at least 1.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from warmfleet.domain import RouteSpec

Direction = Literal["none", "up", "down"]


@dataclass(frozen=True)
class AutoscalingConfig:
    """A deployment's autoscaling settings (Ray Serve's names where they exist)."""

    min_instances: int = 0
    max_instances: int = 1
    target_ongoing_requests: float = 2.0  # ongoing requests (queued + in flight) per instance
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    scale_to_zero_delay_s: float | None = None  # None: downscale_delay_s

    def __post_init__(self) -> None:
        if self.min_instances < 0:
            raise ValueError(f"min_instances: must be >= 0, got {self.min_instances}")
        if self.max_instances < max(self.min_instances, 1):
            raise ValueError(f"max_instances: must be >= max(min_instances, 1) = "
                             f"{max(self.min_instances, 1)}, got {self.max_instances}")
        if not self.target_ongoing_requests > 0:  # also refuses NaN
            raise ValueError(f"target_ongoing_requests: must be > 0, got {self.target_ongoing_requests}")
        for name in ("upscale_delay_s", "downscale_delay_s", "scale_to_zero_delay_s"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name}: must be >= 0, got {value}")

    @property
    def zero_delay_s(self) -> float:
        """How long ``ongoing == 0`` must hold before scaling to zero."""
        return self.downscale_delay_s if self.scale_to_zero_delay_s is None else self.scale_to_zero_delay_s

    def clamp(self, count: int) -> int:
        return min(max(count, self.min_instances), self.max_instances)


@dataclass(frozen=True)
class ScalingState:
    """What ``decide`` remembers between calls; start with ``ScalingState()``."""

    pending: Direction = "none"  # the direction raw has pointed on every call since pending_since
    pending_since: float | None = None
    idle_since: float | None = None  # when ongoing became 0 and stayed so; None while there is load


def raw_desired(config: AutoscalingConfig, ongoing: int) -> int:
    """The count the load asks for right now: ceil(ongoing / target), within [min, max]."""
    return config.clamp(math.ceil(ongoing / config.target_ongoing_requests))


def per_instance_load(ongoing: int, current: int) -> float:
    """Ongoing requests per instance: 0 with no load, infinity with load and no instance."""
    if current <= 0:
        return math.inf if ongoing > 0 else 0.0
    return ongoing / current


def decide(config: AutoscalingConfig, current: int, ongoing: int, state: ScalingState,
           now: float) -> tuple[int, ScalingState]:
    """The desired instance count for a route, and the state to pass to the next call.

    ``ongoing`` is queued + in-flight requests over the whole route. See the module docstring.
    """
    if current < 0:
        raise ValueError(f"current: must be >= 0, got {current}")
    if ongoing < 0:
        raise ValueError(f"ongoing: must be >= 0, got {ongoing}")
    raw = raw_desired(config, ongoing)
    idle_since = None if ongoing > 0 else (now if state.idle_since is None else state.idle_since)
    settled = ScalingState(idle_since=idle_since)
    if current == 0 and ongoing > 0:
        return raw, settled  # cold boot: raw >= 1 here, since ongoing > 0 and max >= 1
    if config.clamp(current) != current:
        return config.clamp(current), settled
    if raw == current:
        return current, settled
    direction: Direction = "up" if raw > current else "down"
    since = state.pending_since if state.pending == direction and state.pending_since is not None else now
    pending = ScalingState(direction, since, idle_since)
    if direction == "up":
        return (raw, settled) if now - since >= config.upscale_delay_s else (current, pending)
    if raw == 0 and idle_since is not None and now - idle_since >= config.zero_delay_s:
        return 0, settled
    if now - since >= config.downscale_delay_s and max(raw, 1) < current:
        return max(raw, 1), settled
    return current, pending


def scaling_config(spec: RouteSpec) -> AutoscalingConfig:
    """The autoscaler's settings for a route: its min and max instances and its other knobs."""
    return AutoscalingConfig(min_instances=spec.min_instances, max_instances=spec.most_instances,
                             **spec.autoscaling)


class LoadReports:
    """The ongoing predictions (queued + in flight) per route, as each router last reported them. A report
    counts for ``ttl_s``: a gateway that stopped reporting stops counting."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._reports: dict[str, tuple[float, dict[str, int]]] = {}  # router id -> (reported at, ongoing)

    def report(self, router_id: str, ongoing: dict[str, int], now: float) -> None:
        self._reports[router_id] = (now, dict(ongoing))

    def total(self, now: float) -> Counter:
        """Every fresh report summed, per route; stale ones are dropped."""
        total: Counter = Counter()
        for router_id, (at, ongoing) in list(self._reports.items()):
            if now - at > self._ttl_s:
                del self._reports[router_id]
            else:
                total.update(ongoing)
        return total
