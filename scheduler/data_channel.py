"""The router's end of the data plane (see ``warmfleet.dataplane``): one stream to one agent for one router,
a ``NodeData`` so the router does not know which transport it uses."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from scheduler.ports import NodeLost
from warmfleet import dataplane
from warmfleet.domain import Task, TaskEvent

log = logging.getLogger(__name__)


class DataChannel:
    """A ``NodeData`` over a session with one agent's ``node.data_server``, opened on first use, for the
    router ``router_id`` only: the agent streams back the events of that router's tasks."""

    def __init__(self, node_id: str, address: str, secret: str, router_id: str) -> None:
        self.node_id = node_id
        self._address = address
        self._secret = secret
        self._router_id = router_id
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._reader: asyncio.Task | None = None
        self._buffer: list[TaskEvent] = []
        self._wake = asyncio.Event()
        self._error: NodeLost | None = None
        self._write_lock = asyncio.Lock()
        self._opening: asyncio.Lock = asyncio.Lock()

    async def _open(self) -> None:
        async with self._opening:
            if self._call is not None:
                return
            self._channel = grpc.aio.insecure_channel(self._address, options=dataplane.CHANNEL_OPTIONS)
            # Responses come in as bytes and are decoded in ``_read``, which names a frame it cannot read.
            call = self._channel.stream_stream(dataplane.METHOD, request_serializer=dataplane.encode)(
                metadata=((dataplane.SECRET_HEADER, self._secret),))
            try:
                await call.write(dataplane.Hello(self._router_id))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
                self._error = NodeLost(f"{self.node_id}: cannot open its data stream: {err}")
                raise self._error from err
            self._call = call
            self._reader = asyncio.create_task(self._read(), name=f"data-{self.node_id}")

    async def _read(self) -> None:
        try:
            async for data in self._call:
                match dataplane.decode(data):
                    case dataplane.Events(events):
                        self._buffer.extend(events)
                        self._wake.set()
                    case frame:
                        raise dataplane.UnknownFrame(f"{type(frame).__name__} is not a frame for a router")
            self._error = NodeLost(f"{self.node_id}: the agent closed its stream")
        except grpc.aio.AioRpcError as err:
            self._error = NodeLost(f"{self.node_id}: {err.code().name} {err.details()}")
        except dataplane.UnknownFrame as err:  # the agent speaks another protocol: give up on it
            log.error("node %s sent a frame the router refuses: %s", self.node_id, err)
            self._error = NodeLost(f"{self.node_id}: it sent a frame the router refuses: {err}")
            self._call.cancel()
        self._wake.set()

    async def _write(self, frame: dataplane.ToAgent) -> None:
        await self._open()
        if self._error is not None:
            raise self._error
        try:
            async with self._write_lock:
                await self._call.write(frame)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
            raise NodeLost(f"{self.node_id}: {err}") from err

    def _check_router(self, router_id: str) -> None:
        if router_id != self._router_id:
            raise ValueError(f"this data channel to {self.node_id} speaks for router {self._router_id}, "
                             f"not {router_id}")

    async def submit(self, router_id: str, tasks: list[Task]) -> None:
        self._check_router(router_id)
        await self._write(dataplane.Submit(tasks))

    async def cancel(self, prediction_ids: list[str]) -> None:
        await self._write(dataplane.Cancel(prediction_ids))

    async def poll(self, router_id: str, max_wait_s: float) -> list[TaskEvent]:
        """Events received since the last poll, waiting up to ``max_wait_s`` for the first."""
        self._check_router(router_id)
        if self._error is not None and not self._buffer:
            raise self._error
        await self._open()
        if not self._buffer and self._error is None:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max_wait_s)
            except TimeoutError:
                pass
        if self._buffer:
            events, self._buffer = self._buffer, []
            return events
        if self._error is not None:
            raise self._error
        return []

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
        if self._channel:
            await self._channel.close()
