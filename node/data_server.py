"""The agent's end of the data plane (see ``warmfleet.dataplane``): a grpc.aio server on the agent's own
event loop, one session per router, feeding ``NodeAgent.submit``/``cancel`` and streaming its events."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, AsyncIterator

import grpc

from node.agent import NodeAgent
from warmfleet import dataplane

log = logging.getLogger(__name__)

SESSION_POLL_S = 1.0  # how often an idle session checks that its router is still there


class DataServer:
    def __init__(self, agent: NodeAgent, secret: str, host: str) -> None:
        self._agent = agent
        self._secret = secret
        self._host = host
        self._server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        """Bind (a free port on the node's address) and serve; returns ``host:port``."""
        if self._server is None:
            handler = grpc.method_handlers_generic_handler("warmfleet.internal.NodeData", {
                "Session": grpc.stream_stream_rpc_method_handler(
                    self._session, request_deserializer=dataplane.decode, response_serializer=dataplane.encode),
            })
            self._server = grpc.aio.server(options=dataplane.CHANNEL_OPTIONS)
            self._server.add_generic_rpc_handlers((handler,))
            port = self._server.add_insecure_port(f"{self._host}:0")
            await self._server.start()
            self.address = f"{self._host}:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(1.0)

    async def _session(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext):
        offered = dict(context.invocation_metadata() or ()).get(dataplane.SECRET_HEADER, "")
        if not hmac.compare_digest(offered.encode(), self._secret.encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "not a member of this cluster")
        kind, router_id = await anext(requests)
        if kind != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with hello")
        reader = asyncio.create_task(self._read(requests, router_id))
        try:
            while not reader.done():
                events = await self._agent.poll(router_id, SESSION_POLL_S)
                if events:
                    yield events
        finally:
            reader.cancel()

    async def _read(self, requests: AsyncIterator[Any], router_id: str) -> None:
        async for kind, payload in requests:
            if kind == "submit":
                await self._agent.submit(router_id, payload)
            elif kind == "cancel":
                await self._agent.cancel(payload)
            else:
                log.warning("router %s sent an unknown frame %r", router_id, kind)
