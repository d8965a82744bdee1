"""A router that restarted (the same id, a new process) takes up what its earlier process left, against
fake nodes: what a node still runs is followed there, what no node holds is queued once every node of
the first table has answered (re-run if it had started), and nothing is run twice or left waiting."""

from __future__ import annotations

import asyncio

import pytest

from scheduler.ports import NodeLost
from scheduler.router import Router, Unfinished
from tests.unit.fakes import EventLog, FakeNodeData, instance, settle, table, wait_until
from warmfleet.domain import Finished, Requeued, Started, Status, TaskEvent

MODEL = "acme/echo"


@pytest.fixture
async def router_and_log():
    log = EventLog()
    router = Router("gateway-1", log, 100)
    yield router, log
    await router.close()


def unfinished(pid: str, started: bool, **kwargs) -> Unfinished:
    return Unfinished(pid, MODEL, {"text": pid}, started=started, **kwargs)


async def test_each_unfinished_prediction_is_followed_where_it_runs_or_queued_once_all_nodes_answered(
        router_and_log):
    router, log = router_and_log
    a, b = FakeNodeData("A"), FakeNodeData("B")
    a.held = {"running": "i1", "ended": "", "orphan": "i1"}
    b.hold_attach = asyncio.Event()
    router.recover([unfinished("running", True), unfinished("ended", True), unfinished("queued", False),
                    unfinished("lost", True)])
    router.update_table(table(1, [instance("i1", MODEL, "A", 4)], a, b))

    # A answered, B has not: what A holds is followed again, nothing else is queued yet.
    await wait_until(lambda: a.cancels, a.changed)
    assert a.cancels == [["orphan"]]  # a run there that no one waits for any more
    await settle()
    assert a.submits == [] and log.events == []

    b.hold_attach.set()
    await a.wait_submitted(2)
    assert a.submitted_ids == ["queued", "lost"]
    [again] = log.bodies("lost")
    assert again == Requeued("the gateway restarted while it ran; no node still runs it", 2)
    assert log.bodies("queued") == []  # it had not started: its first run, no re-run

    a.push(TaskEvent("ended", Finished(Status.SUCCEEDED, 1.0, 2.0)), TaskEvent("running", Started(1.0)))
    a.finish("running")
    a.finish("queued")
    a.finish("lost")
    done = await log.wait_finished("running", "ended", "queued", "lost")
    assert all(f.status is Status.SUCCEEDED for f in done)
    await settle()
    assert all(len(log.finished(p)) == 1 for p in ("running", "ended", "queued", "lost"))
    assert a.submitted_ids == ["queued", "lost"]  # what A still ran was never sent again
    assert router.footprint() == dict.fromkeys(router.footprint(), 0)


async def test_a_rerun_after_a_restart_that_was_a_rerun_already_fails_and_a_lost_node_answers_nothing(
        router_and_log):
    router, log = router_and_log
    a = FakeNodeData("A")
    a.attach_error = NodeLost("A")
    router.recover([unfinished("twice", True, attempt=2), unfinished("fresh", False)])
    router.update_table(table(1, [instance("i1", MODEL, "A", 4)], a))

    [twice] = await log.wait_finished("twice")
    assert twice.status is Status.FAILED
    assert twice.error == ("the gateway restarted while it ran; no node still runs it; not run again: it was "
                           "a re-run already")
    await settle()
    assert log.bodies("fresh") == [] and router.queue_length(MODEL) == 1  # it waits for an instance


async def test_a_prediction_canceled_before_its_node_answered_ends_once_and_the_node_is_told(router_and_log):
    router, log = router_and_log
    a = FakeNodeData("A")
    a.held = {"p1": "i1"}
    a.hold_attach = asyncio.Event()
    router.recover([unfinished("p1", True)])
    router.update_table(table(1, [instance("i1", MODEL, "A", 4)], a))

    router.cancel("p1")
    [done] = await log.wait_finished("p1")
    assert done.status is Status.CANCELED
    a.hold_attach.set()
    await wait_until(lambda: a.cancels, a.changed)
    assert a.cancels == [["p1"]] and a.submits == []
    await settle()
    assert len(log.finished("p1")) == 1


async def test_a_first_table_without_nodes_queues_every_unfinished_prediction_at_once(router_and_log):
    router, log = router_and_log
    router.recover([unfinished("p1", False), unfinished("p2", True)])
    router.update_table(table(1, []))

    assert router.queue_length(MODEL) == 2
    assert log.bodies("p2") == [Requeued("the gateway restarted while it ran; no node still runs it", 2)]


async def test_recovered_predictions_keep_their_accounts_and_share_the_instance_in_turn(router_and_log):
    router, log = router_and_log
    a = FakeNodeData("A")
    router.recover([unfinished(f"a{n}", False, account="alice") for n in range(3)]
                   + [unfinished("b0", False, account="bob")])
    router.update_table(table(1, [instance("i1", MODEL, "A", 1)], a))

    for n in range(1, 4):
        await a.wait_submitted(n)
        a.finish(a.submitted_ids[-1])
    await a.wait_submitted(4)
    assert a.submitted_ids == ["a0", "b0", "a1", "a2"]  # bob's turn came second, not after alice's three
