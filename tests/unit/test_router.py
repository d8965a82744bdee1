"""The router against fake nodes: placement, queueing, priority, backpressure, cancellation, deadlines,
rejections, node loss, batching, and the promise that every accepted prediction ends exactly once.
(Shared instances, deadlines of running predictions and bounded memory: ``test_router_durability``.)"""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.policies import Headroom
from scheduler.ports import NodeLost
from scheduler.router import MAX_REJECTIONS, Router
from tests.unit.fakes import EventLog, FakeNodeData, instance, settle, table, wait_until
from warmfleet.domain import (
    Finished, Metrics, Output, Rejected, Requeued, RouteSpec, Started, Status, TaskEvent, TERMINAL,
)
from warmfleet.errors import QueueFull

MODEL = "acme/echo"


@pytest.fixture
async def make_router():
    """Builds routers that are closed (their pollers stopped) when the test ends."""
    made: list[Router] = []

    def make(on_event, max_queue: int = 100, clock=time.time) -> Router:
        router = Router("router-1", on_event, max_queue, clock)
        made.append(router)
        return router

    yield make
    for router in made:
        await router.close()


def one_instance(make_router, capacity: int) -> tuple[Router, FakeNodeData, EventLog]:
    """A router whose table has one instance of MODEL, with ``capacity`` slots, on node A."""
    node, log = FakeNodeData("A"), EventLog()
    router = make_router(log)
    router.update_table(table(1, [instance("i1", MODEL, "A", capacity)], node))
    return router, node, log


def _input(n: int) -> dict:
    return {"text": f"hello {n}"}


async def test_dispatch_picks_least_loaded_instance_and_never_exceeds_max_concurrency(make_router):
    a, b = FakeNodeData("A"), FakeNodeData("B")
    log = EventLog()
    router = make_router(log)
    router.update_table(table(1, [instance("i1", MODEL, "A", 2), instance("i2", MODEL, "B", 3)], a, b))

    for n in range(7):
        router.enqueue(f"p{n}", MODEL, _input(n))

    # Capacity is 2 + 3: five run, two wait. Each went to the lowest load ratio (ties: most free slots).
    assert router.footprint()["running"] == 5
    assert router.queue_length(MODEL) == 2
    await a.wait_submitted(2)
    await b.wait_submitted(3)
    assert a.tasks_on("i1") == ["p1", "p3"]
    assert b.tasks_on("i2") == ["p0", "p2", "p4"]
    assert all(t.input == _input(int(t.prediction_id[1:])) for batch in a.submits + b.submits for t in batch)

    await settle()
    assert len(a.submitted_ids) == 2 and len(b.submitted_ids) == 3  # the two waiting ones stay queued
    assert log.events == []

    # A Finished on i1 frees exactly one slot, there: the oldest waiting prediction takes it.
    a.finish("p1")
    await a.wait_submitted(3)
    await settle()
    assert a.tasks_on("i1") == ["p1", "p3", "p5"]
    assert b.submitted_ids == ["p0", "p2", "p4"]
    assert router.footprint()["running"] == 5 and router.queue_length(MODEL) == 1
    [done] = log.finished("p1")
    assert done.status is Status.SUCCEEDED and done.output.value == "ok"


async def test_a_slot_freed_under_a_backlog_is_filled_and_its_task_reaches_the_node(make_router):
    router, a, _ = one_instance(make_router, 1)
    for n in range(3):
        router.enqueue(f"p{n}", MODEL, _input(n))
    await a.wait_submitted(1)

    a.finish("p0")  # frees the only slot while two wait: p1 takes it, p2 keeps waiting
    await a.wait_submitted(2)
    assert a.submitted_ids == ["p0", "p1"]
    assert router.queue_length(MODEL) == 1


async def test_a_new_instance_smaller_than_the_backlog_gets_its_tasks(make_router):
    a = FakeNodeData("A")
    router = make_router(EventLog())
    for n in range(3):
        router.enqueue(f"p{n}", MODEL, _input(n))

    router.update_table(table(1, [instance("i1", MODEL, "A", 2)], a))
    await a.wait_submitted(2)
    assert a.submitted_ids == ["p0", "p1"]


async def test_queued_prediction_waits_for_a_slot_and_takes_the_one_a_finish_frees(make_router):
    router, a, log = one_instance(make_router, 1)

    router.enqueue("first", MODEL, _input(1))
    router.enqueue("second", MODEL, _input(2))
    await a.wait_submitted(1)
    await settle()
    assert a.submitted_ids == ["first"]
    assert router.queue_length(MODEL) == 1

    a.finish("first")
    await a.wait_submitted(2)
    assert a.submitted_ids == ["first", "second"]
    assert router.queue_length(MODEL) == 0
    assert log.finished("second") == []


async def test_higher_priority_is_dispatched_first_and_equal_priorities_keep_arrival_order(make_router):
    a = FakeNodeData("A")
    router = make_router(EventLog())
    for pid, priority in [("low", 0), ("high", 5), ("mid", 2), ("high-later", 5), ("low-later", 0),
                          ("dropped", 9)]:
        router.enqueue(pid, MODEL, _input(1), priority=priority)
    router.cancel("dropped")  # a canceled entry leaves no gap in the order

    router.update_table(table(1, [instance("i1", MODEL, "A", 5)], a))
    await a.wait_submitted(5)
    assert a.submitted_ids == ["high", "high-later", "mid", "low", "low-later"]
    assert router.queue_length(MODEL) == 0


async def test_as_slots_free_one_by_one_the_highest_priority_waiting_goes_next(make_router):
    router, a, _ = one_instance(make_router, 1)
    router.enqueue("busy", MODEL, _input(0))
    for pid, priority in [("low", 0), ("high", 5), ("mid", 2)]:
        router.enqueue(pid, MODEL, _input(1), priority=priority)

    a.finish("busy")
    await a.wait_submitted(2)
    router.enqueue("urgent", MODEL, _input(2), priority=9)  # arrives late, still goes before mid and low
    for n, running in [(3, "high"), (4, "urgent"), (5, "mid")]:
        a.finish(running)
        await a.wait_submitted(n)
    assert a.submitted_ids == ["busy", "high", "urgent", "mid", "low"]


async def test_two_accounts_predictions_on_one_instance_are_dispatched_in_turn(make_router):
    router, a, log = one_instance(make_router, 1)
    for n in range(5):
        router.enqueue(f"a{n}", MODEL, _input(n), account="alice")  # a burst: a0 runs, four wait
    for n in range(3):
        router.enqueue(f"b{n}", MODEL, _input(n), account="bob")  # then bob's, behind alice's four

    for n in range(1, 9):
        await a.wait_submitted(n)
        a.finish(a.submitted_ids[-1])
    await log.wait_finished(*a.submitted_ids)

    assert a.submitted_ids == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "a4"]  # not a0-a4, then bob's


async def test_on_a_4_slot_instance_another_accounts_prediction_runs_at_once_while_one_floods(make_router):
    """Headroom (one slot in 4 here): alice's flood fills 3 of the 4 slots and stops there; bob's
    prediction is sent at once, with none of alice's ended. While bob's runs, alice's ends do not take
    the headroom back (she holds more than her share of the 3 other slots), so carol's goes at once too;
    alone again, alice has her 3."""
    node, log = FakeNodeData("A"), EventLog()
    router = Router("router-1", log, 1000, headroom=Headroom(4))
    try:
        router.update_table(table(1, [instance("i1", MODEL, "A", 4)], node))
        for n in range(50):
            router.enqueue(f"a{n}", MODEL, _input(n), account="alice")
        await node.wait_submitted(3)
        await settle()
        assert node.submitted_ids == ["a0", "a1", "a2"]  # alone: all but the headroom

        router.enqueue("b0", MODEL, _input(0), account="bob")
        await node.wait_submitted(4)
        assert node.submitted_ids[-1] == "b0" and log.events == []  # at once: nothing of alice's ended

        node.finish("a0")
        await log.wait_finished("a0")
        await settle()
        assert len(node.submitted_ids) == 4  # the slot a0 freed is headroom now: not alice's
        router.enqueue("c0", MODEL, _input(0), account="carol")
        await node.wait_submitted(5)
        assert node.submitted_ids[-1] == "c0"

        node.finish("b0")
        node.finish("c0")
        await node.wait_submitted(6)
        await settle()
        assert node.submitted_ids[4:] == ["c0", "a3"]  # alice alone again: back to 3 of 4
        finished = {"a0", "b0", "c0"}
        while len(finished) < 52:  # the flood drains: every prediction runs, nothing is left held
            for pid in [p for p in node.submitted_ids if p not in finished]:
                node.finish(pid)
                finished.add(pid)
            if len(finished) < 52:
                await node.wait_submitted(len(node.submitted_ids) + 1)
        await log.wait_finished(*(f"a{n}" for n in range(50)), "b0", "c0")
        assert router.footprint()["slot_holders"] == 0 and router.footprint()["running"] == 0
    finally:
        await router.close()


async def test_with_the_default_headroom_two_16_slot_instances_keep_a_slot_each_for_another_account(
        make_router):
    a, b, log = FakeNodeData("A"), FakeNodeData("B"), EventLog()
    router = make_router(log, max_queue=2000)
    router.update_table(table(1, [instance("i1", MODEL, "A", 16), instance("i2", MODEL, "B", 16)], a, b))
    for n in range(1000):
        router.enqueue(f"a{n}", MODEL, _input(n), account="alice")
    await a.wait_submitted(15)
    await b.wait_submitted(15)
    await settle()
    assert len(a.submitted_ids) == len(b.submitted_ids) == 15  # 30 of 32 slots: one in 16 kept

    router.enqueue("b0", MODEL, _input(0), account="bob")
    router.enqueue("c0", MODEL, _input(0), account="carol")
    await wait_until(lambda: len(a.submitted_ids) + len(b.submitted_ids) == 32, a.changed)
    assert {"b0", "c0"} <= set(a.submitted_ids + b.submitted_ids)  # each at once, none of alice's ended


def _ran(node: FakeNodeData, prediction_id: str, predict_time_s: float) -> None:
    node.push(TaskEvent(prediction_id, Finished(Status.SUCCEEDED, 1.0, 1.0 + predict_time_s, Output("ok"),
                                                metrics=Metrics(predict_time_s=predict_time_s))))


async def test_an_account_is_charged_the_predict_time_its_finished_predictions_report(make_router):
    router, a, log = one_instance(make_router, 1)
    for n in range(3):
        router.enqueue(f"slow{n}", MODEL, _input(n), account="slow")
    for n in range(6):
        router.enqueue(f"fast{n}", MODEL, _input(n), account="fast")

    for n in range(1, 9):
        await a.wait_submitted(n)
        pid = a.submitted_ids[-1]
        _ran(a, pid, 3.0 if pid.startswith("slow") else 1.0)
    await a.wait_submitted(9)

    # Each slow prediction held the instance three times as long: fast gets three turns to its one.
    assert a.submitted_ids == ["slow0", "fast0", "fast1", "fast2", "slow1", "fast3", "fast4", "fast5",
                               "slow2"]
    assert router.footprint()["accounts"] == 1  # slow's, while slow2 runs: fast holds nothing now


async def test_queue_at_its_bound_raises_queue_full_and_accepts_again_once_there_is_room(make_router):
    log = EventLog()
    router = make_router(log, max_queue=2)  # no instance at all: everything waits in the queue
    router.enqueue("q1", MODEL, _input(1))
    router.enqueue("q2", MODEL, _input(2))

    with pytest.raises(QueueFull, match=MODEL):
        router.enqueue("q3", MODEL, _input(3))
    assert router.queue_length(MODEL) == 2
    assert log.events == []  # a refused prediction was never accepted: no event for it, ever

    router.enqueue("other", "acme/other", _input(4))  # the bound is per model
    router.cancel("q1")
    router.enqueue("q4", MODEL, _input(5))
    assert router.queue_length(MODEL) == 2


async def test_cancel_of_a_queued_prediction_emits_one_canceled_and_it_is_never_dispatched(make_router):
    router, a, log = one_instance(make_router, 1)
    router.enqueue("running", MODEL, _input(1))
    router.enqueue("queued", MODEL, _input(2))

    router.cancel("queued")
    router.cancel("queued")  # a second cancel of an ended prediction does nothing

    assert [b.status for b in log.finished("queued")] == [Status.CANCELED]
    assert log.bodies("queued") == log.finished("queued")
    assert router.queue_length(MODEL) == 0

    a.finish("running")
    router.enqueue("after", MODEL, _input(3))
    await a.wait_submitted(2)
    await settle()
    assert a.submitted_ids == ["running", "after"]
    assert a.cancels == []
    assert len(log.finished("queued")) == 1


async def test_cancel_of_a_running_prediction_asks_its_node_and_forwards_the_node_verdict(make_router):
    a, b = FakeNodeData("A"), FakeNodeData("B")
    log = EventLog()
    router = make_router(log)
    router.update_table(table(1, [instance("i1", MODEL, "A", 1), instance("i2", MODEL, "B", 1)], a, b))
    router.enqueue("p1", MODEL, _input(1))
    router.enqueue("p2", MODEL, _input(2))
    await a.wait_submitted(1)
    await b.wait_submitted(1)
    on_b = b.submitted_ids[0]

    router.cancel(on_b)
    await wait_until(lambda: b.cancels == [[on_b]], b.changed)
    await settle()
    assert a.cancels == []
    assert log.finished(on_b) == []  # the node, not the router, says how a running prediction ended

    b.finish(on_b, Status.CANCELED)
    [done] = await log.wait_finished(on_b)
    assert done.status is Status.CANCELED
    await settle()
    assert len(log.finished(on_b)) == 1


async def test_a_cancel_in_the_turn_of_dispatch_takes_effect(make_router):
    """The task may not have left for its node yet: the router either takes it back and ends it itself,
    or the node hears the cancel after the submit (never before it, when it would be a no-op)."""
    router, a, log = one_instance(make_router, 1)

    router.enqueue("p1", MODEL, _input(1))  # dispatched at once: a slot is free
    router.cancel("p1")

    await wait_until(lambda: bool(log.finished("p1")) or ("cancel", ("p1",)) in a.calls, a.changed)
    await settle()
    if log.finished("p1"):
        [done] = log.finished("p1")
        assert done.status is Status.CANCELED
        assert a.calls == []  # taken back: the node never saw it
        assert router.footprint()["running"] == 0
    else:
        assert a.calls == [("submit", ("p1",)), ("cancel", ("p1",))]


async def test_a_slot_freed_by_canceling_an_unsent_task_goes_to_the_next_queued_one(make_router):
    router, a, log = one_instance(make_router, 1)
    router.enqueue("p1", MODEL, _input(1))
    router.enqueue("p2", MODEL, _input(2))
    router.cancel("p1")

    await a.wait_submitted(1, timeout_s=0.5)
    assert a.submitted_ids[-1] == "p2"


async def test_a_deadline_passing_while_queued_aborts_only_that_prediction(make_router):
    now = 1000.0
    a = FakeNodeData("A")
    log = EventLog()
    router = make_router(log, clock=lambda: now)
    router.update_table(table(1, [instance("i1", MODEL, "A", 1)], a))
    router.enqueue("busy", MODEL, _input(0))
    router.enqueue("short", MODEL, _input(1), deadline_at=now + 0.05)
    router.enqueue("long", MODEL, _input(2), deadline_at=now + 60)

    [aborted] = await log.wait_finished("short")
    assert aborted.status is Status.ABORTED
    assert "deadline" in aborted.error
    assert aborted.completed_at == now and aborted.started_at is None
    assert router.queue_length(MODEL) == 1
    assert log.finished("long") == []

    a.finish("busy")
    await a.wait_submitted(2)
    assert a.submitted_ids == ["busy", "long"]  # the aborted one is never dispatched
    assert len(log.finished("short")) == 1


async def test_a_deadline_passing_while_running_cancels_it_on_its_node(make_router):
    router, a, log = one_instance(make_router, 1)
    router.enqueue("started", MODEL, _input(1), deadline_at=time.time() + 0.05)
    router.enqueue("queued", MODEL, _input(2), deadline_at=time.time() + 0.15)

    [aborted] = await log.wait_finished("queued")  # fires after the first one's deadline has passed
    assert aborted.status is Status.ABORTED
    assert a.submitted_ids == ["started"]
    assert a.cancels == [["started"]]  # the running one was canceled on its node at its deadline
    assert log.finished("started") == []  # and the node says how it ended

async def test_a_rejected_prediction_is_requeued_and_dispatched_again(make_router):
    router, a, log = one_instance(make_router, 1)
    router.enqueue("p1", MODEL, _input(1))
    await a.wait_submitted(1)

    a.reject("p1", "instance i1 is starting")
    await a.wait_submitted(2)
    assert a.submitted_ids == ["p1", "p1"]
    assert router.footprint()["running"] == 1  # the slot the rejection freed is taken again, not leaked

    a.push(TaskEvent("p1", Started(1.0)))
    a.finish("p1")
    [done] = await log.wait_finished("p1")
    assert done.status is Status.SUCCEEDED
    assert not any(isinstance(b, Rejected) for _, b in log.events)  # rejections stay inside the router
    assert [type(b) for b in log.bodies("p1")] == [Started, Finished]


async def test_a_prediction_closed_instances_rejected_max_rejections_times_fails(make_router):
    router, a, log = one_instance(make_router, 1)
    router.enqueue("p1", MODEL, _input(1))

    for n in range(1, MAX_REJECTIONS + 1):
        await a.wait_submitted(n)
        a.reject("p1", "instance i1 is draining", closed=True)
        await wait_until(lambda: not router.has_instances(MODEL) or bool(log.finished("p1")), log.changed)
        # A later table lists the instance again (the controller's view lagged the agent's).
        router.update_table(table(1 + n, [instance("i1", MODEL, "A", 1)], a))
    [done] = await log.wait_finished("p1")

    assert done.status is Status.FAILED
    assert "instance i1 is draining" in done.error
    await settle()
    assert a.submitted_ids == ["p1"] * MAX_REJECTIONS
    assert router.footprint()["running"] == 0 and router.queue_length(MODEL) == 0
    assert len(log.finished("p1")) == 1


async def test_an_instance_its_agent_closed_takes_nothing_more_until_a_table_lists_it_again(make_router):
    a, b = FakeNodeData("A"), FakeNodeData("B")
    log = EventLog()
    router = make_router(log)
    router.update_table(table(1, [instance("i1", MODEL, "A", 4)], a))
    router.enqueue("p1", MODEL, _input(1))
    await a.wait_submitted(1)
    # The agent unloaded i1 before the router's table said so; a table with i2 on B is on its way.
    a.reject("p1", "instance i1 is absent", closed=True)
    await settle()
    router.enqueue("p2", MODEL, _input(2))
    await settle()
    assert a.submitted_ids == ["p1"] and router.queue_length(MODEL) == 2  # both wait, none bounce on i1
    router.update_table(table(2, [instance("i2", MODEL, "B", 4)], a, b))
    await b.wait_submitted(2)
    assert sorted(b.submitted_ids) == ["p1", "p2"] and a.submitted_ids == ["p1"]


async def test_a_rejected_prediction_back_in_the_queue_still_has_its_deadline(make_router):
    now = [1000.0]
    a = FakeNodeData("A")
    log = EventLog()
    router = make_router(log, clock=lambda: now[0])
    router.update_table(table(1, [instance("i1", MODEL, "A", 1)], a))
    router.enqueue("p1", MODEL, _input(1), deadline_at=now[0] + 30)
    await a.wait_submitted(1)

    # The instance drains: the controller's next table has none for the model, and the node bounces p1.
    router.update_table(table(2, [], a))
    now[0] += 60  # p1's deadline passes while it waits in the queue again
    a.reject("p1", "instance i1 is draining")

    [done] = await log.wait_finished("p1", timeout_s=0.5)
    assert done.status is Status.ABORTED


async def test_node_lost_reruns_what_ran_there_once_in_its_place_and_the_other_node_keeps_working(make_router):
    a, b = FakeNodeData("A"), FakeNodeData("B")
    log = EventLog()
    router = make_router(log)
    router.update_table(table(1, [instance("i1", MODEL, "A", 2), instance("i2", MODEL, "B", 2)], a, b))
    for n in range(5):
        router.enqueue(f"p{n}", MODEL, _input(n))
    await a.wait_submitted(2)
    await b.wait_submitted(2)
    on_a, on_b = a.submitted_ids, b.submitted_ids
    assert router.queue_length(MODEL) == 1

    a.lose()
    await wait_until(lambda: all(any(isinstance(e, Requeued) for e in log.bodies(p)) for p in on_a), log.changed)
    for pid in on_a:
        [again] = [e for e in log.bodies(pid) if isinstance(e, Requeued)]
        assert again.attempt == 2 and "node A was lost while it ran" in again.reason
        assert log.finished(pid) == []
    assert router.queue_length(MODEL) == 3  # the two re-runs, ahead of p4 (their places), wait for B

    b.finish(on_b[0])
    b.finish(on_b[1])
    await b.wait_submitted(4)
    assert b.submitted_ids[2:] == on_a  # back in their places: before p4, which came after them
    router.enqueue("late", MODEL, _input(9))
    for pid in on_a:
        b.finish(pid)
    await b.wait_submitted(6)
    assert b.submitted_ids[4:] == ["p4", "late"]
    assert a.submitted_ids == on_a  # nothing more goes to the lost node
    for pid in ("p4", "late"):
        b.finish(pid)
    done = await log.wait_finished(*on_a, *on_b, "p4", "late")
    assert all(f.status is Status.SUCCEEDED for f in done)
    assert all(len(log.finished(f"p{n}")) == 1 for n in range(5))


async def test_a_rerun_lost_again_fails_naming_both_and_a_route_not_retryable_is_not_rerun(make_router):
    a, b = FakeNodeData("A"), FakeNodeData("B")
    log = EventLog()
    router = make_router(log)
    once = RouteSpec(name="acme/once", runner="echo", retryable=False)
    tab = table(1, [instance("i1", MODEL, "A", 1), instance("j1", "acme/once", "A", 1)], a)
    tab.models = [RouteSpec(name=MODEL, runner="echo"), once]
    router.update_table(tab)
    router.enqueue("p1", MODEL, _input(1))
    router.enqueue("q1", "acme/once", _input(2))
    await a.wait_submitted(2)

    a.lose()
    [q1] = await log.wait_finished("q1")
    assert q1.status is Status.FAILED and q1.error == ("node A was lost while it ran; not run again: "
                                                      "acme/once is not retryable")
    tab = table(2, [instance("i2", MODEL, "B", 1)], b)
    tab.models = [RouteSpec(name=MODEL, runner="echo"), once]
    router.update_table(tab)
    await b.wait_submitted(1)
    b.lose()
    [p1] = await log.wait_finished("p1")
    assert p1.status is Status.FAILED
    assert p1.error == "node B was lost while it ran; not run again: it was a re-run already"
    assert [type(e) for e in log.bodies("p1")] == [Requeued, Finished]


async def test_tasks_a_lost_node_never_got_wait_for_another_node_without_counting_as_a_run(make_router):
    a, b = FakeNodeData("A"), FakeNodeData("B")
    a.submit_error = NodeLost("A")
    log = EventLog()
    router = make_router(log)
    router.update_table(table(1, [instance("i1", MODEL, "A", 4)], a))
    router.enqueue("p1", MODEL, _input(1))
    router.enqueue("p2", MODEL, _input(2))
    await wait_until(lambda: len(a.calls) == 1, a.changed)
    await settle()
    assert log.events == [] and router.queue_length(MODEL) == 2 and router.footprint()["running"] == 0

    router.update_table(table(2, [instance("i2", MODEL, "B", 4)], b))
    await b.wait_submitted(2)
    b.finish("p1")
    b.finish("p2")
    done = await log.wait_finished("p1", "p2")
    assert all(f.status is Status.SUCCEEDED for f in done)
    assert [type(e) for e in log.bodies("p1")] == [Finished]  # no re-run: it never reached A


async def test_node_lost_while_its_submit_is_in_flight_reruns_the_prediction_once(make_router):
    a, b = FakeNodeData("A"), FakeNodeData("B")
    a.hold_submits = asyncio.Event()
    log = EventLog()
    router = make_router(log)
    router.update_table(table(1, [instance("i1", MODEL, "A", 1)], a))
    router.enqueue("p1", MODEL, _input(1))
    await wait_until(lambda: a.calls == [("submit", ("p1",))], a.changed)

    # The node dies: its poll and its pending submit both fail.
    a.lose()
    await wait_until(lambda: log.events, log.changed)
    a.submit_error = NodeLost("A")
    a.hold_submits.set()
    await settle()
    assert [type(e) for e in log.bodies("p1")] == [Requeued] and router.queue_length(MODEL) == 1

    router.update_table(table(2, [instance("i2", MODEL, "B", 1)], b))
    await b.wait_submitted(1)
    b.finish("p1")
    [done] = await log.wait_finished("p1")
    assert done.status is Status.SUCCEEDED and len(log.finished("p1")) == 1


async def test_a_submit_that_fails_for_another_reason_still_ends_each_prediction(make_router):
    a = FakeNodeData("A")
    a.submit_error = RuntimeError("could not serialise the task")
    log = EventLog()
    router = make_router(log)
    router.update_table(table(1, [instance("i1", MODEL, "A", 1)], a))
    router.enqueue("p1", MODEL, _input(1))

    [done] = await log.wait_finished("p1", timeout_s=0.5)
    assert done.status is Status.FAILED


async def test_enqueues_in_one_loop_turn_reach_the_node_in_one_submit(make_router):
    router, a, log = one_instance(make_router, 8)
    for n in range(5):
        router.enqueue(f"p{n}", MODEL, _input(n))

    await a.wait_submitted(5)
    assert [[t.prediction_id for t in batch] for batch in a.submits] == [[f"p{n}" for n in range(5)]]

    # One poll batch carries the events of many predictions; each reaches on_event, in order.
    a.push(*(TaskEvent(f"p{n}", Started(float(n))) for n in range(5)))
    await wait_until(lambda: len(log.events) == 5, log.changed)
    assert [(p, b.at) for p, b in log.events] == [(f"p{n}", float(n)) for n in range(5)]


async def test_events_for_predictions_the_router_is_not_running_are_dropped(make_router):
    router, a, log = one_instance(make_router, 1)
    router.enqueue("p1", MODEL, _input(1))
    await a.wait_submitted(1)

    a.push(TaskEvent("stranger", Started(1.0)), TaskEvent("stranger", Finished(Status.SUCCEEDED, 1.0, 2.0)))
    a.finish("p1")
    await log.wait_finished("p1")
    a.finish("p1")  # a duplicate end from the node
    a.push(TaskEvent("p1", Started(3.0)))
    await wait_until(lambda: a.polls >= 5, a.changed)  # the router came back for a fifth poll: all four batches handled
    assert [p for p, _ in log.events] == ["p1"]


async def test_a_newer_routing_table_adds_instances_and_older_ones_are_ignored(make_router):
    a = FakeNodeData("A")
    router = make_router(EventLog())
    router.enqueue("p1", MODEL, _input(1))
    assert not router.has_instances(MODEL)

    router.update_table(table(2, [instance("i1", MODEL, "A", 1, state="starting")], a))
    assert not router.has_instances(MODEL)  # a starting instance takes no work
    router.update_table(table(3, [instance("i1", MODEL, "A", 1)], a))
    await a.wait_submitted(1)
    assert router.has_instances(MODEL)

    router.update_table(table(1, [], a))  # stale: ignored
    assert router.revision == 3 and router.has_instances(MODEL)


# Every accepted prediction ends with exactly one Finished, whatever happens to it.

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.integers(0, 3)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("finish"), st.integers(0, 50), st.sampled_from([Status.SUCCEEDED, Status.FAILED,
                                                                          Status.CANCELED])),
        st.tuples(st.just("reject"), st.integers(0, 50)),
        st.tuples(st.just("lose_b")),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, cap_a=st.integers(1, 3), cap_b=st.integers(1, 3))
async def test_every_accepted_prediction_ends_with_exactly_one_finished(ops, cap_a, cap_b):
    """Under any interleaving of enqueues, cancels, node verdicts, rejections and the loss of a node:
    no instance ever holds more than its max_concurrency, and once the surviving node finishes what it
    is given, every accepted prediction has exactly one Finished."""
    nodes = {"A": FakeNodeData("A"), "B": FakeNodeData("B")}
    caps = {"A": cap_a, "B": cap_b}
    log = EventLog()
    # A full instance waits no wall-clock time here, so that the wind-down's loop turns see it again.
    router = Router("router-1", log, max_queue_per_model=1000, full_backoff_s=0.0, full_backoff_max_s=0.0)
    router.update_table(table(1, [instance("iA", MODEL, "A", cap_a), instance("iB", MODEL, "B", cap_b)],
                              *nodes.values()))
    accepted: list[str] = []
    ended: dict[str, int] = {"A": 0, "B": 0}  # ends the test pushed, per node
    alive = {"A", "B"}

    def running_on(node: str) -> list[str]:
        """Predictions the node has been given and not yet reported on (one entry per submission)."""
        out = list(nodes[node].submitted_ids)
        for pid in pushed[node]:
            out.remove(pid)
        return out

    pushed: dict[str, list[str]] = {"A": [], "B": []}

    def check_capacity() -> None:
        for node in alive:
            assert len(running_on(node)) <= caps[node]

    try:
        for op in ops:
            kind = op[0]
            if kind == "enqueue":
                pid = f"p{len(accepted)}"
                router.enqueue(pid, MODEL, _input(0), priority=op[1])
                accepted.append(pid)
            elif kind == "cancel" and accepted:
                router.cancel(accepted[op[1] % len(accepted)])
            elif kind in ("finish", "reject"):
                candidates = [(n, p) for n in sorted(alive) for p in running_on(n)]
                if candidates:
                    node, pid = candidates[op[1] % len(candidates)]
                    pushed[node].append(pid)
                    ended[node] += 1
                    if kind == "finish":
                        nodes[node].finish(pid, op[2])
                    else:
                        nodes[node].reject(pid)
            elif kind == "lose_b" and "B" in alive:
                alive.discard("B")
                nodes["B"].lose()
            await settle()
            check_capacity()

        # Wind down: the surviving nodes complete everything they get until nothing is left.
        for _ in range(10 * (len(accepted) + 1)):
            if all(log.finished(p) for p in accepted):
                break
            for node in sorted(alive):
                for pid in running_on(node):
                    pushed[node].append(pid)
                    nodes[node].finish(pid)
            await settle()
            check_capacity()

        for pid in accepted:
            finals = log.finished(pid)
            assert len(finals) == 1, (pid, finals)
            assert finals[0].status in TERMINAL
            assert isinstance(log.bodies(pid)[-1], Finished)  # nothing follows the end
    finally:
        await router.close()


async def test_ongoing_counts_queued_and_in_flight_per_model_for_the_autoscaler(make_router):
    router, _, log = one_instance(make_router, capacity=2)
    for n in range(5):
        router.enqueue(f"p{n}", MODEL, _input(n))
    router.enqueue("cold", "acme/cold", _input(9))  # no instance yet: queued, and counted

    assert router.ongoing() == {MODEL: 5, "acme/cold": 1}


async def test_a_model_whose_load_failed_fails_its_waiting_predictions_with_the_error(make_router):
    node, log = FakeNodeData("A"), EventLog()
    router = make_router(log)
    router.update_table(table(1, [], node))
    router.enqueue("p1", "acme/broken", _input(1))
    router.enqueue("p2", MODEL, _input(2))

    failed = table(2, [], node)
    failed.load_failures = {"acme/broken": "OSError: weights not found"}
    router.update_table(failed)

    [finished] = log.finished("p1")
    assert finished.status is Status.FAILED
    assert finished.error == "no instance of acme/broken could be loaded: OSError: weights not found"
    assert not log.finished("p2") and router.ongoing() == {MODEL: 1}  # other models keep waiting


async def test_a_new_agent_on_a_node_replaces_the_dead_one_even_before_its_stream_says_so(make_router):
    old, new = FakeNodeData("A"), FakeNodeData("A")  # the same node id, another agent (another address)
    log = EventLog()
    router = make_router(log)
    router.update_table(table(1, [instance("i1", MODEL, "A", 2)], old))
    router.enqueue("p1", MODEL, _input(1))
    await old.wait_submitted(1)

    # The controller replaced the dead agent; its table comes before the old stream gave up.
    router.update_table(table(2, [instance("i2", MODEL, "A", 2)], new))
    await new.wait_submitted(1)
    assert new.submits[0][0].instance_id == "i2"
    [again] = [b for b in log.bodies("p1") if isinstance(b, Requeued)]
    assert "node A was lost while it ran" in again.reason
    router.enqueue("p2", MODEL, _input(2))
    await new.wait_submitted(2)
    old.lose()  # the old stream gives up at last: nothing more happens
    new.finish("p1")
    new.finish("p2")
    done = await log.wait_finished("p1", "p2")
    assert all(f.status is Status.SUCCEEDED for f in done)
    await settle()
    assert len(log.finished("p1")) == 1 and old.submitted_ids == ["p1"]
