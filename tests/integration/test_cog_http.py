"""The small HTTP/1.1 client the Cog runner talks to coglet with, against real servers on 127.0.0.1:
kept-alive connections, Content-Length and chunked bodies, a server that closes, one that is gone."""

from __future__ import annotations

import asyncio
import json

import pytest

from runners.cog.http import CogletClient, CogletUnreachable

pytestmark = pytest.mark.integration


class Server:
    """Answers each request from a script of raw responses; counts connections and requests."""

    def __init__(self, *responses: bytes) -> None:
        self.responses = list(responses)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while self.responses:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
            self.requests.append(head + await reader.readexactly(length))
            response = self.responses.pop(0)
            writer.write(response)
            await writer.drain()
            if b"Connection: close" in response:
                break
        writer.close()

    def stop(self) -> None:
        self.server.close()


def ok(doc, extra: str = "") -> bytes:
    body = json.dumps(doc).encode()
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


def chunked(doc) -> bytes:
    body = json.dumps(doc).encode()
    parts = [body[:5], body[5:]]
    chunks = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts)
    return b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


async def test_requests_share_one_kept_alive_connection_and_read_both_body_forms():
    server = Server(ok({"status": "succeeded", "output": 1}), chunked({"error": "At capacity"}), ok({"n": 3}))
    client = CogletClient("127.0.0.1", await server.start())
    assert await client.post("/predictions", {"id": "a", "input": {"x": 1}}) == (200, {"status": "succeeded", "output": 1})
    assert await client.post("/predictions", {"id": "b"}) == (409, {"error": "At capacity"})
    assert await client.get("/health-check", timeout_s=5) == (200, {"n": 3})
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /predictions HTTP/1.1\r\n") and first.endswith(b'{"id": "a", "input": {"x": 1}}')
    assert server.requests[2].startswith(b"GET /health-check HTTP/1.1")
    server.stop()


async def test_a_connection_the_server_closed_is_replaced_without_failing_the_request():
    server = Server(ok({"n": 1}, "Connection: close\r\n"), ok({"n": 2}))
    client = CogletClient("127.0.0.1", await server.start())
    assert (await client.post("/x"))[1] == {"n": 1}
    assert (await client.post("/x"))[1] == {"n": 2}  # the first connection was closed: a new one
    assert server.connections == 2
    server.stop()


async def test_a_server_that_is_gone_is_unreachable_not_a_hang():
    server = Server()
    port = await server.start()
    server.stop()
    await server.server.wait_closed()
    with pytest.raises(CogletUnreachable):
        await CogletClient("127.0.0.1", port).post("/predictions", {"id": "a"})


async def test_a_server_that_does_not_answer_times_out_the_health_check():
    async def silent(reader, writer):
        await reader.read()  # never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    client = CogletClient("127.0.0.1", server.sockets[0].getsockname()[1])
    with pytest.raises(TimeoutError):
        await client.get("/health-check", timeout_s=0.2)
    server.close()
