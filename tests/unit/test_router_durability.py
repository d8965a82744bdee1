"""The router when things go wrong or run long, against fake nodes: instances shared with other routers
(an agent's "no free slot"), deadlines that pass while a prediction runs (and a node that does not
answer the cancel), and memory that stays bounded however many predictions come and go."""

from __future__ import annotations

import asyncio
import time

import pytest

from scheduler.router import DEADLINE_QUEUED, DEADLINE_RUNNING, Router
from tests.unit.fakes import EventLog, FakeNodeData, instance, settle, table, wait_until
from warmfleet.domain import Finished, Rejected, Started, Status, TaskEvent

MODEL = "acme/echo"
NEVER_S = 3600.0  # a backoff or grace no test waits for


@pytest.fixture
async def make_router():
    """Builds routers on one instance of MODEL (``capacity`` slots, on node A), closed when the test ends."""
    made: list[Router] = []

    def make(capacity: int = 1, **kwargs) -> tuple[Router, FakeNodeData, EventLog]:
        node, log = FakeNodeData("A"), EventLog()
        router = Router("router-1", log, kwargs.pop("max_queue", 10_000), **kwargs)
        router.update_table(table(1, [instance("i1", MODEL, "A", capacity)], node))
        made.append(router)
        return router, node, log

    yield make
    for router in made:
        await router.close()


def _input(n: int) -> dict:
    return {"text": f"hello {n}"}


# Instances shared with other routers: "no free slot" never fails a prediction


async def test_a_prediction_without_a_free_slot_goes_again_after_a_doubling_backoff_and_never_fails(
        make_router):
    router, a, log = make_router(1, full_backoff_s=0.01, full_backoff_max_s=0.04)
    router.enqueue("p1", MODEL, _input(1))

    tries = 12  # well past the 5 rejections that used to fail it
    for n in range(1, tries + 1):
        await a.wait_submitted(n)
        a.reject_full("p1")
    await a.wait_submitted(tries + 1)
    a.push(TaskEvent("p1", Started(1.0)))
    a.finish("p1")
    [done] = await log.wait_finished("p1")

    assert done.status is Status.SUCCEEDED
    assert not any(isinstance(b, Rejected) for _, b in log.events)
    # Each try came after its backoff (0.01, 0.02, then 0.04 s at most): never at once, never spinning.
    gaps = [later - earlier for earlier, later in zip(a.submit_times, a.submit_times[1:])]
    waits = [min(0.01 * 2 ** n, 0.04) for n in range(tries)]
    assert all(gap >= wait * 0.9 for gap, wait in zip(gaps, waits)), list(zip(gaps, waits))


async def test_a_full_instance_gets_nothing_until_its_backoff_passes(make_router):
    router, a, log = make_router(1, full_backoff_s=NEVER_S, full_backoff_max_s=NEVER_S)
    router.enqueue("p1", MODEL, _input(1))
    await a.wait_submitted(1)

    a.reject_full("p1")
    await wait_until(lambda: router.queue_length(MODEL) == 1, a.changed)
    await settle()
    router.enqueue("p2", MODEL, _input(2))
    await settle()

    assert a.submitted_ids == ["p1"]  # nothing more is sent while the agent says it is full
    assert router.queue_length(MODEL) == 2 and router.footprint()["running"] == 0
    assert router.ongoing() == {MODEL: 2}  # still counted for the autoscaler
    assert log.events == []  # and nothing ended


async def test_a_task_of_ours_ending_on_a_full_instance_sends_the_waiting_one_at_once(make_router):
    router, a, log = make_router(2, full_backoff_s=NEVER_S, full_backoff_max_s=NEVER_S)
    router.enqueue("p1", MODEL, _input(1))
    router.enqueue("p2", MODEL, _input(2))
    await a.wait_submitted(2)
    a.reject_full("p2")  # another router took the second slot first
    await wait_until(lambda: router.queue_length(MODEL) == 1, a.changed)

    a.finish("p1")  # a slot there is free now, whoever else uses the instance

    await a.wait_submitted(3)
    assert a.submitted_ids == ["p1", "p2", "p2"]
    assert [f.status for f in await log.wait_finished("p1")] == [Status.SUCCEEDED]


async def test_a_prediction_sent_back_keeps_its_place_in_the_queue(make_router):
    router, a, _ = make_router(2, full_backoff_s=NEVER_S, full_backoff_max_s=NEVER_S)
    router.enqueue("first", MODEL, _input(1))
    router.enqueue("running", MODEL, _input(2))
    await a.wait_submitted(2)
    a.reject_full("first")
    await wait_until(lambda: router.queue_length(MODEL) == 1, a.changed)
    router.enqueue("later", MODEL, _input(3))
    router.enqueue("urgent", MODEL, _input(4), priority=5)

    a.finish("running")  # two slots free, as the router counts: the two at the head of the queue go

    await a.wait_submitted(4)
    assert a.submits[-1] and [t.prediction_id for t in a.submits[-1]] == ["urgent", "first"]
    assert router.queue_length(MODEL) == 1  # "later" still waits behind the one that came back


async def test_a_prediction_sent_back_after_its_deadline_is_aborted(make_router):
    now = [1000.0]
    router, a, log = make_router(1, clock=lambda: now[0], full_backoff_s=NEVER_S, full_backoff_max_s=NEVER_S)
    router.enqueue("p1", MODEL, _input(1), deadline_at=now[0] + 30)
    await a.wait_submitted(1)

    now[0] += 60
    a.reject_full("p1")

    [done] = await log.wait_finished("p1")
    assert (done.status, done.error) == (Status.ABORTED, DEADLINE_QUEUED)


# Deadlines cover the whole life


async def test_a_prediction_running_at_its_deadline_is_canceled_and_ends_canceled_naming_it(make_router):
    router, a, log = make_router(1)
    router.enqueue("p1", MODEL, _input(1), deadline_at=time.time() + 0.05)
    await a.wait_submitted(1)
    a.push(TaskEvent("p1", Started(1.0)))

    await wait_until(lambda: a.cancels == [["p1"]], a.changed)
    assert log.finished("p1") == []  # the node says how it ended
    a.push(TaskEvent("p1", Finished(Status.CANCELED, 1.0, 2.0, error="canceled while processing")))

    [done] = await log.wait_finished("p1")
    assert done.status is Status.CANCELED
    assert done.error == f"{DEADLINE_RUNNING}; canceled while processing"
    assert router.footprint()["running"] == 0


async def test_a_prediction_that_ends_at_its_deadline_keeps_the_nodes_verdict(make_router):
    router, a, log = make_router(1)
    router.enqueue("p1", MODEL, _input(1), deadline_at=time.time() + 0.05)
    await a.wait_submitted(1)
    await wait_until(lambda: a.cancels == [["p1"]], a.changed)

    a.finish("p1")  # it succeeded just before the cancel reached it

    [done] = await log.wait_finished("p1")
    assert done.status is Status.SUCCEEDED and done.error == ""


async def test_a_node_that_does_not_confirm_the_cancel_at_the_deadline_is_given_up_on(make_router):
    router, a, log = make_router(1, cancel_grace_s=0.05)
    router.enqueue("hung", MODEL, _input(1), deadline_at=time.time() + 0.05)
    router.enqueue("next", MODEL, _input(2))
    await a.wait_submitted(1)

    [done] = await log.wait_finished("hung")

    assert done.status is Status.CANCELED
    assert done.error.startswith(DEADLINE_RUNNING)
    assert "did not confirm its cancel within 0.05 s" in done.error
    await a.wait_submitted(2)  # its slot went to the next one
    assert a.submitted_ids == ["hung", "next"]
    a.finish("hung")  # the node's late verdict is not a second end
    a.finish("next")
    await log.wait_finished("next")
    assert len(log.finished("hung")) == 1


async def test_a_deadline_passing_before_the_task_left_aborts_it_unsent(make_router):
    router, a, log = make_router(2)
    a.hold_submits = asyncio.Event()
    router.enqueue("p1", MODEL, _input(1))
    await wait_until(lambda: a.calls == [("submit", ("p1",))], a.changed)
    router.enqueue("p2", MODEL, _input(2), deadline_at=time.time() + 0.05)  # waits for p1's submit

    [done] = await log.wait_finished("p2")
    a.hold_submits.set()
    await settle()

    assert (done.status, done.error) == (Status.ABORTED, DEADLINE_QUEUED)
    assert a.submitted_ids == ["p1"] and a.cancels == []


async def test_a_prediction_ending_before_its_deadline_is_never_canceled(make_router):
    router, a, log = make_router(1)
    router.enqueue("quick", MODEL, _input(1), deadline_at=time.time() + 0.05)
    await a.wait_submitted(1)
    a.finish("quick")
    await log.wait_finished("quick")

    router.enqueue("clock", "acme/cold", _input(2), deadline_at=time.time() + 0.1)  # no instance: it aborts
    await log.wait_finished("clock")  # by then the first one's deadline has passed

    assert a.cancels == []
    assert [f.status for f in log.finished("quick")] == [Status.SUCCEEDED]


# Bounded memory


async def test_canceled_queued_predictions_leave_no_heap_entries_behind(make_router):
    router, _, log = make_router(1, full_backoff_s=NEVER_S, full_backoff_max_s=NEVER_S)
    router.update_table(table(2, []))  # no instance: everything stays queued
    router.enqueue("keeper", MODEL, _input(0))
    n = 1000

    for i in range(n):
        router.enqueue(f"c{i}", MODEL, _input(i))
        router.cancel(f"c{i}")

    size = router.footprint()
    assert size["queued"] == 1 and size["heap_entries"] <= 3  # not n + 1: dead entries are compacted
    assert len(log.finished("c0")) == 1 and log.finished(f"c{n - 1}")[0].status is Status.CANCELED

    for i in range(n):
        router.enqueue(f"d{i}", MODEL, _input(i))
    for i in range(n - 1):  # cancel all but the newest, oldest first
        router.cancel(f"d{i}")
    size = router.footprint()
    assert size["queued"] == 2 and size["heap_entries"] <= 2 * 2 + 1

    router.cancel("keeper")
    router.cancel(f"d{n - 1}")
    assert router.footprint()["heap_entries"] == 0 and router.queue_length(MODEL) == 0


async def test_predictions_aborted_in_the_queue_leave_nothing_behind(make_router):
    router, _, log = make_router(1)
    router.update_table(table(2, []))
    n = 300
    for i in range(n):
        router.enqueue(f"p{i}", MODEL, _input(i), deadline_at=time.time())

    await log.wait_finished(*(f"p{i}" for i in range(n)))

    assert all(log.finished(f"p{i}")[0].status is Status.ABORTED for i in range(n))
    assert set(router.footprint().values()) == {0}


async def test_finished_predictions_leave_nothing_behind_in_the_router(make_router):
    """Many predictions through a node, some rejected for want of a slot on the way, some with a
    deadline: once all ended, the router holds nothing for any of them."""
    router, a, log = make_router(8, full_backoff_s=0.0, full_backoff_max_s=0.0)
    n = 400
    for i in range(n):
        router.enqueue(f"p{i}", MODEL, _input(i), deadline_at=time.time() + 60 if i % 2 else None)
    rejected: set[str] = set()
    handled = 0

    def all_ended() -> bool:
        return all(log.finished(f"p{i}") for i in range(n))

    while not all_ended():
        await wait_until(lambda: len(a.submitted_ids) > handled or all_ended(), a.changed)
        for pid in a.submitted_ids[handled:]:
            handled += 1
            if pid not in rejected and int(pid[1:]) % 7 == 0:
                rejected.add(pid)
                a.reject_full(pid)
            else:
                a.push(TaskEvent(pid, Started(1.0)))
                a.finish(pid)
    await log.wait_finished(*(f"p{i}" for i in range(n)))
    await settle()

    assert all(len(log.finished(f"p{i}")) == 1 for i in range(n))
    assert router.footprint() == {"queued": 0, "heap_entries": 0, "accounts": 0, "ready_entries": 0,
                                  "charges": 0, "running": 0, "outgoing": 0, "full_instances": 0,
                                  "slot_holders": 0, "dirty_routes": 0}
