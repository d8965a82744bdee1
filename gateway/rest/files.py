"""REST routes: Replicate's Files API, and the lifetime of the file store and the retention sweep.

``POST /v1/files`` (multipart/form-data: ``content``, optional ``filename``, ``type``, ``metadata``; or
the file as the raw body, its type in Content-Type), ``GET /v1/files``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/download``, ``DELETE /v1/files/{id}``. A file is its owner's (an admin may read and
delete any); its ``urls.get`` can be given as a file input to the owner's predictions.

A file's ``urls.get`` and ``urls.download`` are signed links (``gateway.signing``): a client reads the
file's metadata and bytes with them, without the token, until they expire. ``DELETE`` takes the token.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.multipart import parse_content_disposition

from gateway.auth import current_principal
from gateway.files import FileStore, StoredFile
from gateway.rest.context import REST, base_url, links, problem
from gateway.signing import Sign, unsigned
from warmfleet.errors import InvalidInput

PAGE_SIZE = 100
FIELD_MAX_BYTES = 64 * 1024  # the form's text fields (filename, type, metadata)
READ_BYTES = 256 * 1024
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"
                         r"(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=(\"[ -~]*\"|[A-Za-z0-9!#$&^_.+-]+))*$")


def register(app: web.Application) -> None:
    """Add the Files API (its store is the gateway's, opened and swept by it)."""
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{id}", get_file)
    app.router.add_get("/v1/files/{id}/download", download_file)
    app.router.add_delete("/v1/files/{id}", delete_file)


def _files(request: web.Request) -> FileStore:
    return request.app[REST].files


def file_json(stored: StoredFile, base: str, sign: Sign = unsigned) -> dict[str, Any]:
    """A file in the shape of Replicate's Files API, with ``urls.download`` beside ``urls.get`` (both
    written by ``sign`` for the file's owner), for a client that has no token to read the bytes with."""
    get = f"/v1/files/{stored.id}"
    return {
        "id": stored.id, "name": stored.name, "content_type": stored.content_type, "size": stored.size,
        "etag": stored.md5, "checksums": {"sha256": stored.sha256, "md5": stored.md5},
        "metadata": stored.metadata, "created_at": _iso(stored.created_at),
        "expires_at": _iso(stored.expires_at) if stored.expires_at is not None else None,
        "urls": {"get": base + sign(get, stored.owner),
                 "download": base + sign(f"{get}/download", stored.owner)},
    }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Create


class _TooLarge(Exception):
    pass


async def create_file(request: web.Request) -> web.StreamResponse:
    settings = request.app[REST].settings
    try:
        if request.content_type.startswith("multipart/"):
            try:
                data, name, content_type, metadata = await _from_form(request, settings.files_max_bytes)
            except BadHttpMessage as err:  # a part's headers aiohttp cannot parse: the client's error
                raise InvalidInput("content", f"the multipart/form-data body cannot be read: {err.message}"
                                   ) from None
        elif request.content_type == "application/x-www-form-urlencoded":  # a form, but not one with a file
            raise InvalidInput("content", "is required: send multipart/form-data with the file as content")
        else:
            data, name, content_type, metadata = await _from_body(request, settings.files_max_bytes)
    except _TooLarge:
        return problem(413, "Payload Too Large", f"the file is larger than {settings.files_max_bytes} bytes, "
                                                 f"the most an upload may be (files_max_bytes)")
    if content_type and not _MEDIA_TYPE.match(content_type):  # it is served back as the Content-Type
        raise InvalidInput("type", f"{content_type!r} is not a media type such as image/png")
    stored = await _files(request).upload(current_principal.get(), data, name, content_type, metadata)
    return web.json_response(file_json(stored, base_url(request), links(request)), status=201)


async def _from_form(request: web.Request, max_bytes: int) -> tuple[bytes, str, str, dict[str, Any]]:
    """Replicate's form: the file in ``content``; ``filename``, ``type`` and ``metadata`` beside it."""
    data: bytes | None = None
    name = content_type = ""
    metadata: dict[str, Any] = {}
    try:
        form = await request.multipart()
    except ValueError as err:  # aiohttp's word for a multipart Content-Type without its boundary
        raise InvalidInput("Content-Type", f"is not a multipart form this server can read: {err}") from None
    async for part in form:
        if not isinstance(part, BodyPartReader):
            continue  # a nested multipart is not part of the form
        if part.name == "content":
            data = await _read(_part_chunks(part), max_bytes)
            name = name or part.filename or ""
            content_type = content_type or part.headers.get(hdrs.CONTENT_TYPE, "")
        elif part.name in ("filename", "type", "metadata"):
            text = (await _read(_part_chunks(part), FIELD_MAX_BYTES, part.name)).decode("utf-8", "replace")
            if part.name == "filename":
                name = text
            elif part.name == "type":
                content_type = text
            else:
                metadata = _metadata(text)
    if data is None:
        raise InvalidInput("content", "is required: the file, as the multipart/form-data part named content")
    return data, name, content_type, metadata


async def _from_body(request: web.Request, max_bytes: int) -> tuple[bytes, str, str, dict[str, Any]]:
    """The file as the body; its name from ``?filename=`` or Content-Disposition."""
    _, params = parse_content_disposition(request.headers.get(hdrs.CONTENT_DISPOSITION))
    name = request.query.get("filename") or params.get("filename", "")
    content_type = request.headers.get(hdrs.CONTENT_TYPE, "")
    return await _read(request.content.iter_chunked(READ_BYTES), max_bytes), name, content_type, {}


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(READ_BYTES):
        yield chunk


async def _read(chunks: AsyncIterator[bytes], max_bytes: int, field: str = "") -> bytes:
    """The bytes, read until they pass ``max_bytes``: then ``_TooLarge`` for the file, or
    ``InvalidInput`` for a text field."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            if field:
                raise InvalidInput(field, f"is longer than {max_bytes} bytes")
            raise _TooLarge()
    return bytes(body)


def _metadata(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text) if text.strip() else {}
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidInput("metadata", "must be a JSON object")
    return value


# Read and delete


async def list_files(request: web.Request) -> web.Response:
    """The caller's files, newest first, in cursor pages (``{next, previous, results}``)."""
    mine = _files(request).list(current_principal.get().account)
    start = _decode_cursor(request.query.get("cursor", ""))
    page = mine[start:start + PAGE_SIZE]
    base, sign = base_url(request), links(request)
    following = start + PAGE_SIZE
    return web.json_response({
        "next": f"{base}/v1/files?cursor={_encode_cursor(following)}" if following < len(mine) else None,
        "previous": None if start == 0 else
        f"{base}/v1/files?cursor={_encode_cursor(max(0, start - PAGE_SIZE))}",
        "results": [file_json(f, base, sign) for f in page],
    })


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"files:{offset}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    try:
        kind, offset = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
        if kind == "files" and int(offset) >= 0:
            return int(offset)
    except ValueError:
        pass
    raise InvalidInput("cursor", "is not a cursor this server returned")


async def get_file(request: web.Request) -> web.Response:
    stored = _files(request).get(current_principal.get(), request.match_info["id"])
    return web.json_response(file_json(stored, base_url(request), links(request)))


async def download_file(request: web.Request) -> web.StreamResponse:
    files = _files(request)
    stored = files.get(current_principal.get(), request.match_info["id"])
    disposition = f'attachment; filename="{_quoted(stored.name or stored.id)}"'
    return web.FileResponse(files.path_of(stored), headers={
        hdrs.CONTENT_TYPE: stored.content_type, hdrs.CONTENT_DISPOSITION: disposition})


def _quoted(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)


async def delete_file(request: web.Request) -> web.Response:
    await _files(request).delete(current_principal.get(), request.match_info["id"])
    return web.Response(status=204)
