"""The thread that owns the pipelines: it gathers waiting jobs into batches (``batching.take_batch``)
and runs one pipeline call at a time, reporting each job's progress and result through its ``emit``.

Cancel: a job still waiting leaves the queue at once; a job inside a running call stops hearing about
it at once (its prediction ends canceled without waiting), and the call itself is abandoned at the
next step when every job in it has been canceled, freeing the device.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from runners.diffusion.batching import Job, take_batch


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    eta_s: float


@dataclass(frozen=True)
class Done:
    images: list[Any]
    batch_size: int  # images computed in the same call


@dataclass(frozen=True)
class Failed:
    error: BaseException


Emit = Callable[[Any], None]
RunBatch = Callable[[Any, list[Any], Callable[[int, int], None]], list[list[Any]]]


@dataclass(eq=False)
class Ticket:
    request: Any
    emit: Emit
    cancelled: bool = field(default=False)


class _EveryJobCancelled(Exception):
    pass


class BatchWorker:
    def __init__(self, run_batch: RunBatch, max_images: int, max_wait_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._run_batch = run_batch
        self._max_images = max_images
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: list[Job] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="diffusion-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._waiting:
                job.payload.emit(Failed(RuntimeError("the model was unloaded")))
            self._waiting.clear()
            self._cond.notify()
        self._thread.join()

    def submit(self, key: Hashable, images: int, request: Any, emit: Emit) -> Job:
        job = Job(key, images, self._clock(), Ticket(request, emit))
        with self._cond:
            if self._stopping:
                raise RuntimeError("the model is unloading")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        with self._cond:
            job.payload.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._stopping:
                decision = take_batch(self._waiting, self._clock(), self._max_images, self._max_wait_s)
                if decision.batch:
                    for job in decision.batch:
                        self._waiting.remove(job)
                    return list(decision.batch)
                self._cond.wait(decision.wait_s)
            return None

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        tickets = [job.payload for job in batch]
        started = self._clock()

        def on_step(step: int, total: int) -> None:
            live = [t for t in tickets if not t.cancelled]
            if not live:
                raise _EveryJobCancelled()
            elapsed = self._clock() - started
            progress = Progress(step, total, elapsed / step * (total - step))
            for ticket in live:
                ticket.emit(progress)

        try:
            results = self._run_batch(batch[0].key, [t.request for t in tickets], on_step)
        except _EveryJobCancelled:
            return
        except Exception as err:  # noqa: BLE001 - reported to every job of the batch, never lost
            for ticket in tickets:
                ticket.emit(Failed(err))
            return
        size = sum(job.images for job in batch)
        for ticket, images in zip(tickets, results):
            if not ticket.cancelled:
                ticket.emit(Done(images, size))
