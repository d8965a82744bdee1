"""Files: the Files API's store, file inputs turned into bytes, and the retention sweep.

- ``FileStore``: uploads under ``$WARMFLEET_HOME/files``: the bytes content-addressed
  (``blobs/<sha256>``, shared by identical uploads), and one JSON document of metadata per file
  (``meta/<id>.json``), read into memory when the store opens.
- ``InputResolver``: the REST edge's step before a prediction is created. A file input arrives as a
  string: a ``data:`` URL, an ``http(s)://`` URL (fetched with ``gateway.fetch.UrlFetcher``'s bounds
  and address fence), or the URL of a file uploaded here (``/v1/files/{id}``, its owner's only). Each
  becomes a ``FileData``, the form the schema validator and the runners take.
- ``Retention``: every ``retention_interval_s``, predictions completed more than ``retention_s`` ago
  lose their input files and output (``data_removed``), and expired uploads are deleted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import mimetypes
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from gateway.auth import Principal
from gateway.fetch import UrlFetcher, is_data_url, parse_data_url
from gateway.limits import AccountLimits
from gateway.store import PredictionStore
from warmfleet.domain import FileData
from warmfleet.errors import InvalidInput, NotFound
from warmfleet.settings import Settings

log = logging.getLogger(__name__)

FILE_FORMAT = "uri"  # a schema place whose string takes a file (runners/schema.py's rule)
_FILE_PATH = re.compile(r"^/v1/files/([A-Za-z0-9_-]{1,64})(?:/download)?/?$")


def new_file_id() -> str:
    return base64.b32encode(secrets.token_bytes(15)).decode().lower()


@dataclass(frozen=True)
class StoredFile:
    """An uploaded file's metadata (its bytes are ``FileStore.path_of``)."""

    id: str
    owner: str
    name: str
    content_type: str
    size: int
    sha256: str
    md5: str
    created_at: float
    expires_at: float | None = None  # None: kept until deleted
    metadata: dict[str, Any] = field(default_factory=dict)  # the uploader's own JSON object


class FileStore:
    """Uploaded files by id. The index is in memory; every disk operation runs, in order, on one thread,
    so a delete that frees a blob and a create that writes the same blob cannot interleave."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time, ttl_s: float = 0.0,
                 limits: AccountLimits | None = None) -> None:
        self.root = root
        self._clock = clock
        self._ttl_s = ttl_s  # how long an upload is kept when its create names no time (0: until deleted)
        self._limits = limits or AccountLimits(0, 0, sys.maxsize, sys.maxsize)
        self._files: dict[str, StoredFile] = {}
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="wf-files")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    async def open(self) -> None:
        self._files = await self._run(self._load)

    def _load(self) -> dict[str, StoredFile]:
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        files = {}
        for path in (self.root / "meta").glob("*.json"):
            try:
                stored = StoredFile(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                log.warning("skipping %s: not a file's metadata", path)
                continue
            files[stored.id] = stored
        return files

    def close(self) -> None:
        self._exec.shutdown(wait=True)

    def path_of(self, stored: StoredFile) -> Path:
        return self.root / "blobs" / stored.sha256

    async def upload(self, caller: Principal, data: bytes, name: str = "", content_type: str = "",
                     metadata: dict[str, Any] | None = None) -> StoredFile:
        """``create`` for a caller of the Files API, within its account's limits (uploads a minute, bytes
        kept)."""
        self._limits.admit_upload(caller, len(data), self.stored_bytes(caller.account))
        return await self.create(caller.account, data, name, content_type, metadata)

    def stored_bytes(self, owner: str) -> int:
        """The bytes of the files ``owner`` keeps (an account id)."""
        return sum(f.size for f in self._files.values() if f.owner == owner and self.lookup(f.id))

    async def create(self, owner: str, data: bytes, name: str = "", content_type: str = "",
                     metadata: dict[str, Any] | None = None, ttl_s: float | None = None) -> StoredFile:
        """Store an upload of ``owner``'s; it expires ``ttl_s`` after now (None: the store's ``ttl_s``; 0:
        kept until deleted). Its type, when not given, is guessed from its name."""
        ttl_s = self._ttl_s if ttl_s is None else ttl_s
        sha256, md5 = await self._run(lambda: (hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()))
        now = self._clock()
        stored = StoredFile(
            id=new_file_id(), owner=owner, name=name, size=len(data), sha256=sha256, md5=md5,
            content_type=content_type or mimetypes.guess_type(name)[0] or "application/octet-stream",
            created_at=now, expires_at=now + ttl_s if ttl_s > 0 else None, metadata=metadata or {})
        self._files[stored.id] = stored  # before the write is queued: a delete now keeps the blob
        await self._run(self._write, stored, data)
        return stored

    def _write(self, stored: StoredFile, data: bytes) -> None:
        blob = self.path_of(stored)
        if not blob.exists():
            _atomic_write(blob, data)
        _atomic_write(self.root / "meta" / f"{stored.id}.json", json.dumps(asdict(stored)).encode())

    def lookup(self, file_id: str) -> StoredFile | None:
        """The file, unless there is none by that id or it has expired (a sweep may not have run yet)."""
        stored = self._files.get(file_id)
        if stored is None or (stored.expires_at is not None and stored.expires_at <= self._clock()):
            return None
        return stored

    def get(self, principal: Principal, file_id: str) -> StoredFile:
        """The file, for its owner or an admin; ``NotFound`` for anyone else."""
        stored = self.lookup(file_id)
        if stored is None or not principal.owns(stored.owner):
            raise NotFound(f"file {file_id!r} not found")
        return stored

    def list(self, owner: str) -> list[StoredFile]:
        """The owner's files, newest first."""
        mine = [f for f in self._files.values() if f.owner == owner and self.lookup(f.id)]
        return sorted(mine, key=lambda f: (f.created_at, f.id), reverse=True)

    async def read(self, stored: StoredFile) -> bytes:
        return await self._run(self.path_of(stored).read_bytes)

    async def delete(self, principal: Principal, file_id: str) -> StoredFile:
        stored = self.get(principal, file_id)
        await self._remove([stored])
        return stored

    async def delete_expired(self) -> int:
        now = self._clock()
        expired = [f for f in self._files.values() if f.expires_at is not None and f.expires_at <= now]
        await self._remove(expired)
        return len(expired)

    async def _remove(self, files: list[StoredFile]) -> None:
        for stored in files:
            self._files.pop(stored.id, None)
        shared = {f.sha256 for f in self._files.values()}
        unused = [self.path_of(f) for f in files if f.sha256 not in shared]
        metas = [self.root / "meta" / f"{f.id}.json" for f in files]
        await self._run(lambda: [p.unlink(missing_ok=True) for p in metas + unused])


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# File inputs


class InputResolver:
    """Turns the file inputs of one prediction's input into ``FileData`` (see ``resolve_input``)."""

    def __init__(self, files: FileStore | None, fetcher: UrlFetcher) -> None:
        self._files = files
        self._fetcher = fetcher

    @classmethod
    def from_settings(cls, settings: Settings, files: FileStore | None) -> InputResolver:
        return cls(files, UrlFetcher(settings.max_input_file_bytes, settings.url_fetch_timeout_s,
                                     settings.allow_private_urls))

    async def resolve(self, principal: Principal, input: dict[str, Any],
                      schema: dict[str, Any] | None) -> dict[str, Any]:
        return {k: await self._walk(principal, v, _property(schema, k), f"input.{k}") for k, v in input.items()}

    async def _walk(self, principal: Principal, value: Any, schema: dict[str, Any] | None, path: str) -> Any:
        if isinstance(value, str):
            return await self._string(principal, value, schema, path)
        if isinstance(value, dict):
            return {k: await self._walk(principal, v, _property(schema, k), f"{path}.{k}")
                    for k, v in value.items()}
        if isinstance(value, list):
            item = None if schema is None else schema.get("items") if isinstance(schema.get("items"), dict) else {}
            return [await self._walk(principal, v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    async def _string(self, principal: Principal, value: str, schema: dict[str, Any] | None, path: str) -> Any:
        if schema is None:  # no schema to say where files go: only an explicit data URL is one
            return self._data_url(value, path) if is_data_url(value) else value
        if not takes_file(schema):
            return value
        if is_data_url(value):
            return self._data_url(value, path)
        if value[:7].lower() == "http://" or value[:8].lower() == "https://":
            return await self._uploaded(principal, value, path) or await self._fetch(value, path)
        raise InvalidInput(path, "expected a file: a data: URL, an http(s):// URL or a /v1/files URL")

    def _data_url(self, value: str, path: str) -> FileData:
        try:
            file = parse_data_url(value, self._fetcher.max_bytes)
        except ValueError as err:
            raise InvalidInput(path, str(err)) from None
        return file if file.name else _named(file, path)

    async def _uploaded(self, principal: Principal, value: str, path: str) -> FileData | None:
        """The file a ``/v1/files/{id}`` URL names, if this gateway holds one by that id (the id is
        random, so a URL of another server cannot name it by chance); None: a URL to fetch."""
        try:
            match = _FILE_PATH.match(URL(value).path) if self._files else None
        except ValueError:
            return None
        stored = self._files.lookup(match.group(1)) if match else None
        if stored is None:
            return None
        if stored.owner != principal.account:
            raise InvalidInput(path, f"names file {stored.id!r}, which is not yours")
        return FileData(await self._files.read(stored), stored.content_type, stored.name)

    async def _fetch(self, url: str, path: str) -> FileData:
        file = await self._fetcher.fetch(url, path)
        return file if file.name else _named(file, path)


def takes_file(schema: dict[str, Any]) -> bool:
    """Whether a schema place takes a file: a string of format "uri", or a choice that offers one."""
    if schema.get("format") == FILE_FORMAT:
        return True
    return any(takes_file(s) for key in ("anyOf", "oneOf") for s in schema.get(key, []) if isinstance(s, dict))


def _property(schema: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if schema is None:
        return None
    found = schema.get("properties", {}).get(key)
    if found is None and isinstance(schema.get("additionalProperties"), dict):
        found = schema["additionalProperties"]
    return found if isinstance(found, dict) else {}


def _named(file: FileData, path: str) -> FileData:
    """A name for a file that came without one: its field's, with the extension of its type."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.rsplit(".", 1)[-1]).strip("-") or "input"
    extension = mimetypes.guess_extension(file.content_type) or ""
    return FileData(file.data, file.content_type, stem + extension, file.width, file.height)


# Retention


class Retention:
    """The periodic sweep: predictions' data past ``retention_s`` (0: kept), and expired uploads."""

    def __init__(self, predictions: PredictionStore | None, files: FileStore, retention_s: float,
                 interval_s: float, clock: Callable[[], float] = time.time) -> None:
        self._predictions = predictions
        self._files = files
        self._retention_s = retention_s
        self._interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task | None = None

    async def sweep(self) -> tuple[int, int]:
        """One sweep; returns (predictions whose data was removed, files deleted)."""
        removed = 0
        if self._predictions is not None and self._retention_s > 0:
            removed = await self._predictions.remove_data(self._clock() - self._retention_s)
        expired = await self._files.delete_expired()
        if removed or expired:
            log.info("retention: removed the data of %d predictions; deleted %d expired files", removed, expired)
        return removed, expired

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="retention")

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention sweep failed; trying again in %g s", self._interval_s)
            await asyncio.sleep(self._interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
