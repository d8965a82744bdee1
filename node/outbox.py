"""A thread-safe buffer of task events for one router, drained by that router's data plane session, and
what the agent keeps of that router's session so that it survives a broken stream.

Worker threads append; the agent's event loop wakes the session's pending ``take`` at most once per
batch, and what it takes goes to the router as one ``Events`` frame (``node.data_server``). So under
load one frame carries many events, and the messages per prediction fall well below one.

Streams are paced: once a prediction's text has begun to flow, its next chunks and its logs wait for the
next frame, and frames that carry only such events, or ``Started``, go at most one per
``stream_interval_s`` (20 ms by default), so under load one message carries several tokens of a stream.
Every other event goes at once and takes the waiting ones with it: a prediction's first chunk (its time
to first token), its end (which frees its slot in the router and ends the client's wait: a paced end
cost a lone 4-token stream 15 of its 30 ms), and every event of a prediction that streams no text (an
echo's end, a diffusion's progress). Measured on 2 cores, 32 greedy streams of the tiny Llama through
the cluster: one frame a step (one token a stream a message) gave ~4,000 tokens/s with the machine
saturated, 20 ms frames ~5,300 with a quarter of it idle, the gateway's CPU per token halved; the
stream's inter-token gap p50 went from 7 ms to 22 ms, below what a reader can see
(`bench/results/llm_agents.md`).

A session numbers its batches (``take_batch``) and keeps each until the router acknowledges it
(``ack``), so a router that reconnects gets again what it may have missed (``attach``); it also counts
the router's frames the agent applied (``applied``), so the router knows what to send again. A session
that reconnects supersedes the one before: the old one takes nothing more (``Superseded``).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from warmfleet.domain import Finished, OutputChunk, Rejected, Requeued, Started, TaskEvent

Batch = tuple[int, list[TaskEvent]]  # (seq, events): one Events frame
# Frames of only what may wait (a flowing stream's events, a start): at most one per this.
STREAM_INTERVAL_S = 0.02
ENDS = (Finished, Rejected, Requeued)  # the events after which a prediction has nothing more here


class Superseded(Exception):
    """A newer session of the same router took the outbox over: this one must end."""


class ResumeRefused(Exception):
    """A router asked to resume a session whose events the agent no longer holds."""


class Outbox:
    def __init__(self, loop: asyncio.AbstractEventLoop, router_id: str = "",
                 stream_interval_s: float = STREAM_INTERVAL_S) -> None:
        self.router_id = router_id
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[TaskEvent] = []
        self._signalled = False
        self.stream_interval_s = stream_interval_s
        self._urgent = False  # an event buffered that must go at once (see ``put``)
        self._flowing: set[str] = set()  # predictions whose text has begun to go out
        self._last_take = float("-inf")
        self._wake = asyncio.Event()
        self._loop_thread = threading.get_ident()  # built on the loop's own thread
        # The session's state, on the loop's thread only.
        self.seq = 0  # the last batch taken
        self._unacked: deque[Batch] = deque()  # taken, not yet acknowledged by the router
        self.applied = 0  # the router's Submit and Cancel frames applied, over all its sessions
        self.generation = 0  # the session that owns the outbox; a reconnect makes a new one
        self.attached = False  # whether a session is open
        self.active = 0  # the router's tasks running on this agent
        self.release_timer: asyncio.TimerHandle | None = None

    def put(self, event: TaskEvent) -> None:
        """Add an event; callable from any thread. It wakes the session's ``take`` at once unless it may
        wait for the next paced frame: a ``Started``, or an event but the end of a prediction whose text
        flows."""
        body = event.body
        with self._lock:
            self._items.append(event)
            urgent = not (isinstance(body, Started)
                          or (event.prediction_id in self._flowing and not isinstance(body, ENDS)))
            if self._signalled and (self._urgent or not urgent):
                return  # a wake-up is on its way, or the event may wait for the next frame
            self._urgent = self._urgent or urgent
            self._signalled = True
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def take(self, max_wait_s: float, generation: int | None = None) -> list[TaskEvent]:
        """Everything buffered, waiting up to ``max_wait_s`` for the first event. With ``generation``,
        raises ``Superseded`` once a newer session owns the outbox."""
        deadline = self._loop.time() + max_wait_s
        while True:
            if generation is not None and generation != self.generation:
                raise Superseded()
            now = self._loop.time()
            until = deadline
            with self._lock:
                if self._items:
                    paced = self._last_take + self.stream_interval_s
                    if self._urgent or now >= paced:
                        return self._take_all(now)
                    until = min(deadline, paced)  # only flowing text: it waits for the next frame
            remaining = until - now
            if remaining <= 0:
                return []
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                pass
            # Let what was woken in the same turn run first: a fast prediction's Started and Finished
            # then travel in one batch instead of two.
            await asyncio.sleep(0)

    def _take_all(self, now: float) -> list[TaskEvent]:
        """Everything buffered, coalesced (under the lock)."""
        items, self._items, self._signalled, self._urgent = self._items, [], False, False
        self._last_take = now
        for event in items:
            if _is_text(event):
                self._flowing.add(event.prediction_id)
            elif isinstance(event.body, ENDS):
                self._flowing.discard(event.prediction_id)
        return coalesce(items)

    async def take_batch(self, generation: int, max_wait_s: float) -> Batch | None:
        """``take`` for session ``generation``, numbered and kept until acknowledged; None if nothing
        came within ``max_wait_s``."""
        events = await self.take(max_wait_s, generation)
        if not events:
            return None
        self.seq += 1
        self._unacked.append((self.seq, events))
        return self.seq, events

    def ack(self, seq: int) -> None:
        """The router has every batch up to ``seq``."""
        unacked = self._unacked
        while unacked and unacked[0][0] <= seq:
            unacked.popleft()

    def attach(self, resume: bool, after_seq: int) -> tuple[int, list[Batch]]:
        """A session opens: its generation, and the batches to send it first (those after ``after_seq``
        that the router may have missed). Without ``resume``, a new process of the router starts: both
        counts start again, and the batches an earlier process did not acknowledge are numbered anew from
        1, to be sent to this one (what is still buffered follows them). Raises ``ResumeRefused`` when
        the router has had batches this outbox never numbered (it was released and made anew meanwhile)."""
        if resume and after_seq > self.seq:
            raise ResumeRefused(f"the router had events up to {after_seq}, this agent numbered {self.seq}")
        if not resume:
            self._unacked = deque(enumerate((events for _, events in self._unacked), start=1))
            self.seq, self.applied = len(self._unacked), 0
        self.ack(after_seq)
        self.generation += 1
        self.attached = True
        self._wake.set()  # the session it supersedes, waiting in ``take``, ends now
        return self.generation, list(self._unacked)

    def detach(self, generation: int) -> bool:
        """Session ``generation`` ended; whether it was the one that owned the outbox."""
        if generation != self.generation:
            return False
        self.attached = False
        return True

    def held(self) -> set[str]:
        """The predictions with events here: buffered, or taken and not acknowledged."""
        with self._lock:
            ids = {event.prediction_id for event in self._items}
        return ids.union(*({event.prediction_id for event in events} for _, events in self._unacked))

    def size(self) -> int:
        """Events held: buffered, and taken but not acknowledged."""
        with self._lock:
            buffered = len(self._items)
        return buffered + sum(len(events) for _, events in self._unacked)


def _is_text(event: TaskEvent) -> bool:
    body = event.body
    return (isinstance(body, OutputChunk) and body.joinable and body.file is None
            and isinstance(body.value, str))


def coalesce(events: list[TaskEvent]) -> list[TaskEvent]:
    """Merge text chunks of a prediction that piled up with nothing else of it between them.

    Each prediction's events keep their order. At low load every token still travels alone; under load
    (many streams, one frame) one message carries several tokens of a stream, which spares the data
    plane, the gateway and the client one event per token.
    """
    out: list[TaskEvent] = []
    open_chunk: dict[str, int] = {}  # prediction id -> index in ``out`` of its latest text chunk
    for event in events:
        body, pid = event.body, event.prediction_id
        if _is_text(event):
            at = open_chunk.get(pid)
            if at is not None:
                out[at] = TaskEvent(pid, OutputChunk(value=out[at].body.value + body.value))
                continue
            open_chunk[pid] = len(out)
        else:
            open_chunk.pop(pid, None)
        out.append(event)
    return out
