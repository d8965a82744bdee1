"""The router's end of the data plane (see ``warmfleet.dataplane``): one stream to one agent, with the
``submit``/``cancel``/``poll`` shape of ``NodeClient`` so the router does not know which transport it uses."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from scheduler.ports import NodeLost
from warmfleet import dataplane
from warmfleet.domain import Task, TaskEvent


class DataChannel:
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
            call = self._channel.stream_stream(
                dataplane.METHOD, request_serializer=dataplane.encode, response_deserializer=dataplane.decode,
            )(metadata=((dataplane.SECRET_HEADER, self._secret),))
            try:
                await call.write(("hello", self._router_id))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
                self._error = NodeLost(f"{self.node_id}: cannot open its data stream: {err}")
                raise self._error from err
            self._call = call
            self._reader = asyncio.create_task(self._read(), name=f"data-{self.node_id}")

    async def _read(self) -> None:
        try:
            async for events in self._call:
                self._buffer.extend(events)
                self._wake.set()
            self._error = NodeLost(f"{self.node_id}: the agent closed its stream")
        except grpc.aio.AioRpcError as err:
            self._error = NodeLost(f"{self.node_id}: {err.code().name} {err.details()}")
        self._wake.set()

    async def _write(self, frame: tuple) -> None:
        await self._open()
        if self._error is not None:
            raise self._error
        try:
            async with self._write_lock:
                await self._call.write(frame)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
            raise NodeLost(f"{self.node_id}: {err}") from err

    async def submit(self, tasks: list[Task]) -> None:
        await self._write(("submit", tasks))

    async def cancel(self, prediction_ids: list[str]) -> None:
        await self._write(("cancel", prediction_ids))

    async def poll(self, max_wait_s: float) -> list[TaskEvent]:
        """Events received since the last poll, waiting up to ``max_wait_s`` for the first."""
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
