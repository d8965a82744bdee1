"""The agent's end of the data plane (see ``warmfleet.dataplane``): a grpc.aio server on the agent's own
event loop, one session per router: its ``Submit`` and ``Cancel`` frames feed ``NodeAgent.submit`` and
``cancel``, and the router's events (its ``node.outbox``) go back to it as numbered ``Events`` frames,
kept until its ``Ack``. A router whose stream broke reconnects and resumes: it is told how many of its
frames were applied (``Welcome``) and gets again the ``Events`` it may have missed.

With a certificate pair the server speaks TLS only; the cluster secret still admits each session, as in
plaintext (TLS keeps it, and the frames, from the network's eyes; the secret says who may speak)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import AsyncIterator, NoReturn

import grpc

from node.agent import NodeAgent
from node.outbox import Outbox, ResumeRefused, Superseded
from warmfleet import dataplane
from warmfleet.tls import CertificatePair

log = logging.getLogger(__name__)

SESSION_POLL_S = 1.0  # how often an idle session checks that its router is still there


class DataServer:
    """One agent's data plane server, on ``host`` (the node's address): plaintext, or TLS with ``tls``."""

    def __init__(self, agent: NodeAgent, secret: str, host: str, tls: CertificatePair | None = None) -> None:
        self._agent = agent
        self._secret = secret
        self._host = host
        self._tls = tls
        self._server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        """Bind (a free port on the node's address) and serve; returns ``host:port``."""
        if self._server is None:
            # Requests come in as bytes and are decoded in the session, so that a frame it cannot read
            # ends the session with a status naming it, not with a deserializer's INTERNAL.
            handler = grpc.method_handlers_generic_handler(dataplane.SERVICE, {
                dataplane.SESSION: grpc.stream_stream_rpc_method_handler(
                    self._session, response_serializer=dataplane.encode),
            })
            self._server = grpc.aio.server(options=dataplane.SERVER_OPTIONS)
            self._server.add_generic_rpc_handlers((handler,))
            port = self._add_port(f"{self._host}:0")
            await self._server.start()
            self.address = f"{self._host}:{port}"
        return self.address

    def _add_port(self, address: str) -> int:
        if self._tls is None:
            return self._server.add_insecure_port(address)
        pair = self._tls
        return self._server.add_secure_port(
            address, grpc.ssl_server_credentials([(pair.private_key_pem, pair.certificate_pem)]))

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(1.0)

    async def _session(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[dataplane.ToRouter]:
        """One router's session: a ``Hello``, answered with a ``Welcome`` and the ``Events`` it may have
        missed; then its ``Submit`` and ``Cancel`` frames go to the agent while the agent's events for it
        stream back as ``Events``, until the router hangs up or a newer session of it takes over."""
        offered = dict(context.invocation_metadata() or ()).get(dataplane.SECRET_HEADER, "")
        if not hmac.compare_digest(offered.encode(), self._secret.encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "not a member of this cluster")
        hello = await _hello(requests, context)
        if hello is None:
            return  # the router hung up before it said hello
        try:
            box, generation, replay = self._agent.open_session(hello.router_id, hello.resume, hello.after_seq)
        except ResumeRefused as err:
            log.warning("router %s cannot resume its session: %s", hello.router_id, err)
            await context.abort(grpc.StatusCode.DATA_LOSS, str(err))
        reader = asyncio.create_task(self._read(requests, hello.router_id, box, generation))
        try:
            yield dataplane.Welcome(box.applied, self._agent.held(hello.router_id))
            for seq, events in replay:
                yield dataplane.Events(events, seq, box.applied)
            while not reader.done():
                batch = await box.take_batch(generation, SESSION_POLL_S)
                if batch is not None:
                    yield dataplane.Events(batch[1], batch[0], box.applied)
        except Superseded:
            return  # the router reconnected: its newer session goes on
        finally:
            reader.cancel()
            self._agent.close_session(box, generation)
        error = None if reader.cancelled() else reader.exception()
        if isinstance(error, dataplane.UnknownFrame):
            await _refuse(context, hello.router_id, error)
        elif error is not None:
            log.error("the session of router %s failed", hello.router_id, exc_info=error)
            await context.abort(grpc.StatusCode.INTERNAL, f"the agent's session failed: {error!r}")

    async def _read(self, requests: AsyncIterator[bytes], router_id: str, box: Outbox,
                    generation: int) -> None:
        """Apply the router's frames, counting those it numbers, until a newer session takes over."""
        async for data in requests:
            frame = dataplane.decode(data)
            if box.generation != generation:
                return  # superseded: the newer session applies what the router sends again
            match frame:
                case dataplane.Submit(tasks):
                    await self._agent.submit(router_id, tasks)
                    box.applied += 1
                case dataplane.Cancel(prediction_ids):
                    await self._agent.cancel(prediction_ids)
                    box.applied += 1
                case dataplane.Ack(seq):
                    box.ack(seq)
                case frame:
                    raise dataplane.UnknownFrame(f"{type(frame).__name__} is not for an agent mid-session")


async def _hello(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> dataplane.Hello | None:
    """The session's first frame, which must be a ``Hello`` (else the session is refused); None if the
    router hung up first."""
    first = await anext(requests, None)
    if first is None:
        return None
    try:
        hello = dataplane.decode(first)
    except dataplane.UnknownFrame as err:
        await _refuse(context, "?", err)
    if not isinstance(hello, dataplane.Hello):
        await _refuse(context, "?", dataplane.UnknownFrame(
            f"a session starts with Hello, not {type(hello).__name__}"))
    return hello


async def _refuse(context: grpc.aio.ServicerContext, router_id: str,
                  err: dataplane.UnknownFrame) -> NoReturn:
    """End a session whose router sent what the agent cannot take (this raises, as ``abort`` does)."""
    log.error("router %s sent a frame the agent refuses: %s", router_id, err)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
