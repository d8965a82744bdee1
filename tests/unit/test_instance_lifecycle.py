"""The instance state machine, driven by Hypothesis through every sequence of calls an agent can make."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from node.instance import InstanceLifecycle, InvalidTransition
from warmfleet.domain import InstanceState

S = InstanceState
ACCEPTING = {S.IDLE, S.PROCESSING}


class LifecycleMachine(RuleBasedStateMachine):
    """Calls every method in any order and checks it against a reference model of the documented rules:

    - begin: only while accepting (idle or processing) with a free slot; the instance is then processing.
    - end: only with something in flight; the last end makes processing idle and draining stopped.
    - drain: only while accepting; stops at once when nothing is in flight.
    - stop: from anything but processing (work in flight must drain first); stopped stays stopped.
    - loaded and load_failed: only while starting.

    A call the rules refuse raises InvalidTransition and changes nothing (state, in-flight count, error).
    """

    @initialize(max_concurrency=st.integers(1, 4))
    def setup(self, max_concurrency: int) -> None:
        self.lc = InstanceLifecycle(max_concurrency)
        self.state = S.STARTING
        self.in_flight = 0
        self.was_stopped = False

    def _call(self, method, allowed: bool, *args) -> bool:
        before = (self.lc.state, self.lc.in_flight, self.lc.error)
        if allowed:
            method(*args)
            return True
        with pytest.raises(InvalidTransition):
            method(*args)
        assert (self.lc.state, self.lc.in_flight, self.lc.error) == before
        return False

    @rule()
    def begin(self) -> None:
        allowed = self.state in ACCEPTING and self.in_flight < self.lc.max_concurrency
        if self._call(self.lc.begin, allowed):
            self.state, self.in_flight = S.PROCESSING, self.in_flight + 1

    @rule()
    def end(self) -> None:
        if self._call(self.lc.end, self.in_flight > 0):
            self.in_flight -= 1
            if self.in_flight == 0:
                self.state = {S.PROCESSING: S.IDLE, S.DRAINING: S.STOPPED}.get(self.state, self.state)

    @rule()
    def drain(self) -> None:
        if self._call(self.lc.drain, self.state in ACCEPTING):
            self.state = S.DRAINING if self.in_flight else S.STOPPED

    @rule()
    def stop(self) -> None:
        if self._call(self.lc.stop, self.state is not S.PROCESSING):
            self.state = S.STOPPED

    @rule()
    def loaded(self) -> None:
        if self._call(self.lc.loaded, self.state is S.STARTING):
            self.state = S.IDLE

    @rule(error=st.sampled_from(["OSError: no weights", "CUDA out of memory"]))
    def load_failed(self, error: str) -> None:
        if self._call(self.lc.load_failed, self.state is S.STARTING, error):
            self.state = S.FAILED
            assert self.lc.error == error

    @invariant()
    def matches_the_model(self) -> None:
        assert (self.lc.state, self.lc.in_flight) == (self.state, self.in_flight)

    @invariant()
    def in_flight_is_within_bounds(self) -> None:
        assert 0 <= self.lc.in_flight <= self.lc.max_concurrency

    @invariant()
    def processing_iff_work_in_flight_while_accepting(self) -> None:
        if self.lc.accepting:
            assert (self.lc.state is S.PROCESSING) == (self.lc.in_flight > 0)

    @invariant()
    def only_idle_and_processing_accept(self) -> None:
        assert self.lc.accepting == (self.lc.state in ACCEPTING)
        if not self.lc.accepting:  # draining, starting, failed and stopped take no new work
            assert self.lc.free_slots == 0
        else:
            assert self.lc.free_slots == self.lc.max_concurrency - self.lc.in_flight

    @invariant()
    def stopped_is_final(self) -> None:
        if self.was_stopped:
            assert self.lc.state is S.STOPPED
        self.was_stopped = self.lc.state is S.STOPPED


TestLifecycle = LifecycleMachine.TestCase
TestLifecycle.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def test_max_concurrency_below_one_is_refused():
    with pytest.raises(ValueError, match="max_concurrency"):
        InstanceLifecycle(0)


def test_a_draining_instance_finishes_its_work_then_stops():
    lc = InstanceLifecycle(2)
    lc.loaded()
    lc.begin()
    lc.begin()
    lc.drain()
    assert lc.state is S.DRAINING and not lc.accepting
    with pytest.raises(InvalidTransition):
        lc.begin()
    lc.end()
    assert lc.state is S.DRAINING
    lc.end()
    assert lc.state is S.STOPPED and lc.in_flight == 0


def test_a_refused_load_failed_leaves_the_error_unchanged():
    lc = InstanceLifecycle(1)
    lc.loaded()
    with pytest.raises(InvalidTransition):
        lc.load_failed("late failure")
    assert lc.state is S.IDLE
    assert lc.error == ""


def test_loaded_on_a_processing_instance_is_refused():
    lc = InstanceLifecycle(2)
    lc.loaded()
    lc.begin()
    with pytest.raises(InvalidTransition):
        lc.loaded()
    assert lc.state is S.PROCESSING and lc.in_flight == 1
