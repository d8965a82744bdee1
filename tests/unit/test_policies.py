"""Properties of ``pick_instance``, the router's choice of where one prediction goes, and of the headroom
rule (``Headroom``, ``admits``): whether the account whose turn it is may take one of a route's slots."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.policies import (
    HEADROOM_ONE_IN, NO_HEADROOM, Headroom, InstanceLoad, RouteSlots, admits, pick_instance, route_slots,
)


@st.composite
def loads(draw) -> InstanceLoad:
    max_concurrency = draw(st.integers(1, 8))
    return InstanceLoad(
        instance_id=draw(st.text("abcdef", min_size=1, max_size=3)),
        node_id=draw(st.sampled_from(["n1", "n2"])),
        in_flight=draw(st.integers(0, max_concurrency + 2)),  # over capacity happens after a table change
        max_concurrency=max_concurrency,
    )


candidates = st.lists(loads(), max_size=12)


@given(candidates)
def test_never_picks_an_instance_without_a_free_slot(cands):
    """Whatever it returns has in_flight < max_concurrency, and is one of the candidates."""
    choice = pick_instance(cands)
    if choice is not None:
        assert choice.free_slots > 0
        assert choice in cands


@given(candidates)
def test_returns_none_only_when_no_candidate_has_a_free_slot(cands):
    """None means full: if any candidate has room, some instance is picked."""
    choice = pick_instance(cands)
    assert (choice is None) == all(c.free_slots <= 0 for c in cands)


@given(candidates)
def test_picks_the_lowest_load_ratio_then_most_free_slots_then_id(cands):
    """No candidate with room has a lower in_flight/max_concurrency ratio than the choice; among equal
    ratios none has more free slots; among those the smallest id wins. So the choice is deterministic
    and does not depend on the order the candidates come in."""
    choice = pick_instance(cands)
    free = [c for c in cands if c.free_slots > 0]
    if choice is None:
        return
    for c in free:
        # Cross-multiplied to compare ratios exactly.
        assert choice.in_flight * c.max_concurrency <= c.in_flight * choice.max_concurrency
        if choice.in_flight * c.max_concurrency == c.in_flight * choice.max_concurrency:
            assert choice.free_slots >= c.free_slots
            if choice.free_slots == c.free_slots:
                assert choice.instance_id <= c.instance_id
    assert pick_instance(list(reversed(cands))).instance_id == choice.instance_id


def test_prefers_a_big_half_empty_instance_over_a_small_one_with_more_absolute_room():
    """The ratio, not the raw count of free slots, decides: 1/4 loaded beats 1/2 loaded."""
    small = InstanceLoad("small", "n1", in_flight=1, max_concurrency=2)
    big = InstanceLoad("big", "n1", in_flight=1, max_concurrency=4)
    full = InstanceLoad("full", "n1", in_flight=3, max_concurrency=3)
    assert pick_instance([small, full, big]) == big
    assert pick_instance([full]) is None
    assert pick_instance([]) is None


# Headroom


def test_one_slot_in_sixteen_is_headroom_and_instances_of_fewer_slots_have_none():
    assert HEADROOM_ONE_IN == 16
    assert [Headroom().of(n) for n in (0, 1, 2, 4, 15, 16, 31, 32, 64, 100)] == [0, 0, 0, 0, 0, 1, 1, 2, 4, 6]
    assert [Headroom(4).of(n) for n in (1, 3, 4, 8)] == [0, 0, 1, 2]
    assert [Headroom(2).of(n) for n in (1, 2, 3)] == [0, 1, 1]  # never all of an instance's slots
    assert [NO_HEADROOM.of(n) for n in (1, 16, 64)] == [0, 0, 0]
    with pytest.raises(ValueError, match="one_in"):
        Headroom(1)  # every slot headroom: no one could ever take one


@given(st.integers(0, 2048), st.sampled_from([0, 2, 3, 4, 8, 16, 32]))
def test_an_account_alone_loses_at_most_one_slot_in_one_in(slots, one_in):
    reserved = Headroom(one_in).of(slots)
    assert 0 <= reserved < max(1, slots)
    if one_in:
        assert reserved * one_in <= slots


def test_route_slots_sums_the_instances_slots_headroom_and_free_slots():
    loads = [InstanceLoad("i1", "n1", 15, 16), InstanceLoad("i2", "n2", 3, 32),
             InstanceLoad("i3", "n2", 1, 1)]
    assert route_slots(loads, Headroom()) == RouteSlots(slots=49, headroom=3, free=30)
    assert route_slots(loads, NO_HEADROOM) == RouteSlots(slots=49, headroom=0, free=30)
    over = [InstanceLoad("i1", "n1", 5, 4)]  # over its slots after a table lowered them: none free
    assert route_slots(over, Headroom()) == RouteSlots(4, 0, 0)


def _fill(slots: RouteSlots, held: dict[str, int], account: str, taking: int) -> int:
    """How many of ``taking`` predictions ``account`` gets, one slot at a time, as ``admits`` decides."""
    got = 0
    for _ in range(taking):
        holders = len([a for a, n in held.items() if n])
        if not admits(slots, held.get(account, 0), holders):
            break
        held[account] = held.get(account, 0) + 1
        slots = RouteSlots(slots.slots, slots.headroom, slots.free - 1)
        got += 1
    return got


def test_an_account_alone_fills_all_but_the_headroom_and_a_second_accounts_first_takes_it_at_once():
    slots = RouteSlots(slots=32, headroom=2, free=32)  # two instances of 16 slots
    held: dict[str, int] = {}
    assert _fill(slots, held, "a", 1000) == 30  # alone: all but the headroom, and no more
    left = RouteSlots(32, 2, 2)
    assert not admits(left, 30, 1)
    assert admits(left, 0, 1)  # b holds nothing: admitted at once
    assert _fill(left, held, "b", 1) == 1
    # a's next end frees a slot: within the headroom, a (29 of 30 between 2 accounts) may not take it.
    held["a"] = 29
    assert not admits(RouteSlots(32, 2, 2), 29, 2)
    assert admits(RouteSlots(32, 2, 2), 1, 2)  # b's second, while its first runs: under its share (15)
    assert admits(RouteSlots(32, 2, 3), 29, 2)  # beyond the headroom anyone may: a takes it back


def test_without_headroom_admits_whoever_has_a_free_slot_and_no_one_without():
    assert admits(RouteSlots(2, 0, 1), 1, 1)  # a one-slot instance each: today's behaviour
    assert not admits(RouteSlots(2, 0, 0), 0, 1)
    assert not admits(RouteSlots(32, 2, 0), 0, 2)


def test_several_floods_holding_their_shares_leave_the_headroom_to_an_account_holding_nothing():
    # 31 slots beyond the headroom between three floods: 11, 10, 10. Each holds its share (31 / 3,
    # rounded down) or more, so none may take a headroom slot; a fourth account holding nothing may.
    for held in (10, 11):
        assert not admits(RouteSlots(33, 2, 2), held, 3)
    assert admits(RouteSlots(33, 2, 2), 9, 3)  # one behind its share catches up
    assert admits(RouteSlots(33, 2, 2), 0, 3)


def test_an_account_holding_nothing_is_admitted_however_many_hold_slots():
    assert admits(RouteSlots(32, 2, 1), 0, 200)  # more accounts than slots: each one's first still goes
    assert not admits(RouteSlots(32, 2, 1), 1, 200)


@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4), one_in=st.sampled_from([2, 4, 16]),
       accounts=st.integers(1, 6))
def test_floods_filled_in_turn_leave_the_headroom_idle_and_no_more(sizes, one_in, accounts):
    """Accounts that each want every slot take them in turn as ``admits`` lets them, until none may:
    then no more than the headroom is free, and all of it is (none of them went into it, as they all
    hold their shares, unless there are more of them than slots); an account alone ends with all but
    the headroom; an account holding nothing gets one of the free slots."""
    loads = [InstanceLoad(f"i{k}", "n", 0, n) for k, n in enumerate(sizes)]
    state = route_slots(loads, Headroom(one_in))
    held = dict.fromkeys(range(accounts), 0)
    progress = True
    while progress:
        progress = False
        for account in sorted(held, key=lambda a: (held[a], a)):  # the fair queue: least served first
            if admits(state, held[account], sum(1 for n in held.values() if n)):
                held[account] += 1
                state = RouteSlots(state.slots, state.headroom, state.free - 1)
                progress = True
                break
    assert state.free >= 0
    assert state.free <= state.headroom  # the rule kept no more than the headroom idle
    if accounts <= state.slots - state.headroom:  # (more accounts than slots: each one's first goes)
        assert state.free == state.headroom  # and the floods left all of it
    if accounts == 1:
        assert held[0] == state.slots - state.headroom
    if state.free:
        assert admits(state, 0, accounts)  # a newcomer's first prediction: at once
