"""A runner instance's life as an explicit state machine with checked transitions.

    starting ──▶ idle ◀──▶ processing
        │         │  ╲        │
        ▼         ▼   ╲       ▼
      failed   draining ──▶ stopped

An instance is ``processing`` while at least one prediction runs on it and ``idle`` when none does;
``draining`` takes no new work and stops when its last prediction ends.
"""

from __future__ import annotations

from warmfleet.domain import InstanceState


_ALLOWED: dict[InstanceState, frozenset[InstanceState]] = {
    InstanceState.STARTING: frozenset({InstanceState.IDLE, InstanceState.FAILED, InstanceState.STOPPED}),
    InstanceState.IDLE: frozenset({InstanceState.PROCESSING, InstanceState.DRAINING, InstanceState.STOPPED}),
    InstanceState.PROCESSING: frozenset({InstanceState.IDLE, InstanceState.DRAINING, InstanceState.FAILED}),
    InstanceState.DRAINING: frozenset({InstanceState.STOPPED}),
    InstanceState.FAILED: frozenset({InstanceState.STOPPED}),
    InstanceState.STOPPED: frozenset(),
}


class InvalidTransition(Exception):
    """A transition the state machine does not allow: a bug in the caller, never a client's error."""


class InstanceLifecycle:
    """State and in-flight count of one instance; every change goes through a checked transition."""

    def __init__(self, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.state = InstanceState.STARTING
        self.in_flight = 0
        self.error = ""

    def _move(self, to: InstanceState) -> None:
        if to not in _ALLOWED[self.state]:
            raise InvalidTransition(f"{self.state.value} -> {to.value}")
        self.state = to

    @property
    def accepting(self) -> bool:
        return self.state in (InstanceState.IDLE, InstanceState.PROCESSING)

    @property
    def free_slots(self) -> int:
        return self.max_concurrency - self.in_flight if self.accepting else 0

    def _expect(self, state: InstanceState, action: str) -> None:
        if self.state is not state:
            raise InvalidTransition(f"{action} on {self.state.value}")

    def loaded(self) -> None:
        self._expect(InstanceState.STARTING, "loaded")
        self._move(InstanceState.IDLE)

    def load_failed(self, error: str) -> None:
        self._expect(InstanceState.STARTING, "load_failed")
        self._move(InstanceState.FAILED)
        self.error = error

    def begin(self) -> None:
        """A prediction starts. Only an accepting instance with a free slot takes one."""
        if self.free_slots <= 0:
            raise InvalidTransition(f"begin on {self.state.value} with {self.in_flight} in flight")
        if self.state is InstanceState.IDLE:
            self._move(InstanceState.PROCESSING)
        self.in_flight += 1

    def end(self) -> None:
        """A prediction ended (whatever its outcome)."""
        if self.in_flight <= 0:
            raise InvalidTransition(f"end with nothing in flight ({self.state.value})")
        self.in_flight -= 1
        if self.in_flight == 0:
            if self.state is InstanceState.PROCESSING:
                self._move(InstanceState.IDLE)
            elif self.state is InstanceState.DRAINING:
                self._move(InstanceState.STOPPED)

    def drain(self) -> None:
        self._move(InstanceState.DRAINING)
        if self.in_flight == 0:
            self._move(InstanceState.STOPPED)

    def stop(self) -> None:
        if self.state is not InstanceState.STOPPED:
            self._move(InstanceState.STOPPED)
