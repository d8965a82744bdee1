"""``decide``: how many instances a deployment should have. One test per rule, properties, a burst."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.autoscaling import (
    AutoscalingConfig,
    ScalingState,
    decide,
    per_instance_load,
    raw_desired,
)


class FakeAutoscaler:
    """The caller's side: keeps the state and the current target, and a fake clock it advances."""

    def __init__(self, config: AutoscalingConfig, current: int = 0, now: float = 0.0) -> None:
        self.config, self.current, self.now, self.state = config, current, now, ScalingState()

    def tick(self, ongoing: int, at: float | None = None) -> int:
        if at is not None:
            self.now = at
        self.current, self.state = decide(self.config, self.current, ongoing, self.state, self.now)
        return self.current

    def hold(self, ongoing: int, until: float, step: float = 1.0) -> list[tuple[float, int]]:
        """Ticks every ``step`` seconds up to ``until``; returns (time, count) at each change."""
        changes = []
        while self.now + step <= until:
            before = self.current
            self.tick(ongoing, self.now + step)
            if self.current != before:
                changes.append((self.now, self.current))
        return changes


CONFIG = AutoscalingConfig(min_instances=0, max_instances=8, target_ongoing_requests=2,
                           upscale_delay_s=30, downscale_delay_s=600, scale_to_zero_delay_s=900)


# --- Config validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("field,kwargs", [
    ("min_instances", {"min_instances": -1}),
    ("max_instances", {"max_instances": 0}),
    ("max_instances", {"min_instances": 3, "max_instances": 2}),
    ("target_ongoing_requests", {"target_ongoing_requests": 0}),
    ("target_ongoing_requests", {"target_ongoing_requests": float("nan")}),
    ("upscale_delay_s", {"upscale_delay_s": -1}),
    ("downscale_delay_s", {"downscale_delay_s": -0.5}),
    ("scale_to_zero_delay_s", {"scale_to_zero_delay_s": -1}),
])
def test_config_refuses_a_bad_field_and_names_it(field, kwargs):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        AutoscalingConfig(**kwargs)


def test_scale_to_zero_delay_defaults_to_the_downscale_delay():
    assert AutoscalingConfig(downscale_delay_s=123).zero_delay_s == 123
    assert AutoscalingConfig(downscale_delay_s=123, scale_to_zero_delay_s=7).zero_delay_s == 7


@pytest.mark.parametrize("field,args", [("current", (-1, 0)), ("ongoing", (1, -1))])
def test_decide_refuses_negative_counts_and_names_them(field, args):
    with pytest.raises(ValueError, match=f"^{field}:"):
        decide(CONFIG, *args, ScalingState(), 0.0)


# --- Bounds and the raw count ----------------------------------------------------------------------------

def test_raw_count_is_ceil_of_ongoing_over_target_within_bounds():
    config = AutoscalingConfig(min_instances=1, max_instances=5, target_ongoing_requests=2.5)
    assert [raw_desired(config, n) for n in (0, 1, 2, 3, 5, 6, 12, 13, 1000)] == [1, 1, 1, 2, 2, 3, 5, 5, 5]


def test_per_instance_load():
    assert per_instance_load(6, 3) == 2.0
    assert per_instance_load(0, 0) == 0.0
    assert per_instance_load(1, 0) == math.inf


# --- Cold boot and bound correction ----------------------------------------------------------------------

def test_cold_boot_jumps_at_once_to_what_the_load_asks():
    scaler = FakeAutoscaler(CONFIG)
    assert scaler.tick(0, at=0) == 0
    assert scaler.tick(1, at=1) == 1  # the first request: no upscale delay
    other = FakeAutoscaler(CONFIG)
    assert other.tick(5, at=0) == 3  # ceil(5 / 2), not just 1


def test_a_current_count_outside_the_bounds_is_corrected_at_once():
    config = AutoscalingConfig(min_instances=2, max_instances=4)
    assert decide(config, 7, 100, ScalingState(), 0.0)[0] == 4
    assert decide(config, 0, 0, ScalingState(), 0.0)[0] == 2
    assert decide(config, 1, 0, ScalingState(), 0.0)[0] == 2


# --- Upscale -------------------------------------------------------------------------------------------

def test_upscale_waits_the_delay_then_jumps_straight_to_raw():
    scaler = FakeAutoscaler(CONFIG, current=1)
    changes = scaler.hold(12, until=100)  # raw = 6 from t=1
    assert changes == [(31.0, 6)]


def test_upscale_jumps_to_the_raw_of_the_deciding_call():
    scaler = FakeAutoscaler(CONFIG, current=1)
    scaler.tick(4, at=0)   # raw 2: pending up from 0
    scaler.tick(10, at=20)  # raw 5: still up, same timer
    assert scaler.tick(16, at=30) == 8  # raw 8 at the deciding call


def test_a_dip_to_equality_resets_the_upscale_timer():
    scaler = FakeAutoscaler(CONFIG, current=2)
    scaler.tick(10, at=0)
    scaler.tick(4, at=20)  # raw == current: timer dropped
    assert scaler.tick(10, at=35) == 2
    assert scaler.tick(10, at=64) == 2
    assert scaler.tick(10, at=65) == 5  # 30 s after t=35


def test_a_reversal_resets_the_upscale_timer():
    scaler = FakeAutoscaler(CONFIG, current=2)
    scaler.tick(10, at=0)
    scaler.tick(1, at=20)  # raw 1 < 2: now pending down
    assert scaler.tick(10, at=40) == 2
    assert scaler.tick(10, at=70) == 5


def test_after_a_change_the_next_upscale_waits_a_full_delay():
    scaler = FakeAutoscaler(CONFIG, current=1)
    scaler.tick(4, at=0)
    assert scaler.tick(4, at=30) == 2
    assert scaler.tick(8, at=31) == 2  # not at once, though raw > current has held since t=0
    assert scaler.tick(8, at=61) == 4


# --- Downscale and scale to zero -------------------------------------------------------------------------

def test_downscale_waits_the_delay_then_goes_to_raw():
    scaler = FakeAutoscaler(CONFIG, current=6)
    assert scaler.hold(4, until=700) == [(601.0, 2)]  # raw 2 from t=1


def test_after_a_downscale_a_further_drop_waits_a_full_delay():
    scaler = FakeAutoscaler(CONFIG, current=6)
    scaler.tick(6, at=0)
    assert scaler.tick(6, at=600) == 3
    assert scaler.tick(2, at=601) == 3  # raw 1 < 3, but the timer started again at the change
    assert scaler.tick(2, at=1200) == 3
    assert scaler.tick(2, at=1201) == 1


def test_a_burst_during_the_downscale_wait_resets_it():
    scaler = FakeAutoscaler(CONFIG, current=6)
    scaler.tick(4, at=0)
    scaler.tick(12, at=500)  # raw == current
    assert scaler.tick(4, at=600) == 6
    assert scaler.tick(4, at=1199) == 6
    assert scaler.tick(4, at=1200) == 2


def test_load_gone_goes_to_one_after_the_downscale_delay_and_to_zero_after_the_idle_delay():
    scaler = FakeAutoscaler(CONFIG, current=4)
    assert scaler.hold(0, until=2000) == [(601.0, 1), (901.0, 0)]  # idle since t=1


def test_a_short_scale_to_zero_delay_goes_straight_to_zero():
    config = AutoscalingConfig(max_instances=8, downscale_delay_s=600, scale_to_zero_delay_s=60)
    scaler = FakeAutoscaler(config, current=4)
    assert scaler.hold(0, until=1000) == [(61.0, 0)]


def test_one_request_during_the_idle_wait_restarts_the_idle_timer():
    config = AutoscalingConfig(max_instances=8, downscale_delay_s=10, scale_to_zero_delay_s=100)
    scaler = FakeAutoscaler(config, current=1)
    scaler.tick(0, at=0)
    scaler.tick(1, at=90)  # raw == current: nothing pending, and no longer idle
    assert scaler.tick(0, at=100) == 1
    assert scaler.tick(0, at=199) == 1
    assert scaler.tick(0, at=200) == 0


def test_never_below_min_so_never_zero_with_a_min():
    config = AutoscalingConfig(min_instances=2, max_instances=8, downscale_delay_s=1, scale_to_zero_delay_s=1)
    scaler = FakeAutoscaler(config, current=8)
    scaler.hold(0, until=100)
    assert scaler.current == 2


def test_zero_delays_act_on_the_first_call():
    config = AutoscalingConfig(max_instances=8, upscale_delay_s=0, downscale_delay_s=0)
    assert decide(config, 1, 16, ScalingState(), 0.0)[0] == 8
    assert decide(config, 8, 2, ScalingState(), 0.0)[0] == 1
    assert decide(config, 8, 0, ScalingState(), 0.0)[0] == 0


# --- Burst simulation ----------------------------------------------------------------------------------

def test_burst_scales_up_to_max_after_the_upscale_delay_and_back_to_zero_after_the_idle_delay():
    scaler = FakeAutoscaler(CONFIG)
    timeline = scaler.hold(0, until=10)
    timeline += scaler.hold(2, until=60)      # trickle: cold boot to 1 at t=11
    timeline += scaler.hold(40, until=400)    # burst from t=61: raw 20, clamped to 8, after 30 s
    timeline += scaler.hold(6, until=1200)    # calmer from t=401: raw 3 after 600 s
    timeline += scaler.hold(0, until=3000)    # quiet from t=1201: 1 after 600 s, 0 after 900 s
    assert timeline == [(11.0, 1), (91.0, 8), (1001.0, 3), (1801.0, 1), (2101.0, 0)]


# --- Properties over random load sequences ---------------------------------------------------------------

configs = st.builds(
    lambda lo, extra, target, up, down, zero: AutoscalingConfig(lo, max(lo, 1) + extra, target, up, down, zero),
    st.integers(0, 3), st.integers(0, 6), st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    st.sampled_from([0.0, 5.0, 30.0]), st.sampled_from([0.0, 20.0, 60.0]),
    st.sampled_from([None, 0.0, 10.0, 90.0]),
)
@st.composite
def steps(draw) -> list[tuple[float, int]]:
    """(seconds since the previous call, ongoing) per call. Load holds a level for a while, so that
    delays can elapse, jittering around it, so that raw moves under a pending timer; then it moves."""
    out = []
    for _ in range(draw(st.integers(1, 10))):
        dt = draw(st.sampled_from([0.5, 1.0, 5.0, 20.0]))
        level = draw(st.one_of(st.just(0), st.integers(0, 30)))
        jitter = draw(st.sampled_from([0, 1, 3]))
        for noise in draw(st.lists(st.integers(-jitter, jitter), min_size=1, max_size=30)):
            out.append((dt, max(level + noise, 0)))
    return out


def expected_from_history(config: AutoscalingConfig, history: list[dict], current: int, ongoing: int,
                          now: float) -> int:
    """The rules, read off the history of past calls (a second model, not the implementation's timers)."""
    raw = raw_desired(config, ongoing)
    if current == 0 and ongoing > 0:
        return raw
    if config.clamp(current) != current:
        return config.clamp(current)
    if raw == current:
        return current
    last_change = max((k for k, h in enumerate(history) if h["desired"] != h["current"]), default=-1)
    since_change = history[last_change + 1:]
    up = raw > current

    def held_since(same) -> float:
        start = now
        for h in reversed(since_change):
            if not same(h):
                break
            start = h["now"]
        return now - start

    if up:
        return raw if held_since(lambda h: h["raw"] > current) >= config.upscale_delay_s else current
    if raw == 0:
        idle_start = now
        for h in reversed(history):  # the idle timer spans earlier changes
            if h["ongoing"] != 0:
                break
            idle_start = h["now"]
        if now - idle_start >= config.zero_delay_s:
            return 0
    if held_since(lambda h: h["raw"] < current) >= config.downscale_delay_s and max(raw, 1) < current:
        return max(raw, 1)
    return current


@settings(max_examples=300, deadline=None)
@given(configs, st.integers(0, 10), steps(), st.one_of(st.none(), configs), st.integers(0, 200))
def test_random_load_sequences_keep_every_guarantee(config, start, seq, new_config, switch_at):
    """Bounds, never zero under load, and changes only as fast as the delays allow: each decision
    equals what the rules say given the history, except the cold-boot and bound-correction cases.
    Midway the config may change (a redeploy), which puts ``current`` out of bounds."""
    current, state, now, history = start, ScalingState(), 0.0, []
    for k, (dt, ongoing) in enumerate(seq):
        if new_config is not None and k == switch_at:
            config = new_config
        now += dt
        desired, state = decide(config, current, ongoing, state, now)
        assert config.min_instances <= desired <= config.max_instances
        if ongoing > 0:
            assert desired >= 1
        assert desired == expected_from_history(config, history, current, ongoing, now)
        if desired > current > 0 and config.clamp(current) == current:
            assert desired == raw_desired(config, ongoing)  # upscale jumps to raw
        history.append({"now": now, "ongoing": ongoing, "raw": raw_desired(config, ongoing),
                        "current": current, "desired": desired})
        current = desired


@given(configs, steps().map(lambda seq: [ongoing for _, ongoing in seq]))
def test_changes_are_spaced_by_their_delays_except_cold_boot(config, loads):
    """Calls one second apart, config fixed, starting at min: an upscale comes at least
    upscale_delay_s after the previous change, a downscale to n > 0 at least downscale_delay_s after
    it, a scale to zero only after zero_delay_s of no load; a cold boot (from 0, under load) at once."""
    scaler = FakeAutoscaler(config, current=config.min_instances)
    last_change_at, idle_since = -math.inf, None
    for t, ongoing in enumerate(loads):
        idle_since = (t if idle_since is None else idle_since) if ongoing == 0 else None
        before = scaler.current
        after = scaler.tick(ongoing, at=float(t))
        if after == before:
            continue
        if before == 0:
            assert ongoing > 0 and after == raw_desired(config, ongoing)  # cold boot
        elif after > before:
            assert t - last_change_at >= config.upscale_delay_s
        elif after > 0:
            assert t - last_change_at >= config.downscale_delay_s
        else:
            assert idle_since is not None and t - idle_since >= config.zero_delay_s
        last_change_at = t
