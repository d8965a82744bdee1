"""How often an account may do a thing (create a prediction, upload a file): a token bucket per account,
the clock passed in (``gateway.limits`` holds one per kind).

Each caller's bucket holds up to ``per_minute`` tokens and refills at ``per_minute / 60`` a second, so a
client may burst up to a minute's allowance and then goes at the steady rate (Replicate's limit: 600
predictions a minute). A refused take says how long until a token is back, for ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

_EPSILON = 1e-9


@dataclass(frozen=True)
class Decision:
    """A take's answer: allowed, or refused with the seconds until the next token (at least 1)."""

    allowed: bool
    retry_after_s: int = 0


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


class RateLimiter:
    """Token buckets by caller name. ``per_minute`` 0 (or less) allows everything."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def _rate_per_s(self) -> float:
        return self.per_minute / 60.0

    def take(self, caller: str) -> Decision:
        """Spend one token of ``caller``'s bucket if it has one."""
        if self.per_minute <= 0:
            return Decision(True)
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(float(self.per_minute), now)
        bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.updated_at) * self._rate_per_s)
        bucket.updated_at = now
        if bucket.tokens >= 1.0 - _EPSILON:  # a token refilled exactly on time counts, float error or not
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return Decision(True)
        wait_s = (1.0 - bucket.tokens) / self._rate_per_s
        return Decision(False, max(1, math.ceil(wait_s - _EPSILON)))
