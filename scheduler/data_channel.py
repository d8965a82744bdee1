"""The router's end of the data plane (see ``warmfleet.dataplane``): one session with one agent for one
router, a ``NodeData`` so the router does not know which transport it uses.

The session outlives its stream. When the stream breaks (the agent's side closed it, the network dropped
it, or a keepalive ping went unanswered: ``dataplane.CHANNEL_OPTIONS``), the channel opens a new one, up
to ``reconnect_tries`` times with a doubling backoff, and resumes: its ``Hello`` names the last ``Events``
frame it had, so the agent replays the ones after it, and the agent's ``Welcome`` says how many of the
router's frames it applied, so the channel sends the rest again. Nothing is lost, nothing arrives twice.
Only when no try succeeds (the agent is gone, or no longer holds the session) does ``poll`` raise
``NodeLost``, and the router ends what ran there as before.

``submit`` and ``cancel`` never wait for a stream: their frame is kept (until the agent says it applied
it) and written now if a stream is up, else when the next one opens.

An agent that serves TLS gave its certificate (over Ray, with the secret): the channel speaks TLS to it and
trusts that certificate alone, so a stream that opens is to that agent and nobody in between.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import grpc

from scheduler.ports import NodeLost
from warmfleet import dataplane
from warmfleet.domain import Task, TaskEvent

log = logging.getLogger(__name__)

RECONNECT_TRIES = 6  # opens of a stream in a row that may fail before the node is lost
RECONNECT_BACKOFF_S = 0.1  # the wait before the second try; it doubles for each try after
RECONNECT_BACKOFF_MAX_S = 2.0
OPEN_TIMEOUT_S = 3.0  # for a stream to open and the agent to answer its Hello
ACK_EVERY = 32  # Events frames between two Acks under load
ACK_AFTER_S = 0.25  # at most this long between an Events frame and its Ack
# What the agent answers when another try would not change its mind.
_REFUSALS = frozenset({grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNAUTHENTICATED,
                       grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED})
_WRITE_ERRORS = (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError)


class _Refused(Exception):
    """The agent refused the session for good (or speaks another protocol)."""


class DataChannel:
    """A ``NodeData`` over a session with one agent's ``node.data_server``, opened on first use, for the
    router ``router_id`` only: the agent streams back the events of that router's tasks. ``certificate``:
    the agent's PEM certificate, for a TLS session verified with it alone; empty for plaintext."""

    def __init__(self, node_id: str, address: str, secret: str, router_id: str,
                 reconnect_tries: int = RECONNECT_TRIES, backoff_s: float = RECONNECT_BACKOFF_S, *,
                 certificate: bytes = b"") -> None:
        self.node_id = node_id
        self.data_address = address
        self._secret = secret
        self._credentials = grpc.ssl_channel_credentials(certificate) if certificate else None
        self._router_id = router_id
        self._tries = reconnect_tries
        self._backoff_s = backoff_s
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None  # the open stream; None while (re)connecting
        self._reader: asyncio.Task | None = None
        self._opener: asyncio.Task | None = None
        self._buffer: list[TaskEvent] = []
        self._wake = asyncio.Event()
        self._lost: NodeLost | None = None
        self._closed = False
        self._write_lock = asyncio.Lock()
        self._resumable = False  # a session was opened: later streams resume it
        self._received = 0  # seq of the last Events frame taken
        self._acked = 0  # the last seq acknowledged to the agent
        self._ack_timer: asyncio.TimerHandle | None = None
        self._acking: asyncio.Task | None = None
        self._closing: asyncio.Task | None = None  # the channel of a lost node, closing
        self._written = 0  # Submit and Cancel frames so far (their numbers)
        self._sent: deque[tuple[int, dataplane.ToAgent]] = deque()  # those the agent may not have applied
        self.reconnects = 0  # streams opened after the first (for tests and logs)
        self._held: dict[str, str] | None = None  # the first Welcome's, until ``attach`` hands it over

    # Opening, and opening again

    def _start_opening(self, old_call: Any = None, old_channel: grpc.aio.Channel | None = None,
                       reason: str = "") -> None:
        if self._closed or self._lost is not None or (self._opener is not None and not self._opener.done()):
            return
        self._opener = asyncio.get_running_loop().create_task(
            self._reopen(old_call, old_channel, reason), name=f"data-open-{self.node_id}")

    def _broken(self, call: Any, reason: str) -> None:
        """The stream ``call`` broke: open another, unless it was already replaced or given up."""
        if call is not self._call or self._closed or self._lost is not None:
            return
        log.warning("the data stream to node %s broke (%s): reconnecting", self.node_id, reason)
        self._call = None
        self._start_opening(call, self._channel, reason)

    async def _reopen(self, old_call: Any, old_channel: grpc.aio.Channel | None, reason: str) -> None:
        """Open a stream, with backoff between tries; the node is lost when none opens."""
        if old_call is not None:
            async with self._write_lock:  # no write is under way on it when it is canceled
                old_call.cancel()
        if old_channel is not None:
            await old_channel.close()
        last = reason
        for attempt in range(self._tries):
            if attempt:
                await asyncio.sleep(min(self._backoff_s * 2 ** (attempt - 1), RECONNECT_BACKOFF_MAX_S))
            try:
                await asyncio.wait_for(self._connect(), OPEN_TIMEOUT_S)
                return
            except _Refused as err:
                self._lose(f"{self.node_id}: {err}")
                return
            except (grpc.aio.AioRpcError, TimeoutError, EOFError, *_WRITE_ERRORS) as err:
                last = (f"{err.code().name} {err.details()}" if isinstance(err, grpc.aio.AioRpcError)
                        else repr(err))
        self._lose(f"{self.node_id}: its data stream could not be opened in {self._tries} tries: {last}")

    async def _connect(self) -> None:
        """Open a stream and resume the session on it: Hello, the agent's Welcome, then the frames the
        agent had not applied, before any new one."""
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(self.data_address, options=dataplane.CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.secure_channel(self.data_address, self._credentials, dataplane.CHANNEL_OPTIONS)
        resuming = self._resumable
        try:
            # Responses come in as bytes and are decoded here, which names a frame it cannot read.
            call = channel.stream_stream(dataplane.METHOD, request_serializer=dataplane.encode)(
                metadata=((dataplane.SECRET_HEADER, self._secret),))
            await call.write(dataplane.Hello(self._router_id, self._resumable, self._received))
            welcome = await _welcome(call)
            # The agent holds a session for us now: a stream that breaks from here on, even before the
            # frames below are all written, is resumed (a fresh Hello would have them applied twice).
            self._resumable = True
            if self._held is None:
                self._held = dict(welcome.held)
            async with self._write_lock:
                self._confirm(welcome.applied)
                for _, frame in self._sent:
                    await call.write(frame)
                self._channel, self._call = channel, call
        except BaseException:
            await channel.close()
            raise
        if resuming:
            self.reconnects += 1
            log.info("the data stream to node %s is open again (resumed after event %d)", self.node_id,
                     self._received)
        else:
            log.info("the data stream to node %s is open (%s)", self.node_id,
                     "TLS, its certificate pinned" if self._credentials else "plaintext")
        self._acked = self._received  # the Hello said as much
        self._reader = asyncio.get_running_loop().create_task(self._read(call), name=f"data-{self.node_id}")

    def _lose(self, reason: str) -> None:
        """Give the node up: ``poll`` raises ``NodeLost`` from now on, and the stream is let go."""
        if self._lost is None:
            self._lost = NodeLost(reason)
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._channel is not None:
            channel, self._channel = self._channel, None
            self._closing = asyncio.get_running_loop().create_task(channel.close())
        self._wake.set()

    # Reading

    async def _read(self, call: Any) -> None:
        try:
            while (data := await call.read()) is not grpc.aio.EOF:  # read(), as the Welcome was
                match dataplane.decode(data):
                    case dataplane.Events() as frame:
                        self._take(frame)
                    case frame:
                        raise dataplane.UnknownFrame(f"{type(frame).__name__} is not a frame for a router "
                                                     "mid-session")
            reason = "the agent closed its stream"
        except grpc.aio.AioRpcError as err:
            if err.code() in _REFUSALS:  # the agent refused a frame of ours: another stream would too
                self._lose(f"{self.node_id}: {err.code().name} {err.details()}")
                return
            reason = f"{err.code().name} {err.details()}"
        except dataplane.UnknownFrame as err:  # the agent speaks another protocol: give up on it
            log.error("node %s sent a frame the router refuses: %s", self.node_id, err)
            self._lose(f"{self.node_id}: it sent a frame the router refuses: {err}")
            call.cancel()
            return
        except Exception as err:  # noqa: BLE001 - a stream that failed otherwise is opened again
            log.exception("reading the data stream of node %s failed", self.node_id)
            reason = repr(err)
        self._broken(call, reason)

    def _take(self, frame: dataplane.Events) -> None:
        """Take one Events frame: once, in order (a replayed one already taken is dropped)."""
        if frame.seq <= self._received:
            return
        if frame.seq != self._received + 1:  # never, unless a peer is broken: events are missing
            raise dataplane.UnknownFrame(f"Events {frame.seq} came after {self._received}")
        self._received = frame.seq
        self._confirm(frame.applied)
        if frame.events:
            self._buffer.extend(frame.events)
            self._wake.set()
        if frame.seq - self._acked >= ACK_EVERY:
            self._ack_now()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_AFTER_S, self._ack_now)

    def _confirm(self, applied: int) -> None:
        """The agent applied our first ``applied`` frames: they need not be sent again."""
        sent = self._sent
        while sent and sent[0][0] <= applied:
            sent.popleft()

    def _ack_now(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._call is not None and self._acking is None and self._received > self._acked:
            self._acking = asyncio.get_running_loop().create_task(self._ack())

    async def _ack(self) -> None:
        seq = self._received
        try:
            async with self._write_lock:
                if self._call is not None:
                    await self._call.write(dataplane.Ack(seq))
                    self._acked = seq
        except _WRITE_ERRORS:
            pass  # the reader sees the stream break; the next stream's Hello acknowledges
        except asyncio.CancelledError:
            if _being_cancelled():
                raise
        finally:
            self._acking = None

    # Writing

    async def _send(self, frame: dataplane.ToAgent) -> None:
        """Number ``frame`` and keep it until the agent applied it; write it now if a stream is up."""
        if self._lost is not None:
            raise self._lost
        async with self._write_lock:
            self._written += 1
            self._sent.append((self._written, frame))
            call = self._call
            if call is None:
                self._start_opening()
                return
            try:
                await call.write(frame)
            except _WRITE_ERRORS as err:
                self._broken(call, f"a write failed: {err!r}")
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                self._broken(call, "its stream was canceled")  # grpc's word for a write on a canceled call

    def _check_router(self, router_id: str) -> None:
        if router_id != self._router_id:
            raise ValueError(f"this data channel to {self.node_id} speaks for router {self._router_id}, "
                             f"not {router_id}")

    # The NodeData port

    async def attach(self, router_id: str) -> dict[str, str]:
        """Open the session now (``NodeData.attach``) and hand over what the agent's first ``Welcome``
        said it held (once: later calls get nothing)."""
        self._check_router(router_id)
        if self._held is None and self._lost is None:
            self._start_opening()
            if self._opener is not None:
                await asyncio.shield(self._opener)
        if self._lost is not None:
            raise self._lost
        held, self._held = self._held or {}, {}
        return held

    async def submit(self, router_id: str, tasks: list[Task]) -> None:
        self._check_router(router_id)
        await self._send(dataplane.Submit(tasks))

    async def cancel(self, prediction_ids: list[str]) -> None:
        await self._send(dataplane.Cancel(prediction_ids))

    async def poll(self, router_id: str, max_wait_s: float) -> list[TaskEvent]:
        """Events received since the last poll, waiting up to ``max_wait_s`` for the first."""
        self._check_router(router_id)
        if not self._buffer:
            if self._lost is not None:
                raise self._lost
            if self._call is None:
                self._start_opening()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max_wait_s)
            except TimeoutError:
                pass
        if self._buffer:
            events, self._buffer = self._buffer, []
            return events
        if self._lost is not None:
            raise self._lost
        return []

    def footprint(self) -> dict[str, int]:
        """What the channel holds: frames kept for a resend, events not yet polled."""
        return {"unapplied_frames": len(self._sent), "buffered_events": len(self._buffer)}

    async def close(self) -> None:
        self._closed = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        for task in (self._opener, self._reader, self._acking):
            if task is not None:
                task.cancel()
        if self._channel:
            await self._channel.close()


def _being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not merely a write on a canceled call)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _welcome(call: Any) -> dataplane.Welcome:
    """The agent's first frame, which must be a Welcome."""
    try:
        data = await call.read()
    except grpc.aio.AioRpcError as err:
        if err.code() in _REFUSALS:
            raise _Refused(f"the agent refused the session: {err.code().name} {err.details()}") from err
        raise
    if data is grpc.aio.EOF:
        raise EOFError("the agent closed the stream before its Welcome")
    try:
        frame = dataplane.decode(data)
    except dataplane.UnknownFrame as err:
        raise _Refused(f"it sent a frame the router refuses: {err}") from err
    if not isinstance(frame, dataplane.Welcome):
        raise _Refused(f"it sent a frame the router refuses: a session starts with Welcome, not "
                       f"{type(frame).__name__}")
    return frame
