"""The router's instance pool with its fair queue, one dispatch step at a time (``next_dispatch``, what
``Router._dispatch`` repeats): headroom on instances of many slots. An account alone fills all but the
headroom; another account's first prediction takes a headroom slot at once; instances of fewer slots than
``Headroom.one_in`` (one slot, always) fill as they did without; and over random histories no slot is
overbooked, no more than the headroom idles while work waits, an account holding nothing never waits for a
free slot, and every prediction runs, floods or not."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.fair_queue import FairQueues
from scheduler.instance_pool import InstancePool, next_dispatch
from scheduler.policies import NO_HEADROOM, Headroom
from tests.unit.fakes import QueuedItem, instance

ROUTE = "acme/echo"



class Cluster:
    """A pool of instances of ROUTE and its queue, driven as the router drives them: ``push`` queues and
    dispatches, ``end`` ends a running prediction (measured at 1 s) and dispatches again."""

    def __init__(self, sizes: list[int], headroom: Headroom = Headroom()) -> None:
        self.queue: FairQueues[QueuedItem] = FairQueues()
        self.pool = InstancePool(lambda instance_id: None, 0.0, 0.0, headroom)
        self.pool.adopt([instance(f"i{k}", ROUTE, "A", n) for k, n in enumerate(sizes)])
        self.sizes = sizes
        self.running: dict[str, tuple[QueuedItem, str]] = {}  # prediction id -> (item, instance id), in order
        self._seq = itertools.count()

    def push(self, account: str, n: int = 1) -> list[str]:
        ids = []
        for _ in range(n):
            seq = next(self._seq)
            item = QueuedItem(f"{account}{seq}", ROUTE, 0, seq, account)
            self.queue.push(item)
            ids.append(item.prediction_id)
        self.dispatch()
        return ids

    def end(self, prediction_id: str) -> None:
        item, instance_id = self.running.pop(prediction_id)
        self.queue.done(prediction_id, 1.0)
        self.pool.vacate(instance_id, item)
        self.dispatch()

    def dispatch(self) -> None:
        while self.queue.length(ROUTE):
            taken = next_dispatch(self.queue, self.pool, ROUTE)
            if taken is None:
                break
            item, load = taken
            self.running[item.prediction_id] = (item, load.instance_id)

    def holding(self, account: str) -> int:
        return sum(1 for item, _ in self.running.values() if item.account == account)

    @property
    def free(self) -> int:
        return sum(self.sizes) - len(self.running)


def test_an_account_alone_fills_all_but_the_headroom_and_each_end_frees_a_slot_it_takes_again():
    cluster = Cluster([16, 16])
    cluster.push("a", 1000)
    assert cluster.holding("a") == 30 and cluster.free == 2  # one slot in 16 of each instance kept
    assert sorted(iid for _, iid in cluster.running.values()).count("i0") == 15
    first = next(iter(cluster.running))
    cluster.end(first)
    assert cluster.holding("a") == 30 and first not in cluster.running  # its next went at once
    assert cluster.queue.length(ROUTE) == 1000 - 31


def test_another_accounts_first_prediction_takes_a_headroom_slot_at_once_while_one_floods():
    cluster = Cluster([16, 16])
    cluster.push("a", 1000)
    [b0] = cluster.push("b")
    assert b0 in cluster.running  # no end of a's was needed
    [b1] = cluster.push("b")
    assert b1 in cluster.running  # b's second too: b holds far less than its share
    assert cluster.free == 0
    # While b's run, a's ends free slots that a may not take back: they stay for others.
    for pid in [p for p in cluster.running if p.startswith("a")][:3]:
        cluster.end(pid)
    assert cluster.holding("a") == 28 and cluster.free == 2
    [c0] = cluster.push("c")
    assert c0 in cluster.running
    cluster.end(b0)
    cluster.end(b1)
    cluster.end(c0)
    assert cluster.holding("a") == 30 and cluster.free == 2  # alone again: a has all but the headroom


def test_one_slot_instances_fill_as_before_and_the_other_account_goes_first_at_the_next_end():
    cluster = Cluster([1, 1])
    cluster.push("a", 10)
    assert cluster.holding("a") == 2 and cluster.free == 0  # no headroom on one slot
    [b0] = cluster.push("b")
    assert b0 not in cluster.running  # b waits for a slot: nothing running is preempted
    cluster.end(next(iter(cluster.running)))
    assert b0 in cluster.running  # and takes the first that frees


def test_instances_of_fewer_slots_than_one_in_and_no_headroom_fill_every_slot():
    cluster = Cluster([8, 15])
    cluster.push("a", 100)
    assert cluster.holding("a") == 23 and cluster.free == 0
    cluster = Cluster([16, 16], NO_HEADROOM)
    cluster.push("a", 100)
    assert cluster.holding("a") == 32 and cluster.free == 0


def test_a_pool_holds_nothing_for_an_account_once_its_predictions_ended():
    cluster = Cluster([16])
    cluster.push("a", 20)
    cluster.push("b", 2)
    while cluster.running:
        cluster.end(next(iter(cluster.running)))
    assert cluster.pool.footprint() == {"full_instances": 0, "slot_holders": 0}
    assert cluster.pool.loads["i0"].in_flight == 0


ACCOUNTS = ["a", "b", "c", "d"]
_histories = st.lists(st.one_of(
    st.tuples(st.just("push"), st.sampled_from(ACCOUNTS), st.integers(1, 40)),
    st.tuples(st.just("end"), st.integers(0, 10_000)),
), max_size=60)
_sizes = st.lists(st.sampled_from([1, 2, 4, 16, 17, 32]), min_size=1, max_size=3)


def _check(cluster: Cluster) -> None:
    """What holds after every dispatch."""
    for iid, load in cluster.pool.loads.items():
        assert 0 <= load.in_flight <= load.max_concurrency
        assert load.in_flight == sum(1 for _, i in cluster.running.values() if i == iid)
    headroom = sum(cluster.pool.headroom.of(n) for n in cluster.sizes)
    waiting = {item.account for item in cluster.queue.items()}
    if waiting:
        assert cluster.free <= headroom  # no more than the headroom idles while work waits
    if waiting and cluster.free:
        assert all(cluster.holding(a) for a in waiting)  # one holding nothing never waits for a slot


@settings(max_examples=200, deadline=None)
@given(sizes=_sizes, one_in=st.sampled_from([0, 2, 4, 16]), history=_histories)
def test_over_random_histories_no_slot_is_overbooked_nothing_idles_beyond_headroom_and_all_runs(
        sizes, one_in, history):
    cluster = Cluster(sizes, Headroom(one_in))
    pushed: set[str] = set()
    for op in history:
        if op[0] == "push":
            pushed.update(cluster.push(op[1], op[2]))
        elif cluster.running:
            cluster.end(list(cluster.running)[op[1] % len(cluster.running)])
        _check(cluster)
    for _ in range(len(pushed) + 1):  # nothing new comes: every queued prediction runs in turn
        if not cluster.running:
            break
        pid = next(iter(cluster.running))
        cluster.end(pid)
        _check(cluster)
    assert not cluster.running and len(cluster.queue) == 0
    assert cluster.pool.footprint()["slot_holders"] == 0


@settings(max_examples=200, deadline=None)
@given(sizes=_sizes, one_in=st.sampled_from([2, 4, 16]), floods=st.integers(1, 3),
       ends_before=st.integers(0, 200), order=st.randoms(use_true_random=False))
def test_an_account_arriving_during_floods_runs_at_once_when_a_slot_is_free_else_soon(
        sizes, one_in, floods, ends_before, order):
    """Floods that never let up (each end brings one more of its account's): another account's prediction
    runs at once when a slot is free (always, with one flood and headroom: the issue's case), else as soon
    as the fair queue's turn comes (never starved; typically within an end or two per flood)."""
    cluster = Cluster(sizes, Headroom(one_in))
    names = [f"flood{k}" for k in range(floods)]
    for name in names:
        cluster.push(name, 200)

    def end_one() -> None:
        pid = order.choice(list(cluster.running))
        account = cluster.running[pid][0].account
        cluster.end(pid)
        if account in names:
            cluster.push(account)

    for _ in range(ends_before):
        end_one()
    free_before = cluster.free
    if floods == 1:  # the case: one flood leaves all the headroom free
        assert free_before == sum(Headroom(one_in).of(n) for n in sizes)
    [b0] = cluster.push("b")
    if free_before:
        assert b0 in cluster.running
    else:  # no slot free (no headroom, or floods catching up to their shares went into it)
        for _ in range(10_000):  # the floods go on for ever: b must still come (it holds nothing)
            end_one()
            if b0 in cluster.running:
                break
        assert b0 in cluster.running
