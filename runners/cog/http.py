"""A small HTTP/1.1 client for the one coglet server an instance talks to, on loopback.

Every prediction is one JSON request to coglet. aiohttp's client spends about 0.35 ms of the agent's loop
a request on this machine (its session, timers and tracing hooks) where the exchange itself is a write
and two reads; this client keeps connections alive in a small pool and does just that. It speaks only
what coglet answers: a status line, headers, then a body of ``Content-Length`` bytes or chunks.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

MAX_IDLE = 64  # kept-alive connections per server; coglet runs at most concurrency.max at once anyway
MAX_BODY_BYTES = 1 << 30  # a data-URL output can be large; nothing from coglet is larger than this


class CogletUnreachable(Exception):
    """The server did not answer: it refused the connection, or closed it mid-exchange."""


class _Stale(Exception):
    """A kept-alive connection the server had closed before this request reached it."""


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class CogletClient:
    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._idle: list[_Connection] = []

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        """``POST path`` with ``body`` as JSON; the status and the JSON answer ({} for none)."""
        payload = json.dumps(body).encode() if body is not None else b""
        return await self._request("POST", path, payload)

    async def get(self, path: str, timeout_s: float) -> tuple[int, Any]:
        return await asyncio.wait_for(self._request("GET", path, b""), timeout_s)

    async def _request(self, method: str, path: str, payload: bytes) -> tuple[int, Any]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
        while self._idle:  # a kept-alive connection, unless the server closed it meanwhile
            try:
                return await self._exchange(self._idle.pop(), head + payload)
            except _Stale:
                continue
        try:
            conn = await asyncio.open_connection(self._host, self._port)
        except OSError as err:
            raise CogletUnreachable(f"cannot connect to coglet on port {self._port}: {err}") from err
        try:
            return await self._exchange(conn, head + payload)
        except _Stale as err:
            raise CogletUnreachable("coglet closed the connection without answering") from err

    async def _exchange(self, conn: _Connection, request: bytes) -> tuple[int, Any]:
        reader, writer = conn
        try:
            try:
                writer.write(request)
                status_line = await reader.readline()
            except OSError as err:  # before any answer: the request did not reach coglet
                raise _Stale() from err
            if not status_line:
                raise _Stale()
            status, headers = int(status_line.split()[1]), await _headers(reader)
            body, keep = await _body(reader, headers)
        except (_Stale, asyncio.CancelledError):
            writer.close()
            raise
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as err:
            writer.close()
            raise CogletUnreachable(f"coglet broke off the exchange: {err!r}") from err
        if keep and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            writer.close()
        return status, json.loads(body) if body else {}


async def _headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> tuple[bytes, bool]:
    """The body, and whether the connection may serve another request."""
    keep = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY_BYTES:
            raise ValueError(f"an answer of {length} bytes")
        return await reader.readexactly(length), keep
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)  # the CRLF after each chunk
        while await reader.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks), keep
    return await reader.read(MAX_BODY_BYTES), False  # delimited by the close
