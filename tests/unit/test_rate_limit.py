"""The token bucket behind the per-account rate limits, on a clock the test moves."""

from __future__ import annotations

from gateway.rate_limit import Decision, RateLimiter
from tests.unit.fakes import ManualClock


def test_a_full_minute_bursts_then_refuses_with_the_wait_for_one_token():
    clock = ManualClock()
    limiter = RateLimiter(60, clock)  # one a second
    assert all(limiter.take("alice").allowed for _ in range(60))
    refused = limiter.take("alice")
    assert refused == Decision(False, 1)


def test_retry_after_is_the_time_until_a_token_is_back_rounded_up():
    clock = ManualClock()
    limiter = RateLimiter(3, clock)  # one every 20 s
    for _ in range(3):
        assert limiter.take("bob").allowed
    assert limiter.take("bob").retry_after_s == 20
    clock.now += 5.5
    assert limiter.take("bob").retry_after_s == 15  # 14.5 s left, rounded up
    clock.now += 14.5
    assert limiter.take("bob").allowed
    assert not limiter.take("bob").allowed


def test_refused_takes_cost_nothing():
    clock = ManualClock()
    limiter = RateLimiter(6, clock)  # one every 10 s
    for _ in range(6):
        limiter.take("carol")
    for _ in range(50):
        assert not limiter.take("carol").allowed
    clock.now += 10
    assert limiter.take("carol").allowed


def test_the_bucket_refills_only_up_to_its_size():
    clock = ManualClock()
    limiter = RateLimiter(2, clock)
    limiter.take("dave")
    clock.now += 3600  # an hour idle fills two tokens, not 120
    assert [limiter.take("dave").allowed for _ in range(3)] == [True, True, False]


def test_callers_have_separate_buckets():
    limiter = RateLimiter(1, ManualClock())
    assert limiter.take("erin").allowed
    assert not limiter.take("erin").allowed
    assert limiter.take("frank").allowed


def test_zero_turns_the_limit_off():
    limiter = RateLimiter(0, ManualClock())
    assert all(limiter.take("gina").allowed for _ in range(10_000))
