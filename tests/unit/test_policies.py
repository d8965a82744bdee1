"""Properties of ``pick_instance``, the router's choice of where one prediction goes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.policies import InstanceLoad, pick_instance


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
