"""What an agent's outbox keeps of a router's session: numbered batches kept until acknowledged and
replayed to a router that resumes, the count of the router's frames it applied, and a session that a
newer one supersedes. Memory follows what is unacknowledged, not what went through."""

from __future__ import annotations

import asyncio

import pytest

from node.outbox import Outbox, ResumeRefused, Superseded
from warmfleet.domain import Finished, OutputChunk, Started, Status, TaskEvent


def started(pid: str) -> TaskEvent:
    return TaskEvent(pid, Started(1.0))


@pytest.fixture
async def box() -> Outbox:
    return Outbox(asyncio.get_running_loop(), "router-1")


async def test_batches_are_numbered_in_order_and_kept_until_acknowledged(box):
    generation, replay = box.attach(False, 0)
    assert replay == []
    taken = []
    for n in range(5):
        box.put(started(f"p{n}"))
        taken.append(await box.take_batch(generation, 1.0))

    assert [seq for seq, _ in taken] == [1, 2, 3, 4, 5]
    assert [events for _, events in taken] == [[started(f"p{n}")] for n in range(5)]
    assert box.size() == 5
    box.ack(3)
    assert box.size() == 2
    box.ack(2)  # an older ack changes nothing
    assert box.size() == 2


async def test_a_router_that_resumes_gets_what_it_had_not_had_and_nothing_twice(box):
    generation, _ = box.attach(False, 0)
    for n in range(4):
        box.put(started(f"p{n}"))
        await box.take_batch(generation, 1.0)
    box.ack(1)  # the router acknowledged 1, then had 2, and the stream broke while 3 and 4 were on their way
    box.put(started("later"))  # and this came while no session was open

    generation, replay = box.attach(True, 2)

    assert [seq for seq, _ in replay] == [3, 4]
    assert box.size() == 3  # 3, 4 and the one not yet taken: 2 counts as acknowledged by the resume
    assert await box.take_batch(generation, 1.0) == (5, [started("later")])


async def test_a_new_process_of_the_router_gets_what_the_old_one_had_not_acknowledged_renumbered(box):
    generation, _ = box.attach(False, 0)
    box.put(started("acked"))
    await box.take_batch(generation, 1.0)
    box.ack(1)
    box.put(started("old"))
    await box.take_batch(generation, 1.0)
    box.put(started("older"))
    await box.take_batch(generation, 1.0)
    box.applied = 7
    box.put(started("buffered"))
    assert box.held() == {"old", "older", "buffered"}

    generation, replay = box.attach(False, 0)  # the router restarted: it has had nothing yet

    assert replay == [(1, [started("old")]), (2, [started("older")])]
    assert (box.seq, box.applied) == (2, 0)
    assert await box.take_batch(generation, 1.0) == (3, [started("buffered")])
    box.ack(3)
    assert box.size() == 0 and box.held() == set()


async def test_a_resume_past_what_the_outbox_numbered_is_refused(box):
    box.attach(False, 0)
    with pytest.raises(ResumeRefused, match="events up to 3"):
        box.attach(True, 3)


async def test_a_newer_session_supersedes_the_one_waiting_for_events(box):
    old, _ = box.attach(False, 0)
    waiting = asyncio.create_task(box.take_batch(old, 30.0))
    await asyncio.sleep(0)  # it waits for an event

    new, _ = box.attach(True, 0)

    with pytest.raises(Superseded):
        await asyncio.wait_for(waiting, 1.0)  # at once, not after its 30 s
    box.put(started("p1"))
    assert await box.take_batch(new, 1.0) == (1, [started("p1")])
    assert not box.detach(old) and box.attached  # the old session's end does not detach the new one
    assert box.detach(new) and not box.attached


async def test_memory_follows_what_is_unacknowledged_not_what_went_through(box):
    generation, _ = box.attach(False, 0)
    for n in range(2000):
        box.put(TaskEvent(f"p{n}", OutputChunk(value="x" * 10)))
        box.put(TaskEvent(f"p{n}", Finished(Status.SUCCEEDED, 1.0, 2.0)))
        seq, _ = await box.take_batch(generation, 1.0)
        if seq % 32 == 0:  # the router acknowledges now and then
            box.ack(seq)

    assert box.size() <= 2 * 32
    box.ack(box.seq)
    assert box.size() == 0


# Pacing: the text of a stream already flowing waits for the next frame; everything else goes at once


def text(pid: str, value: str) -> TaskEvent:
    return TaskEvent(pid, OutputChunk(value=value))


async def test_a_flowing_stream_s_text_goes_at_most_one_frame_per_interval_and_merged():
    loop = asyncio.get_running_loop()
    box = Outbox(loop, "router-1", stream_interval_s=0.05)
    box.put(text("p", "a"))
    assert await box.take(1.0) == [text("p", "a")]  # a first chunk goes at once: the time to first token
    first_frame_at = loop.time()
    box.put(text("p", "b"))
    box.put(text("p", "c"))
    assert await box.take(1.0) == [text("p", "bc")]
    assert loop.time() - first_frame_at >= 0.05


async def test_anything_but_flowing_text_goes_at_once_and_takes_the_waiting_text_with_it():
    box = Outbox(asyncio.get_running_loop(), "router-1", stream_interval_s=60.0)
    box.put(text("p", "a"))
    await box.take(1.0)
    box.put(text("p", "b"))
    assert await box.take(0.05) == []  # held for the next frame, not lost
    assert box.size() == 1
    box.put(text("q", "x"))  # another prediction's first chunk
    assert await box.take(1.0) == [text("p", "b"), text("q", "x")]
    box.put(text("q", "y"))  # q flows now: its next chunk waits
    box.put(started("r"))  # as a start does
    assert await box.take(0.05) == []
    box.put(TaskEvent("e", Finished(Status.SUCCEEDED, 1.0, 2.0)))  # the end of one that streams no text
    assert [e.prediction_id for e in await box.take(1.0)] == ["q", "r", "e"]
    box.put(text("p", "c"))
    box.put(TaskEvent("p", Finished(Status.SUCCEEDED, 1.0, 2.0)))  # a flowing stream's end goes at once
    assert [type(e.body) for e in await box.take(1.0)] == [OutputChunk, Finished]
    box.put(text("p", "again"))  # p ended: its text is a first chunk again
    assert await box.take(0.05) == [text("p", "again")]
