"""An account's limits (gateway/limits.py), with the clock in the test's hands: creates a minute, predictions
at once, uploads a minute and bytes kept; each refusal says when to retry; admins are not limited."""

from __future__ import annotations

import pytest

from gateway.auth import Principal, Role
from gateway.limits import ACTIVE_RETRY_S, AccountLimits
from tests.unit.fakes import ManualClock
from warmfleet.errors import LimitExceeded

ALICE = Principal("acct_alice", "alice", Role.USER)
BOB = Principal("acct_bob", "bob", Role.USER)
ADMIN = Principal("acct_admin", "admin", Role.ADMIN)


def limits(clock: ManualClock, creates: int = 60, uploads: int = 60, active: int = 100, stored: int = 1000):
    return AccountLimits(creates, uploads, active, stored, clock)


def test_creates_are_limited_per_account_and_say_when_to_retry():
    clock = ManualClock()
    lim = limits(clock, creates=2)
    lim.admit_prediction(ALICE, 0)
    lim.admit_prediction(ALICE, 0)
    with pytest.raises(LimitExceeded, match="over 2 predictions a minute for account alice") as err:
        lim.admit_prediction(ALICE, 0)
    assert err.value.retry_after_s == 30  # a token back every 30 s at 2 a minute
    lim.admit_prediction(BOB, 0)  # bob's bucket is his own
    clock.now += 30
    lim.admit_prediction(ALICE, 0)


def test_predictions_at_once_are_limited_before_the_rate_is_spent():
    clock = ManualClock()
    lim = limits(clock, creates=1, active=3)
    with pytest.raises(LimitExceeded, match="3 predictions queued or running") as err:
        lim.admit_prediction(ALICE, 3)
    assert err.value.retry_after_s == ACTIVE_RETRY_S
    lim.admit_prediction(ALICE, 2)  # the refusal above took nothing from the bucket


def test_uploads_are_limited_by_rate_and_by_bytes_kept():
    clock = ManualClock()
    lim = limits(clock, uploads=1, stored=100)
    with pytest.raises(LimitExceeded, match="keeps 60 bytes of files; 41 more would pass its limit of 100"):
        lim.admit_upload(ALICE, 41, 60)
    lim.admit_upload(ALICE, 40, 60)
    with pytest.raises(LimitExceeded, match="over 1 uploads a minute") as err:
        lim.admit_upload(ALICE, 1, 0)
    assert err.value.retry_after_s == 60


def test_an_admin_is_not_limited_and_zero_turns_a_rate_off():
    clock = ManualClock()
    lim = limits(clock, creates=1, uploads=1, active=1, stored=1)
    for _ in range(5):
        lim.admit_prediction(ADMIN, 10)
        lim.admit_upload(ADMIN, 10, 10)
    off = limits(clock, creates=0)
    for _ in range(1000):
        off.admit_prediction(ALICE, 0)
