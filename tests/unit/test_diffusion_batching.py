"""Dynamic batching of image jobs: the pure policy (which jobs share a call, and when) and the worker
thread that applies it (progress, cancel, failures), with a fake pipeline and a fake clock."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, strategies as st

from runners.diffusion.batching import BatchKey, Job, lora_set, take_batch
from runners.diffusion.worker import BatchWorker, Done, Failed, Progress


def job(key: str, images: int = 1, at: float = 0.0) -> Job:
    return Job(key, images, at)


# The policy


def test_nothing_waiting_means_wait_for_an_arrival():
    decision = take_batch([], now=5.0, max_images=4, max_wait_s=0.01)
    assert decision.batch == () and decision.wait_s is None


def test_a_lone_job_waits_for_company_until_its_max_wait():
    waiting = [job("a", at=1.0)]
    early = take_batch(waiting, now=1.004, max_images=4, max_wait_s=0.010)
    assert early.batch == () and early.wait_s == pytest.approx(0.006)
    due = take_batch(waiting, now=1.010, max_images=4, max_wait_s=0.010)
    assert list(due.batch) == waiting


def test_a_full_batch_runs_at_once_and_takes_only_its_key_in_arrival_order():
    waiting = [job("a", 2, 0.0), job("b", 1, 0.0), job("a", 1, 0.001), job("a", 1, 0.002), job("a", 1, 0.003)]
    decision = take_batch(waiting, now=0.0, max_images=4, max_wait_s=10.0)
    assert decision.batch == [waiting[0], waiting[2], waiting[3]]


def test_the_oldest_job_leads_so_another_key_is_never_starved():
    waiting = [job("b", at=0.0)] + [job("a", at=0.001 * i) for i in range(1, 9)]
    decision = take_batch(waiting, now=1.0, max_images=4, max_wait_s=0.01)
    assert [j.key for j in decision.batch] == ["b"]


def test_a_job_that_does_not_fit_ends_the_batch_rather_than_being_skipped():
    waiting = [job("a", 3, 0.0), job("a", 2, 0.0), job("a", 1, 0.0)]
    decision = take_batch(waiting, now=0.0, max_images=4, max_wait_s=10.0)
    assert decision.batch == [waiting[0]]  # runs now: a same-key job is left for the next call


def test_a_job_bigger_than_a_batch_runs_alone():
    waiting = [job("a", 9, 0.0), job("a", 1, 0.0)]
    assert take_batch(waiting, now=0.0, max_images=4, max_wait_s=10.0).batch == [waiting[0]]


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 5), st.floats(0, 1)), max_size=30),
       st.floats(0, 2), st.integers(1, 8), st.floats(0.001, 1))
def test_policy_guarantees(specs, since_last, max_images, max_wait_s):
    """What the policy guarantees, for any queue: a batch has one key, the oldest job's, and is in
    arrival order; it holds at most max_images images unless it is one job; it is never empty when the
    leader has waited its time; and a wait is never longer than the leader's remaining time."""
    waiting = [job(k, n, at) for k, n, at in sorted(specs, key=lambda s: s[2])]
    now = (waiting[-1].arrived_at if waiting else 0.0) + since_last
    decision = take_batch(waiting, now, max_images, max_wait_s)
    if decision.batch:
        assert decision.batch[0] is waiting[0]
        assert {j.key for j in decision.batch} == {waiting[0].key}
        position = {id(j): i for i, j in enumerate(waiting)}  # by identity: equal jobs can be distinct
        positions = [position[id(j)] for j in decision.batch]
        assert positions == sorted(positions)
        assert len(decision.batch) == 1 or sum(j.images for j in decision.batch) <= max_images
    elif waiting:
        assert now - waiting[0].arrived_at < max_wait_s
        assert 0 < decision.wait_s <= max_wait_s


# Keys: what must be per call


def key(mode: str = "txt2img", loras=()) -> BatchKey:
    return BatchKey(mode=mode, width=64, height=64, steps=4, scheduler="DPM++ 2M", guidance_scale=7.5,
                    strength=0.8 if mode != "txt2img" else 0.0, controlnets=(), guess_mode=False,
                    loras=lora_set(loras))


def test_the_same_adapters_asked_in_another_order_make_the_same_key():
    assert key(loras=[("name:a", 1), ("sha256:b", 0.5)]) == key(loras=[("sha256:b", 0.5), ("name:a", 1.0)])
    assert key(loras=[("name:a", 1)]).loras == (("name:a", 1.0),)


@pytest.mark.parametrize("other", [
    key(loras=[("name:a", 1)]),  # an adapter where there was none
    key(loras=[("name:a", 0.5)]),  # the same adapter at another scale
    key(loras=[("name:a", 0.5), ("name:b", 1)]),  # another set
    key(loras=[("name:a", 0)]),  # scale 0 is loaded and set, so it is its own call too
    key("inpaint"),  # inpainting is another pipeline than img2img
    replace(key(), refine=True, high_noise_frac=0.8),  # SDXL's refiner: a second call
    replace(key(), refine=True, high_noise_frac=0.5),  # another split of the schedule
    replace(key(), family="sdxl"),  # another family's pipelines
])
def test_jobs_with_another_adapter_set_or_mode_never_share_a_call(other):
    base = key("img2img") if other.mode == "inpaint" else key()
    assert other != base
    waiting = [Job(base, 1, 0.0), Job(other, 1, 0.0), Job(base, 1, 0.0), Job(other, 1, 0.0)]
    first = take_batch(waiting, now=1.0, max_images=4, max_wait_s=0.01)
    assert [j.key for j in first.batch] == [base, base]
    second = take_batch([j for j in waiting if j not in first.batch], now=1.0, max_images=4, max_wait_s=0.01)
    assert [j.key for j in second.batch] == [other, other]


# The worker


class FakePipeline:
    """Records calls; each image is (prompt, seed); steps are reported, and a gate can hold a call."""

    def __init__(self, steps: int = 3) -> None:
        self.steps = steps
        self.calls: list[tuple[Any, list[Any]]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.in_call = threading.Event()
        self.fail: Exception | None = None

    def __call__(self, key, requests, on_step):
        self.calls.append((key, requests))
        self.in_call.set()
        for step in range(1, self.steps + 1):
            self.hold.wait(5)
            on_step(step, self.steps)
        if self.fail:
            raise self.fail
        return [[(prompt, seed) for seed in seeds] for prompt, seeds in requests]


class Inbox:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.ended = threading.Event()

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        if isinstance(event, (Done, Failed)):
            self.ended.set()


@pytest.fixture
def pipeline():
    return FakePipeline()


@pytest.fixture
def worker(pipeline):
    w = BatchWorker(pipeline, max_images=4, max_wait_s=0.05)
    w.start()
    yield w
    pipeline.hold.set()
    w.stop()


def test_jobs_submitted_together_share_one_call_and_each_gets_its_own_images(worker, pipeline):
    inboxes = [Inbox() for _ in range(3)]
    for i, inbox in enumerate(inboxes):
        worker.submit("k", 1 + (i == 0), (f"p{i}", [10 * i] + ([11] if i == 0 else [])), inbox)
    for inbox in inboxes:
        assert inbox.ended.wait(5)
    assert len(pipeline.calls) == 1
    assert inboxes[0].events[-1] == Done([("p0", 0), ("p0", 11)], batch_size=4)
    assert inboxes[2].events[-1] == Done([("p2", 20)], batch_size=4)
    progress = [e for e in inboxes[1].events if isinstance(e, Progress)]
    assert [(p.step, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert progress[-1].eta_s == 0


def test_jobs_with_different_keys_run_in_separate_calls(worker, pipeline):
    a, b = Inbox(), Inbox()
    worker.submit("k1", 1, ("a", [1]), a)
    worker.submit("k2", 1, ("b", [2]), b)
    assert a.ended.wait(5) and b.ended.wait(5)
    assert [call[0] for call in pipeline.calls] == ["k1", "k2"]


def test_cancel_while_waiting_leaves_the_queue_and_the_others_run(worker, pipeline):
    pipeline.hold.clear()
    first = Inbox()
    worker.submit("busy", 1, ("x", [0]), first)  # occupies the worker
    assert pipeline.in_call.wait(5)
    gone, kept = Inbox(), Inbox()
    job = worker.submit("k", 1, ("gone", [1]), gone)
    worker.submit("k", 1, ("kept", [2]), kept)
    worker.cancel(job)
    pipeline.hold.set()
    assert kept.ended.wait(5)
    assert pipeline.calls[1][1] == [("kept", [2])]
    assert gone.events == []


def test_a_call_whose_jobs_are_all_cancelled_stops_at_the_next_step(worker, pipeline):
    pipeline.steps = 50
    pipeline.hold.clear()
    inbox = Inbox()
    job = worker.submit("k", 1, ("x", [0]), inbox)
    assert pipeline.in_call.wait(5)
    worker.cancel(job)
    pipeline.hold.set()
    after = Inbox()
    worker.submit("k", 1, ("next", [1]), after)  # runs once the abandoned call has stopped
    assert after.ended.wait(5)
    assert not any(isinstance(e, (Done, Failed)) for e in inbox.events)
    assert sum(isinstance(e, Progress) for e in inbox.events) <= 1


def test_a_failed_call_reports_to_every_job_in_it(worker, pipeline):
    pipeline.fail = ValueError("out of memory")
    inboxes = [Inbox(), Inbox()]
    for inbox in inboxes:
        worker.submit("k", 1, ("x", [0]), inbox)
    for inbox in inboxes:
        assert inbox.ended.wait(5)
        assert isinstance(inbox.events[-1], Failed) and "out of memory" in str(inbox.events[-1].error)


def test_stop_fails_the_jobs_still_waiting(pipeline):
    pipeline.hold.clear()
    w = BatchWorker(pipeline, max_images=1, max_wait_s=0.0)
    w.start()
    running, waiting = Inbox(), Inbox()
    w.submit("k", 1, ("a", [0]), running)
    assert pipeline.in_call.wait(5)
    w.submit("k", 1, ("b", [1]), waiting)
    stopper = threading.Thread(target=w.stop)
    stopper.start()
    assert waiting.ended.wait(5) and isinstance(waiting.events[-1], Failed)
    pipeline.hold.set()
    stopper.join(5)
    assert isinstance(running.events[-1], Done)  # the call in progress finishes
