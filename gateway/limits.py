"""What one account may use at once, checked where the gateway's entries meet its services: prediction
creates a minute and predictions queued or running (gRPC, REST and the OpenAI routes all create through
``PredictionService``), Files API uploads a minute and bytes stored. A refusal is ``LimitExceeded``
(RESOURCE_EXHAUSTED / 429) with the seconds until a retry can succeed. Admin tokens are not limited:
they are the operator's own tools and benches.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.auth import Principal
from gateway.rate_limit import RateLimiter
from warmfleet.errors import LimitExceeded
from warmfleet.settings import Settings

ACTIVE_RETRY_S = 5  # a full account's predictions take a while to end: no sooner than this


class AccountLimits:
    def __init__(self, creates_per_minute: int, uploads_per_minute: int, max_active: int,
                 max_stored_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.creates = RateLimiter(creates_per_minute, clock)
        self.uploads = RateLimiter(uploads_per_minute, clock)
        self.max_active = max_active
        self.max_stored_bytes = max_stored_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> AccountLimits:
        return cls(settings.rate_limit_per_minute, settings.upload_rate_limit_per_minute,
                   settings.max_active_per_account, settings.max_stored_bytes_per_account)

    def admit_prediction(self, caller: Principal, active: int) -> None:
        """A create by ``caller``, whose account has ``active`` predictions queued or running."""
        if caller.is_admin:
            return
        if active >= self.max_active:
            raise LimitExceeded(f"account {caller.name} has {active} predictions queued or running, its "
                                f"limit; retry once some have ended", ACTIVE_RETRY_S)
        decision = self.creates.take(caller.account)
        if not decision.allowed:
            raise LimitExceeded(f"over {self.creates.per_minute} predictions a minute for account "
                                f"{caller.name}; retry in {decision.retry_after_s} s", decision.retry_after_s)

    def admit_upload(self, caller: Principal, size: int, stored: int) -> None:
        """An upload of ``size`` bytes by ``caller``, whose account keeps ``stored`` bytes of uploads."""
        if caller.is_admin:
            return
        if stored + size > self.max_stored_bytes:
            raise LimitExceeded(f"account {caller.name} keeps {stored} bytes of files; {size} more would "
                                f"pass its limit of {self.max_stored_bytes}: delete some, or wait for them "
                                "to expire", ACTIVE_RETRY_S)
        decision = self.uploads.take(caller.account)
        if not decision.allowed:
            raise LimitExceeded(f"over {self.uploads.per_minute} uploads a minute for account {caller.name}; "
                                f"retry in {decision.retry_after_s} s", decision.retry_after_s)
