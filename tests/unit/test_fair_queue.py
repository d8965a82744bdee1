"""The router's fair queues on their own: strict priority bands, accounts served in turn within a band by
the compute they were served (the measured predict times), no credit banked while idle, removal with
compaction, and random histories that check every item pops exactly once, priority is never inverted and
the compute served to backlogged accounts stays within twice the largest charge of each other."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.fair_queue import DEFAULT_COST_S, FairQueues
from tests.unit.fakes import QueuedItem

ROUTE = "acme/echo"



class Feeder:
    """Pushes items with increasing ``seq``, named by account and count ("a0", "a1", "b0"...)."""

    def __init__(self, queue: FairQueues[QueuedItem]) -> None:
        self.queue = queue
        self._seq = itertools.count()
        self._per: dict[str, int] = {}
        self.made: dict[str, QueuedItem] = {}

    def push(self, account: str, n: int = 1, priority: int = 0, route: str = ROUTE) -> list[str]:
        ids = []
        for _ in range(n):
            k = self._per.get(account, 0)
            self._per[account] = k + 1
            pid = f"{account}{k}" if priority == 0 else f"{account}{k}@{priority}"
            self.made[pid] = QueuedItem(pid, route, priority, next(self._seq), account)
            self.queue.push(self.made[pid])
            ids.append(pid)
        return ids


def popped(queue: FairQueues[QueuedItem], n: int, route: str = ROUTE, ran_s: dict[str, float] | None = None
           ) -> list[str]:
    """The next ``n`` pops, each done at once (one instance with one slot) with the time it ran: its
    account's in ``ran_s``, else the route's estimate (no correction)."""
    out = []
    for _ in range(n):
        item = queue.pop(route)
        if item is None:
            break
        out.append(item.prediction_id)
        queue.done(item.prediction_id, (ran_s or {}).get(item.account, queue.estimate(route)))
    return out


def test_higher_priority_goes_first_and_one_accounts_equal_priorities_keep_arrival_order():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a", 2)
    feed.push("a", 1, priority=5)
    feed.push("b", 1, priority=2)
    feed.push("a", 1, priority=5)

    assert popped(queue, 10) == ["a2@5", "a3@5", "b0@2", "a0", "a1"]
    assert queue.pop(ROUTE) is None and len(queue) == 0


def test_a_higher_band_arriving_later_still_goes_first_whatever_the_lower_bands_accounts_were_served():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a", 50)
    popped(queue, 10)
    feed.push("b", 2, priority=1)
    assert popped(queue, 3) == ["b0@1", "b1@1", "a10"]


def test_two_backlogged_accounts_are_served_in_turn():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a", 4)
    feed.push("b", 4)
    assert popped(queue, 8) == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]


def test_a_flood_of_a_thousand_delays_another_accounts_predictions_by_at_most_one():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a", 1000)
    served_a = len(popped(queue, 37))
    for _ in range(20):  # b sends one now and then, as interactive traffic does
        [b] = feed.push("b")
        before_b = popped(queue, 2)
        assert b in before_b, before_b  # next, or after at most one of a's
        served_a += len(before_b) - 1
        served_a += len(popped(queue, 11))
    assert served_a == 37 + 20 * 12  # a lost nothing but b's turns: the instance never idled
    assert queue.length(ROUTE) == 1000 - served_a


def test_an_account_whose_predictions_run_three_times_as_long_is_served_a_third_as_often():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("slow", 200)
    feed.push("fast", 200)
    ran = {"slow": 3.0, "fast": 1.0}

    order = popped(queue, 120, ran_s=ran)

    slow = sum(p.startswith("slow") for p in order)
    fast = len(order) - slow
    assert 3 * slow - fast in range(-4, 5), (slow, fast)  # the same compute each, within a charge
    # At any point the two were served compute within one slow prediction (and one estimate) of each other.
    for k in range(1, len(order) + 1):
        head = order[:k]
        gap = abs(3.0 * sum(p.startswith("slow") for p in head) - sum(p.startswith("fast") for p in head))
        assert gap <= 3.0 + queue.estimate(ROUTE) + 1e-9, (k, gap)


def test_the_charge_is_the_routes_moving_average_of_predict_times_or_the_default_before_any():
    queue: FairQueues[QueuedItem] = FairQueues(smoothing=0.5)
    assert queue.estimate(ROUTE) == DEFAULT_COST_S
    queue.observe(ROUTE, 2.0)
    assert queue.estimate(ROUTE) == 2.0
    queue.observe(ROUTE, 4.0)
    assert queue.estimate(ROUTE) == 3.0
    queue.observe(ROUTE, float("nan"))  # a broken measure is ignored
    queue.observe(ROUTE, -1.0)
    assert queue.estimate(ROUTE) == 3.0 and queue.estimate("acme/other") == DEFAULT_COST_S

    feed = Feeder(queue)
    feed.push("a", 1)
    item = queue.pop(ROUTE)
    queue.done(item.prediction_id, 5.0)  # what a finished prediction ran feeds its route's estimate
    assert queue.estimate(ROUTE) == 4.0


def test_an_idle_account_banks_no_credit_and_the_one_served_meanwhile_is_not_punished_for_it():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a", 300)
    popped(queue, 100)  # a alone, while b had nothing queued
    feed.push("b", 100)

    order = popped(queue, 20)

    assert order == [p for pair in zip((f"b{i}" for i in range(10)), (f"a{i}" for i in range(100, 110)))
                     for p in pair]  # in turn from the start: b does not get 100 in a row


def test_an_account_with_only_a_prediction_running_banks_no_credit_either():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a")
    a0 = queue.pop(ROUTE)  # a long one: it runs while b is served 50 times
    feed.push("b", 100)
    popped(queue, 50)
    feed.push("a", 10)

    order = popped(queue, 10)

    assert order == ["a1", "b50", "a2", "b51", "a3", "b52", "a4", "b53", "a5", "b54"], order
    queue.done(a0.prediction_id, 1.0)


def test_a_prediction_that_ran_long_is_charged_what_it_ran_to_its_account():
    queue: FairQueues[QueuedItem] = FairQueues()
    queue.observe(ROUTE, 1.0)
    feed = Feeder(queue)
    feed.push("a")
    a0 = queue.pop(ROUTE)
    feed.push("b", 40)
    feed.push("a")  # while a0 runs: a's record outlives its queue, so what a0 runs still counts
    queue.done(a0.prediction_id, 10.5)  # charged 1 s (the estimate) at dispatch, it ran 10.5 s

    order = popped(queue, 30, ran_s={"b": 1.0})

    # b, charged 1 s each, is served about a0's 10.5 s before a's next; by count a1 would be second.
    assert 10 <= order.index("a1") <= 12, order
    assert order.count("a1") == 1  # and then it is served, not starved


def test_an_account_with_nothing_queued_or_running_is_forgotten_debt_and_all():
    queue: FairQueues[QueuedItem] = FairQueues()
    queue.observe(ROUTE, 1.0)
    feed = Feeder(queue)
    feed.push("a")
    a0 = queue.pop(ROUTE)
    feed.push("b", 40)
    queue.done(a0.prediction_id, 10.5)
    assert queue.footprint()["accounts"] == 1  # b's: a holds nothing now
    feed.push("a")  # afresh, at the band's virtual time: level with b, whose head came first

    assert popped(queue, 3, ran_s={"b": 1.0}) == ["b0", "a1", "b1"]


def test_a_prediction_that_did_not_run_is_refunded_and_keeps_its_place():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a", 2)
    feed.push("b", 2)
    a0 = queue.pop(ROUTE)
    queue.refund(a0.prediction_id)  # its instance turned it away
    queue.push(a0)  # back, with its seq

    assert popped(queue, 4) == ["a0", "b0", "a1", "b1"]


def test_a_prediction_that_ran_unmeasured_is_charged_the_estimate():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a", 2)
    feed.push("b", 2)
    a0 = queue.pop(ROUTE)
    queue.done(a0.prediction_id, None)
    assert queue.estimate(ROUTE) == DEFAULT_COST_S  # nothing measured, nothing learnt

    assert popped(queue, 3) == ["b0", "a1", "b1"]


def test_removing_an_accounts_head_passes_its_turn_to_its_next_prediction_keyed_by_that_ones_arrival():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a")
    feed.push("b")
    feed.push("a")
    assert queue.remove("a0").prediction_id == "a0"
    assert queue.remove("a0") is None

    assert popped(queue, 3) == ["b0", "a1"]  # a and b tie in compute: b's head came first now


def test_removed_entries_are_compacted_and_nothing_is_held_once_nothing_is_queued_or_running():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    [keeper] = feed.push("k")
    for i in range(1000):
        [pid] = feed.push("a" if i % 2 else "k")
        queue.remove(pid)
    assert queue.footprint()["queued"] == 1 and queue.entries() <= 3
    assert queue.footprint()["ready_entries"] <= 3

    many = feed.push("a", 500)
    for pid in many[:-1]:  # all but the newest, oldest first: each a new head
        queue.remove(pid)
    assert len(queue) == 2 and queue.entries() <= 5 and queue.footprint()["ready_entries"] <= 5

    running = [queue.pop(ROUTE), queue.pop(ROUTE)]
    assert {r.prediction_id for r in running} == {keeper, many[-1]}
    assert queue.footprint()["accounts"] == 2 and queue.footprint()["charges"] == 2  # they still run
    for item in running:
        queue.done(item.prediction_id, 0.5)
    assert queue.footprint() == dict.fromkeys(queue.footprint(), 0)
    assert queue.routes() == [ROUTE]  # kept for the next burst...
    queue.forget(ROUTE)
    assert queue.routes() == [] and queue.estimate(ROUTE) == DEFAULT_COST_S  # ...until forgotten


def test_counts_items_and_drain():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a", 2)
    feed.push("b", 1, priority=3)
    feed.push("a", 1, route="acme/other")
    assert queue.counts() == {ROUTE: 3, "acme/other": 1} and queue.length(ROUTE) == 3
    assert sorted(i.prediction_id for i in queue.items()) == ["a0", "a1", "a2", "b0@3"]

    assert [i.prediction_id for i in queue.drain(ROUTE)] == ["b0@3", "a0", "a1"]
    assert queue.counts() == {"acme/other": 1} and queue.routes() == ["acme/other"]
    assert queue.footprint()["charges"] == 0 and queue.footprint()["accounts"] == 1


def test_a_forgotten_routes_late_done_is_ignored_and_an_unknown_done_does_nothing():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a")
    item = queue.pop(ROUTE)
    queue.forget(ROUTE)
    queue.done(item.prediction_id, 1.0)
    queue.done("never-popped", 1.0)
    assert queue.footprint() == dict.fromkeys(queue.footprint(), 0)


# Only some accounts admitted (the router's headroom rule)


def test_a_pop_that_admits_only_some_accounts_serves_the_least_served_of_them_and_the_others_keep_turn():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a", 10)
    feed.push("b", 3)
    feed.push("c", 3)
    assert popped(queue, 3) == ["a0", "b0", "c0"]

    def not_a(account: str) -> bool:
        return account != "a"

    first = queue.pop(ROUTE, not_a)
    second = queue.pop(ROUTE, not_a)
    assert [first.prediction_id, second.prediction_id] == ["b1", "c1"]  # a's turn passed over, kept
    assert queue.pop(ROUTE, lambda account: False) is None  # no one admitted: nothing served
    assert len(queue) == 10 + 3 + 3 - 5
    for item in (first, second):
        queue.done(item.prediction_id, queue.estimate(ROUTE))
    assert popped(queue, 3) == ["a1", "a2", "b2"]  # a, behind now, is served twice to catch up


def test_a_band_no_admitted_account_has_anything_in_yields_to_a_lower_bands_admitted_account():
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    feed.push("a", 5, priority=3)
    feed.push("b", 2)
    item = queue.pop(ROUTE, lambda account: account == "b")
    assert item.prediction_id == "b0"  # the slot a may not take goes to b, though a is in a higher band
    assert popped(queue, 2) == ["a0@3", "a1@3"]  # and a's band still comes first for everyone else
    assert queue.pop(ROUTE, lambda account: account == "c") is None
    assert queue.footprint()["queued"] == 4


# Random histories

ACCOUNTS = ["a", "b", "c", "d"]
_ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.sampled_from(ACCOUNTS), st.integers(0, 2), st.integers(1, 6)),
    st.tuples(st.just("pop"), st.integers(1, 4)),
    st.tuples(st.just("pop_admitted"), st.frozensets(st.sampled_from(ACCOUNTS))),
    st.tuples(st.just("remove"), st.integers(0, 10_000)),
    st.tuples(st.just("done"), st.integers(0, 10_000), st.sampled_from([None, 0.0, 0.3, 1.0, 4.0])),
    st.tuples(st.just("refund"), st.integers(0, 10_000)),
    st.tuples(st.just("observe"), st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0])),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(ops=_ops)
def test_every_item_pops_once_unless_removed_in_priority_order_and_in_arrival_order_per_account(ops):
    """Also when a pop may serve only some accounts (``admits``): then it serves one of them, from the
    highest band where one has something queued, or nothing when none has."""
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    queued: dict[str, QueuedItem] = {}
    running: list[str] = []
    popped_ids: list[str] = []
    removed: set[str] = set()
    for op in ops:
        if op[0] == "push":
            queued.update((pid, feed.made[pid]) for pid in feed.push(op[1], op[3], priority=op[2]))
        elif op[0] == "pop":
            for _ in range(op[1]):
                item = queue.pop(ROUTE)
                if item is None:
                    assert not queued
                    break
                assert item.priority == max(i.priority for i in queued.values())  # never inverted
                assert item.seq == min(i.seq for i in queued.values()
                                       if (i.priority, i.account) == (item.priority, item.account))
                assert queued.pop(item.prediction_id) is item  # one that is queued, not removed or run
                popped_ids.append(item.prediction_id)
                running.append(item.prediction_id)
        elif op[0] == "pop_admitted":  # only some accounts may take the slot (the headroom rule)
            item = queue.pop(ROUTE, op[1].__contains__)
            eligible = [i for i in queued.values() if i.account in op[1]]
            if item is None:
                assert not eligible
            else:
                assert item.account in op[1]
                assert item.priority == max(i.priority for i in eligible)  # never inverted among them
                assert item.seq == min(i.seq for i in eligible
                                       if (i.priority, i.account) == (item.priority, item.account))
                assert queued.pop(item.prediction_id) is item
                popped_ids.append(item.prediction_id)
                running.append(item.prediction_id)
        elif op[0] == "remove" and queued:
            pid = sorted(queued)[op[1] % len(queued)]
            assert queue.remove(pid) is queued.pop(pid)
            removed.add(pid)
        elif op[0] == "done" and running:
            queue.done(running.pop(op[1] % len(running)), op[2])
        elif op[0] == "refund" and running:
            queue.refund(running.pop(op[1] % len(running)))
        elif op[0] == "observe":
            queue.observe(ROUTE, op[1])
        assert len(queue) == len(queued) == queue.length(ROUTE)
    while (item := queue.pop(ROUTE)) is not None:
        assert queued.pop(item.prediction_id) is item
        popped_ids.append(item.prediction_id)
        running.append(item.prediction_id)
    for pid in running:
        queue.done(pid, 1.0)

    assert not queued and len(popped_ids) == len(set(popped_ids))  # each popped once
    assert sorted(popped_ids + sorted(removed)) == sorted(feed.made)  # and every one popped or removed
    assert queue.footprint() == dict.fromkeys(queue.footprint(), 0)  # nothing held for any of them


_fair_ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.sampled_from(ACCOUNTS), st.integers(0, 1), st.integers(1, 8)),
    st.tuples(st.just("pop"), st.integers(1, 8)),
    st.tuples(st.just("remove"), st.integers(0, 10_000)),
    st.tuples(st.just("observe"), st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0])),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(ops=_fair_ops)
def test_backlogged_accounts_of_a_band_are_served_within_twice_the_largest_charge_of_each_other(ops):
    """Over any stretch in which two accounts of a band both have something queued, the compute each
    was charged differs by at most 2x the largest single charge (start-time fair queuing's bound)."""
    queue: FairQueues[QueuedItem] = FairQueues()
    feed = Feeder(queue)
    queued: dict[tuple[int, str], set[str]] = {}  # (band, account) -> its queued ids
    served: dict[tuple[int, str], float] = {}  # compute charged so far
    # When each became backlogged last (a count of pushes), and what every account had been served then.
    since: dict[tuple[int, str], tuple[int, dict[tuple[int, str], float]]] = {}
    largest = 0.0
    for tick, op in enumerate(ops):
        if op[0] == "push":
            key = (op[2], op[1])
            if not queued.get(key):
                since[key] = (tick, dict(served))
            queued.setdefault(key, set()).update(feed.push(op[1], op[3], priority=op[2]))
        elif op[0] == "remove":
            ids = sorted(pid for ids in queued.values() for pid in ids)
            if ids:
                item = queue.remove(ids[op[1] % len(ids)])
                queued[(item.priority, item.account)].discard(item.prediction_id)
        elif op[0] == "observe":
            queue.observe(ROUTE, op[1])
        else:
            for _ in range(op[1]):
                backlogged = [k for k, ids in queued.items() if ids]
                charge = queue.estimate(ROUTE)
                item = queue.pop(ROUTE)
                if item is None:
                    break
                key = (item.priority, item.account)
                largest = max(largest, charge)
                served[key] = served.get(key, 0.0) + charge
                queued[key].discard(item.prediction_id)
                for a, b in itertools.combinations([k for k in backlogged if k[0] == item.priority], 2):
                    later, other = (a, b) if since[a][0] >= since[b][0] else (b, a)
                    start = since[later][1]  # the stretch in which both have been backlogged
                    gap = (served.get(later, 0.0) - start.get(later, 0.0)) - (
                        served.get(other, 0.0) - start.get(other, 0.0))
                    assert abs(gap) <= 2 * largest + 1e-9, (later, other, gap, largest)
