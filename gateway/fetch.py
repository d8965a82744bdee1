"""Files named by URL in a prediction's input: ``data:`` URLs decoded, ``http(s)://`` URLs fetched safely.

A URL input makes the gateway a client of whatever the URL names, so the fetch is bounded and fenced:
- at most ``max_bytes`` are read (the body is streamed and the read stops once past the bound, whatever
  Content-Length said), within ``timeout_s`` for the whole fetch, redirects included;
- at most ``MAX_REDIRECTS`` redirects are followed, and every hop is checked again as the first was;
- the host is resolved here, every address it resolves to must be public (not loopback, private,
  link-local, unspecified, multicast or reserved: ``address_refusal``), and the connection goes to those
  very addresses (``_PinnedResolver``): a DNS answer that changes between the check and the connect
  (DNS rebinding) cannot send the request inside the network.
``allow_private`` lifts the address fence (for a cluster whose files live on a private network), not
the bounds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import mimetypes
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from warmfleet.domain import FileData
from warmfleet.errors import InvalidInput

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MEDIA_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# Host name -> [(address family, address)]; the default asks the system resolver, in a thread.
Resolve = Callable[[str, int], Awaitable[list[tuple[int, str]]]]


# data: URLs (RFC 2397)


def is_data_url(value: str) -> bool:
    return value[:5].lower() == "data:"


def parse_data_url(url: str, max_bytes: int) -> FileData:
    """The file a ``data:[<mediatype>][;name=...][;base64],<data>`` URL holds. ValueError says what is
    wrong with it (the caller names the field). A ``name`` (or ``filename``) parameter names the file."""
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise ValueError("is a data URL without the ',' before its data (data:[<mediatype>][;base64],<data>)")
    params = [p.strip() for p in header.split(";")]
    is_base64 = len(params) > 1 and params[-1].lower() == "base64"
    if is_base64:
        params.pop()
    media_type = params[0].lower() if params[0] and "=" not in params[0] else "text/plain"
    if not _MEDIA_TYPE.match(media_type):
        raise ValueError(f"is a data URL whose media type {media_type!r} is not type/subtype")
    named = dict(p.split("=", 1) for p in params[1:] if "=" in p)
    name = unquote(named.get("name") or named.get("filename") or "")
    data = _base64_payload(payload, max_bytes) if is_base64 else unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise ValueError(_too_large(max_bytes))
    return FileData(data, media_type, name)


def _base64_payload(payload: str, max_bytes: int) -> bytes:
    text = re.sub(r"\s+", "", unquote(payload) if "%" in payload else payload)
    if len(text) // 4 * 3 > max_bytes + 3:  # refused before it is decoded
        raise ValueError(_too_large(max_bytes))
    altchars = b"-_" if "-" in text or "_" in text else None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except binascii.Error as err:
        raise ValueError(f"is a data URL whose base64 data does not decode: {err}") from None


def _too_large(max_bytes: int) -> str:
    return f"is larger than {max_bytes} bytes, the most a file input may be (max_input_file_bytes)"


# Which addresses a URL may reach


def address_refusal(address: str) -> str | None:
    """Why a URL may not reach ``address`` ("a loopback address", ...), or None for a public address.
    An IPv6 address that carries an IPv4 one (mapped, 6to4, Teredo, NAT64) is judged by that too."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is not the address
    for inner in _embedded_ipv4(ip):
        refusal = address_refusal(str(inner))
        if refusal:
            return refusal
    for test, what in _CLASSES:
        if test(ip):
            return what
    return None if ip.is_global else "not a public address"


_CLASSES: list[tuple[Callable[[Any], bool], str]] = [
    (lambda ip: ip.is_unspecified, "an unspecified address"),
    (lambda ip: ip.is_loopback, "a loopback address"),
    (lambda ip: ip.is_link_local, "a link-local address"),
    (lambda ip: ip.is_multicast, "a multicast address"),
    (lambda ip: ip.is_private, "a private address"),
    (lambda ip: ip.is_reserved, "a reserved address"),
]


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    if ip.version == 4:
        return []
    inner = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
    if ip in _NAT64:
        inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [a for a in inner if a is not None]


async def system_resolve(host: str, port: int) -> list[tuple[int, str]]:
    """Every address the system resolver gives for ``host`` (getaddrinfo runs in the loop's executor)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({(family, sockaddr[0]) for family, _, _, _, sockaddr in infos})


class _PinnedResolver(AbstractResolver):
    """Answers for the one host it was made for with the addresses already checked; nothing else."""

    def __init__(self, host: str, addresses: list[tuple[int, str]]) -> None:
        self._host = host
        self._addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        if host != self._host:
            raise OSError(f"{host} was not checked before connecting")
        return [ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0,
                              flags=socket.AI_NUMERICHOST) for fam, address in self._addresses]

    async def close(self) -> None:
        pass


class PublicResolver(AbstractResolver):
    """A resolver for outbound calls the gateway makes on a user's behalf (webhooks): it answers with
    the public addresses of a host only, and refuses a host that has none, so that a URL cannot aim the
    gateway at the machine itself or its private network. aiohttp connects to what it answers, so a
    name cannot resolve differently between the check and the connection."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        found = await system_resolve(host, port)
        public = [(fam, address) for fam, address in found if address_refusal(address) is None]
        if not public:
            why = address_refusal(found[0][1]) if found else "no address"
            raise OSError(f"{host} resolves to {why}; refused (the operator may allow it: allow_private_urls)")
        return [ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0,
                              flags=socket.AI_NUMERICHOST) for fam, address in public]

    async def close(self) -> None:
        pass


def literal_refusal(url: str) -> str | None:
    """Why ``url``'s host, when it is an IP address literal, is not one to call (aiohttp connects to a
    literal without asking any resolver); None for a public literal or a name."""
    host = URL(url).host or ""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None  # a name: PublicResolver judges what it resolves to
    return address_refusal(host.strip("[]"))


# Fetching


@dataclass
class _Hop:
    """One response: its status, headers and a body read in chunks."""

    status: int
    reason: str
    headers: Any  # a multidict: Location, Content-Type
    content_length: int | None
    chunks: AsyncIterator[bytes]


class UrlFetcher:
    """Fetches one http(s) URL into a ``FileData`` within the bounds; ``InvalidInput`` naming the field
    for every refusal. ``resolve`` is the DNS lookup (tests give their own)."""

    def __init__(self, max_bytes: int, timeout_s: float, allow_private: bool = False,
                 resolve: Resolve = system_resolve) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self._resolve = resolve

    async def fetch(self, url: str, field: str) -> FileData:
        try:
            target = URL(url)
        except ValueError:
            raise InvalidInput(field, "is not a URL that can be read") from None
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(target, field)
        except TimeoutError:
            raise InvalidInput(field, f"fetching {_shown(target)} took more than {self.timeout_s:g} s "
                                      f"(url_fetch_timeout_s)") from None
        except aiohttp.ClientError as err:
            raise InvalidInput(field, f"could not fetch {_shown(target)}: {err}") from None

    async def _follow(self, url: URL, field: str) -> FileData:
        for _ in range(MAX_REDIRECTS + 1):
            addresses = await self._checked(url, field)
            async with self._open(url, addresses) as hop:
                location = hop.headers.get("Location") if hop.status in _REDIRECTS else None
                if location:
                    url = _redirected(url, location, field)
                    continue
                if not 200 <= hop.status < 300:
                    raise InvalidInput(field, f"fetching {_shown(url)}: the server answered {hop.status} "
                                              f"{hop.reason}")
                data = await read_limited(hop.chunks, self.max_bytes, hop.content_length, field)
                return FileData(data, *_type_and_name(url, hop.headers.get("Content-Type", "")))
        raise InvalidInput(field, f"fetching {_shown(url)}: more than {MAX_REDIRECTS} redirects")

    async def _checked(self, url: URL, field: str) -> list[tuple[int, str]]:
        """The addresses ``url``'s host resolves to, each allowed, or ``InvalidInput``."""
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidInput(field, f"{_shown(url)} is not an http(s) URL with a host")
        host = url.raw_host or url.host
        try:
            ip = ipaddress.ip_address(host)
            addresses = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))]
        except ValueError:
            try:
                addresses = await self._resolve(host, url.port or 0)
            except OSError as err:
                raise InvalidInput(field, f"fetching {_shown(url)}: cannot resolve {host}: {err}") from None
        if not addresses:
            raise InvalidInput(field, f"fetching {_shown(url)}: {host} has no address")
        if not self.allow_private:
            for _, address in addresses:
                refusal = address_refusal(address)
                if refusal:
                    raise InvalidInput(field, f"URL {_shown(url)}: {address} is {refusal}; refused "
                                              f"(the operator may allow it: allow_private_urls)")
        return addresses

    @asynccontextmanager
    async def _open(self, url: URL, addresses: list[tuple[int, str]]) -> AsyncIterator[_Hop]:
        """GET ``url`` over a connection to one of ``addresses`` (pinned: no other lookup happens)."""
        connector = aiohttp.TCPConnector(resolver=_PinnedResolver(url.raw_host or "", addresses),
                                         use_dns_cache=False, limit=1)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session, \
                session.get(url, allow_redirects=False) as reply:
            yield _Hop(reply.status, reply.reason or "", reply.headers, reply.content_length,
                       reply.content.iter_chunked(CHUNK_BYTES))


async def read_limited(chunks: AsyncIterator[bytes], max_bytes: int, declared: int | None, field: str) -> bytes:
    """The body, or ``InvalidInput`` as soon as it is known to pass ``max_bytes``: at once when the
    declared length says so, else when the bytes read pass it (a length can lie, or be absent)."""
    if declared is not None and declared > max_bytes:
        raise InvalidInput(field, _too_large(max_bytes))
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise InvalidInput(field, _too_large(max_bytes))
    return bytes(body)


def _redirected(url: URL, location: str, field: str) -> URL:
    try:
        return url.join(URL(location))
    except ValueError:
        raise InvalidInput(field, f"fetching {_shown(url)}: its redirect is not to a URL") from None


def _type_and_name(url: URL, content_type: str) -> tuple[str, str]:
    name = url.name
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not media_type or media_type == "application/octet-stream":
        media_type = mimetypes.guess_type(name)[0] or media_type or "application/octet-stream"
    return media_type, name


def _shown(url: URL) -> str:
    """The URL as errors show it: no query or fragment (they may hold a signature or a token)."""
    try:
        return str(url.with_query(None).with_fragment(None).with_user(None))
    except ValueError:  # a relative URL has no user to drop
        return str(url.with_query(None).with_fragment(None))
